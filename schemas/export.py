"""Export JSON Schema files to schemas/json/ (`python -m schemas.export`; `--check` exits 1 when stale)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from schemas.events import EVENT_MODELS, Event, Verdict
from schemas.requests import SpawnRequest
from schemas.responsibility import CapOrigin, DelegationContext, OriginalTask
from schemas.state import SessionState

OUT = Path(__file__).parent / "json"


def documents() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema document, for every exported model."""
    docs: dict[str, dict[str, Any]] = {
        "spawn_request.json": SpawnRequest.model_json_schema(),
        "original_task.json": OriginalTask.model_json_schema(),
        "cap_origin.json": CapOrigin.model_json_schema(),
        "delegation_context.json": DelegationContext.model_json_schema(),
        "verdict.json": Verdict.model_json_schema(),
        "session_state.json": SessionState.model_json_schema(),
        "event.json": TypeAdapter(Event).json_schema(),
    }
    for type_, model in sorted(EVENT_MODELS.items()):
        docs[f"events/{type_}.json"] = model.model_json_schema()
    for name, doc in docs.items():
        doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        doc["$id"] = f"https://delegation-ledger.invalid/schemas/{name}"
    return docs


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale(out: Path = OUT) -> list[str]:
    """Names of files that are missing, different, or no longer generated."""
    docs = documents()
    problems = [n for n, d in docs.items() if not (out / n).exists() or (out / n).read_text() != render(d)]
    existing = {str(p.relative_to(out)) for p in out.rglob("*.json")}
    problems += sorted(existing - set(docs))
    return problems


def write(out: Path = OUT) -> None:
    for name, doc in documents().items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(doc))
    for extra in {str(p.relative_to(out)) for p in out.rglob("*.json")} - set(documents()):
        (out / extra).unlink()


if __name__ == "__main__":
    if "--check" in sys.argv:
        bad = stale()
        if bad:
            print(
                "stale JSON Schema files (run `python -m schemas.export`):", ", ".join(bad), file=sys.stderr
            )
            sys.exit(1)
        print("JSON Schema files are up to date")
    else:
        write()
        print(f"wrote {len(documents())} schema files to {OUT}")
