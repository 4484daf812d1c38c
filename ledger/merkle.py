"""RFC 6962 Merkle tree over entry hashes, kept as its compact range (one root per perfect subtree).

leaf = SHA-256(0x00 || entry_hash), node = SHA-256(0x01 || left || right). Appending costs
amortised two hashes; the root of any size is a fold over at most log2(n) peaks.
"""

from __future__ import annotations

import hashlib

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class CompactRange:
    """The right edge of a growing Merkle tree: `peaks[level]` is set where bit `level` of size is 1."""

    __slots__ = ("peaks", "size")

    def __init__(self, size: int = 0, peaks: dict[int, bytes] | None = None) -> None:
        self.size = size
        self.peaks: dict[int, bytes] = dict(peaks or {})
        expected = {lvl for lvl in range(size.bit_length()) if size >> lvl & 1}
        if set(self.peaks) != expected:
            raise ValueError(
                f"compact range of size {size} needs peaks at levels {sorted(expected)}, got {sorted(self.peaks)}"
            )

    def append(self, entry_hash: bytes) -> None:
        node = hashlib.sha256(b"\x00" + entry_hash).digest()
        level = 0
        size = self.size
        peaks = self.peaks
        while size >> level & 1:
            node = hashlib.sha256(b"\x01" + peaks.pop(level) + node).digest()
            level += 1
        peaks[level] = node
        self.size = size + 1

    def append_block(self, entry_hashes: list[bytes]) -> None:
        """Append 2**k entry hashes at once, the range's size being a multiple of 2**k: their perfect
        subtree is hashed level by level (the same hashes as k appends, with less work per leaf)."""
        n = len(entry_hashes)
        k = n.bit_length() - 1
        if n == 0 or n != 1 << k or self.size & (n - 1):
            raise ValueError(
                f"a block of {n} leaves cannot be appended to a compact range of size {self.size}"
            )
        sha = hashlib.sha256
        level = [sha(b"\x00" + h).digest() for h in entry_hashes]
        while len(level) > 1:
            pairs = iter(level)
            level = [sha(b"\x01" + left + right).digest() for left, right in zip(pairs, pairs, strict=True)]
        node = level[0]
        peaks = self.peaks
        size = self.size
        while size >> k & 1:
            node = sha(b"\x01" + peaks.pop(k) + node).digest()
            k += 1
        peaks[k] = node
        self.size = size + n

    def root(self) -> bytes:
        if not self.size:
            return EMPTY_ROOT
        acc: bytes | None = None
        for level in sorted(self.peaks):  # smallest subtree first (rightmost)
            acc = self.peaks[level] if acc is None else node_hash(self.peaks[level], acc)
        assert acc is not None
        return acc

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self.peaks)


def root_of(entry_hashes: list[bytes]) -> bytes:
    """Reference RFC 6962 MTH, recursive; used by tests to check CompactRange."""
    n = len(entry_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hash(entry_hashes[0])
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(root_of(entry_hashes[:k]), root_of(entry_hashes[k:]))
