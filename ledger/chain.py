"""The chain rule: pure functions from entry fields to hashes. See docs/ledger-format.md.

    payload_hash = SHA-256("delegation-ledger/v1/payload\\0" || salt(16) || canonical payload)
    header       = u64 seq || i64 recorded_at_us || u16 len || stream || u8 len || type || payload_hash
    hash         = SHA-256("delegation-ledger/v1/entry\\0" || prev_hash || header)

All integers big-endian; strings UTF-8. The salt makes the retained `payload_hash` of a pruned,
low-entropy payload useless for confirming guesses; it leaves with the payload.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Final

PAYLOAD_DOMAIN: Final = b"delegation-ledger/v1/payload\x00"
ENTRY_DOMAIN: Final = b"delegation-ledger/v1/entry\x00"
GENESIS_HASH: Final = bytes(32)
SALT_BYTES: Final = 16

_sha256 = hashlib.sha256
_pack_seq_time = struct.Struct(">Qq").pack


def new_salt() -> bytes:
    return os.urandom(SALT_BYTES)


def payload_hash(salt: bytes, payload: bytes) -> bytes:
    return _sha256(PAYLOAD_DOMAIN + salt + payload).digest()


def header_bytes(seq: int, stream: str, type_: str, recorded_at_us: int, p_hash: bytes) -> bytes:
    s = stream.encode("utf-8")
    t = type_.encode("utf-8")
    return b"".join(
        (_pack_seq_time(seq, recorded_at_us), len(s).to_bytes(2, "big"), s, bytes((len(t),)), t, p_hash)
    )


def entry_hash(prev_hash: bytes, header: bytes) -> bytes:
    return _sha256(ENTRY_DOMAIN + prev_hash + header).digest()


def chain_hash(
    prev_hash: bytes, seq: int, stream: str, type_: str, recorded_at_us: int, p_hash: bytes
) -> bytes:
    """The hash of one entry from its fields and its predecessor's hash."""
    return entry_hash(prev_hash, header_bytes(seq, stream, type_, recorded_at_us, p_hash))


MAX_STREAM_BYTES: Final = 65535
MAX_TYPE_BYTES: Final = 255
