"""The stored form of one event: header fields, payload bytes (None once pruned), hashes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ledger.canonical import load_payload

#: the stream of the ledger's own events (checkpoints, prunes, the constitution in force)
LEDGER_STREAM = "ledger"


def us_to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


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
