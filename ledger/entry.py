"""The stored form of one event: header fields, payload bytes (None once pruned), hashes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from ledger.canonical import load_payload

#: the stream of the ledger's own events (checkpoints, prunes, the constitution in force)
LEDGER_STREAM = "ledger"


def us_to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


#: microsecond times `iso_us` writes from integers: up to 2**33 s (year 2242), where the float division
#: of `us_to_datetime` still lands on the exact microsecond, so both write the same text
_EXACT_US = range(0, 2**33 * 1_000_000)


@lru_cache(maxsize=16384)
def _second_text(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_us(us: int) -> str:
    """RFC 3339 UTC text of a microsecond timestamp as the ledger writes it: Z, and a fraction only when
    it is not zero. Per event on the fold's path, so the seconds' text is cached and no datetime is made
    (outside `_EXACT_US`, the text of `us_to_datetime`)."""
    if us not in _EXACT_US:
        return us_to_datetime(us).isoformat().replace("+00:00", "Z")
    seconds, micros = divmod(us, 1_000_000)
    return f"{_second_text(seconds)}.{micros:06d}Z" if micros else f"{_second_text(seconds)}Z"


def datetime_to_us(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError(f"timestamp {value.isoformat()} has no timezone")
    return int(value.timestamp() * 1_000_000)


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    stream: str
    type: str
    recorded_at_us: int
    payload: bytes | None
    salt: bytes | None
    payload_hash: bytes
    prev_hash: bytes
    hash: bytes

    @property
    def recorded_at(self) -> datetime:
        return us_to_datetime(self.recorded_at_us)

    @property
    def pruned(self) -> bool:
        return self.payload is None

    def data(self) -> dict[str, Any] | None:
        """The payload as a dict (None when pruned)."""
        return None if self.payload is None else load_payload(self.payload)

    def to_json(self) -> dict[str, Any]:
        """Export form (also the archive line form): bytes as hex, payload as its canonical text."""
        return {
            "seq": self.seq,
            "stream": self.stream,
            "type": self.type,
            "recorded_at": self.recorded_at.isoformat().replace("+00:00", "Z"),
            "recorded_at_us": self.recorded_at_us,
            "payload": None if self.payload is None else self.payload.decode("utf-8"),
            "salt": None if self.salt is None else self.salt.hex(),
            "payload_hash": self.payload_hash.hex(),
            "prev_hash": self.prev_hash.hex(),
            "hash": self.hash.hex(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Entry:
        payload = obj.get("payload")
        salt = obj.get("salt")
        return cls(
            seq=int(obj["seq"]),
            stream=str(obj["stream"]),
            type=str(obj["type"]),
            recorded_at_us=int(obj["recorded_at_us"]),
            payload=None if payload is None else str(payload).encode("utf-8"),
            salt=None if salt is None else bytes.fromhex(salt),
            payload_hash=bytes.fromhex(obj["payload_hash"]),
            prev_hash=bytes.fromhex(obj["prev_hash"]),
            hash=bytes.fromhex(obj["hash"]),
        )


@dataclass(frozen=True, slots=True)
class Head:
    size: int
    hash: bytes
    recorded_at_us: int = 0

    @property
    def hex(self) -> str:
        return self.hash.hex()
