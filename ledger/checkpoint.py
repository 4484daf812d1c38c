"""Signed checkpoints in the signed-note text format of transparency logs.

Body (C2SP tlog-checkpoint): origin line, tree size, base64 Merkle root, then one extension line
`head <hex>` with the entry hash at that size. Signature lines follow golang.org/x/mod/sumdb/note:
`— <key name> <base64(key hash(4) || Ed25519 signature over the body)>`, where the key hash is the
first 4 bytes of SHA-256(name || "\\n" || 0x01 || public key). Keys are stored in the same note
formats: `PRIVATE+KEY+<name>+<hash>+<base64(0x01||seed)>` and `<name>+<hash>+<base64(0x01||pub)>`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.errors import SigningKeyError

_ALG_ED25519 = b"\x01"
_DASH = "\u2014"


def _key_hash(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ALG_ED25519 + public).digest()[:4]


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    head: bytes
    note: str

    @property
    def body(self) -> str:
        return checkpoint_body(self.origin, self.size, self.root, self.head)


def checkpoint_body(origin: str, size: int, root: bytes, head: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\nhead {head.hex()}\n"


class Verifier:
    """A public key able to check checkpoint signatures."""

    def __init__(self, name: str, public: bytes) -> None:
        self.name = name
        self.public = public
        self.key_hash = _key_hash(name, public)
        self._key = Ed25519PublicKey.from_public_bytes(public)

    def __reduce__(self) -> tuple[type[Verifier], tuple[str, bytes]]:
        """Pickled as its name and public bytes (the key object itself does not pickle)."""
        return Verifier, (self.name, self.public)

    @classmethod
    def parse(cls, text: str) -> Verifier:
        try:
            name, hash_hex, b64 = text.strip().split("+", 2)
            raw = base64.b64decode(b64, validate=True)
        except ValueError as exc:
            raise SigningKeyError(
                f"verifier key is not '<name>+<hash>+<base64 key>' (got {text.strip()[:60]!r})"
            ) from exc
        if raw[:1] != _ALG_ED25519 or len(raw) != 33:
            raise SigningKeyError("verifier key is not an Ed25519 key (expected 0x01 followed by 32 bytes)")
        verifier = cls(name, raw[1:])
        if verifier.key_hash.hex() != hash_hex:
            raise SigningKeyError(
                f"verifier key hash mismatch (expected {verifier.key_hash.hex()}, got {hash_hex})"
            )
        return verifier

    def text(self) -> str:
        return f"{self.name}+{self.key_hash.hex()}+{base64.b64encode(_ALG_ED25519 + self.public).decode()}"

    def check(self, note: str) -> tuple[bool, str]:
        """(True, body) when the note carries a valid signature by this key, else (False, reason)."""
        body, sep, sigs = note.partition("\n\n")
        if not sep:
            return False, "the note has no signature block (expected a blank line then signature lines)"
        body += "\n"
        for line in sigs.splitlines():
            parts = line.split(" ")
            if len(parts) != 3 or parts[0] != _DASH or parts[1] != self.name:
                continue
            try:
                raw = base64.b64decode(parts[2], validate=True)
            except ValueError:
                return False, "the signature line is not valid base64"
            if raw[:4] != self.key_hash:
                continue
            try:
                self._key.verify(raw[4:], body.encode())
            except InvalidSignature:
                return False, f"the signature by {self.name!r} does not match the checkpoint text"
            return True, body
        return False, f"no signature by key {self.name!r} ({self.key_hash.hex()}) on the checkpoint"


class Signer:
    """An Ed25519 private key that signs checkpoints."""

    def __init__(self, name: str, private: Ed25519PrivateKey) -> None:
        self.name = name
        self._key = private
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.verifier = Verifier(name, public)

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name, Ed25519PrivateKey.generate())

    def sign(self, origin: str, size: int, root: bytes, head: bytes) -> Checkpoint:
        body = checkpoint_body(origin, size, root, head)
        sig = self._key.sign(body.encode())
        line = f"{_DASH} {self.name} {base64.b64encode(self.verifier.key_hash + sig).decode()}\n"
        return Checkpoint(origin, size, root, head, body + "\n" + line)

    def private_text(self) -> str:
        seed = self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_hash.hex()}+{base64.b64encode(_ALG_ED25519 + seed).decode()}"

    @classmethod
    def parse(cls, text: str) -> Signer:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise SigningKeyError("signing key is not 'PRIVATE+KEY+<name>+<hash>+<base64 key>'")
        try:
            raw = base64.b64decode(parts[4], validate=True)
        except ValueError as exc:
            raise SigningKeyError("signing key is not valid base64") from exc
        if raw[:1] != _ALG_ED25519 or len(raw) != 33:
            raise SigningKeyError(
                "signing key is not an Ed25519 key (expected 0x01 followed by a 32-byte seed)"
            )
        signer = cls(parts[2], Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.verifier.key_hash.hex() != parts[3]:
            raise SigningKeyError("signing key hash does not match its key")
        return signer


def parse_checkpoint_body(body: str) -> tuple[str, int, bytes, bytes | None]:
    """(origin, size, root, head) from a checkpoint body; ValueError when malformed."""
    lines = body.rstrip("\n").split("\n")
    if len(lines) < 3:
        raise ValueError("a checkpoint body needs origin, size and root lines")
    origin, size_text, root_b64 = lines[:3]
    if not size_text.isdigit():
        raise ValueError(f"checkpoint size is not a decimal number (got {size_text!r})")
    root = base64.b64decode(root_b64, validate=True)
    head = None
    for ext in lines[3:]:
        if ext.startswith("head "):
            head = bytes.fromhex(ext[5:])
    return origin, int(size_text), root, head


# -- key files -------------------------------------------------------------------------------


def write_key_pair(signer: Signer, private_path: Path) -> Path:
    """Write the private key (mode 0600, never overwritten) and the public key beside it (.pub)."""
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise SigningKeyError(f"refusing to overwrite the existing signing key {private_path}") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(signer.private_text() + "\n")
    public_path = private_path.with_suffix(".pub")
    public_path.write_text(signer.verifier.text() + "\n")
    return public_path


def load_signer(path: Path) -> Signer:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise SigningKeyError(f"signing key not found at {path} (run `ledger init`, or pass --key)") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(
            f"signing key {path} is readable by others (mode {oct(mode & 0o777)}, expected 0o600): run chmod 600"
        )
    return Signer.parse(path.read_text())


def load_verifier(path: Path) -> Verifier:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise SigningKeyError(f"public key not found at {path} (pass --key, or set LEDGER_KEYS_DIR)") from exc
    return Verifier.parse(text)
