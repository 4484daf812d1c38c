"""Reading the ledger: events, sessions, show, export; and recording operator notes."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from cli.options import STATE, parse_when, want_json, writable, write_failed
from cli.render import emit_json, fail, out, table
from ledger import Entry, Ledger, LedgerError
from ledger.entry import datetime_to_us
from schemas.events import EVENT_TYPES, TERMINAL_STATUSES, OperatorNote
from schemas.state import SessionState

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def register(app: typer.Typer) -> None:
    app.command("events")(events)
    app.command("sessions")(sessions)
    app.command("show")(show)
    app.command("export")(export)
    app.command("note")(note)


def _entry_json(e: Entry, with_payload: bool = True) -> dict[str, Any]:
    d = e.to_json()
    d["payload"] = e.data() if with_payload else None
    d.pop("salt", None)
    d["pruned"] = e.pruned
    return d


def _summary(e: Entry) -> str:
    data = e.data()
    if data is None:
        return "(payload pruned)"
    t = e.type
    if t == "gate.decided":
        v = data["verdict"]
        rules = ", ".join(f["rule"] for f in v.get("violations", []))
        return f"{v['decision']}" + (f" ({rules})" if rules else "")
    for key in ("text", "summary", "reason", "error", "tool", "permission", "role"):
        if data.get(key):
            return f"{key}={str(data[key])[:80]}"
    return ""


#: the shortest prefix that may stand for a stream (as git's shortest abbreviation): a note is forever,
#: and "3" should not name whichever single session starts with it
MIN_PREFIX = 4


def _stream(led: Ledger, given: str, flag: str, *, new_hint: str = "") -> str:
    """The stream `given` names: itself when it exists, else the one stream it is a prefix of (as git
    takes a short hash; MIN_PREFIX characters at least); a clear error when it names none or several."""
    if not given:
        fail(f"{flag}: expected a stream or session id, or a prefix of one (got '')")
    found = led.streams_from(given, limit=6)
    if given in found:
        return given
    if found and len(given) < MIN_PREFIX:
        fail(
            f"{flag}: no stream or session is named {given!r}; a prefix must have {MIN_PREFIX} characters "
            f"or more (streams starting with it: {', '.join(found[:5])}{', ...' if len(found) > 5 else ''})"
        )
    if len(found) == 1:
        return found[0]
    if not found:
        fail(f"{flag}: no stream or session {given!r} in {STATE.db_path}{new_hint}")
    shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
    count = "more than 5" if len(found) > 5 else str(len(found))
    fail(f"{flag}: {given!r} is ambiguous: {count} streams start with it ({shown})")
    raise AssertionError  # fail() exits


def _short(names: Iterable[str]) -> dict[str, str]:
    """Each name shortened to its shortest prefix of at least 8 characters that no other of `names`
    shares (ids a human can read and give back: `ledger show` and `--stream` take prefixes)."""
    unique = sorted(set(names))
    short = {}
    for i, n in enumerate(unique):
        width = 8
        for other in (unique[i - 1] if i else "", unique[i + 1] if i + 1 < len(unique) else ""):
            common = next(
                (k for k, (a, b) in enumerate(zip(n, other, strict=False)) if a != b), min(len(n), len(other))
            )
            width = max(width, common + 1)
        short[n] = n if width >= len(n) - 3 else n[:width]
    return short


def _filters(
    led: Ledger,
    stream: str | None,
    task: str | None,
    types: list[str] | None,
    since: str | None,
    until: str | None,
) -> dict[str, Any]:
    """The entry filters the options name; each narrows the others (a stream and a task: the stream's
    entries, if it belongs to the task)."""
    for t in types or []:
        if t not in EVENT_TYPES:
            fail(f"--type: unknown event type {t!r}; known: {', '.join(EVENT_TYPES)}")
    f: dict[str, Any] = {"types": types or None}
    if since:
        f["since_us"] = datetime_to_us(parse_when(since, "--since"))
    if until:
        f["until_us"] = datetime_to_us(parse_when(until, "--until"))
    streams = {_stream(led, stream, "--stream")} if stream else None
    if task:
        of_task = {s.session_id for s in led.sessions(task_id=task)}
        # refused requests of the task have no session: find their streams through the decisions
        for e in led.entries(types=["gate.decided"]):
            data = e.data()
            if data and data.get("task_id") == task:
                of_task.add(e.stream)
        streams = of_task if streams is None else streams & of_task
    if streams is not None:
        f["streams"] = sorted(streams) or ["\x00no-such-stream"]
    return f


StreamOpt = Annotated[str | None, typer.Option("--stream", "--session", help="Only this stream/session.")]
TaskOpt = Annotated[str | None, typer.Option("--task", help="Only events of delegations for this task id.")]
TypeOpt = Annotated[list[str] | None, typer.Option("--type", help="Only this event type (repeatable).")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="Recorded at or after (date or RFC 3339).")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Recorded before (date or RFC 3339).")]


def events(
    stream: StreamOpt = None,
    task: TaskOpt = None,
    type_: TypeOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many (newest last).")] = 100,
    json_out: JsonOpt = False,
) -> None:
    """List events, filtered by stream/session, task id, type and time range."""
    with STATE.open() as led:
        filters = _filters(led, stream, task, type_, since, until)
        rows = list(led.entries(**filters, descending=True, limit=limit))[::-1]
    if want_json(json_out):
        emit_json([_entry_json(e) for e in rows])
        return
    short = _short(e.stream for e in rows)
    table(
        f"{len(rows)} event(s)",
        ["seq", "recorded at", "stream", "type", "summary"],
        [
            (e.seq, e.recorded_at.strftime("%Y-%m-%d %H:%M:%S"), short[e.stream], e.type, _summary(e))
            for e in rows
        ],
    )


def sessions(
    active: Annotated[bool, typer.Option("--active", help="Only sessions not yet terminal.")] = False,
    task: TaskOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List delegation sessions with their state, depth, tokens and cost.

    A live session whose engine is gone (killed, crashed) is marked "(engine gone)": an engine that
    runs on this ledger, or the next one to start, settles it."""
    with STATE.open() as led:
        found = led.sessions(task_id=task)
    if active:
        found = [s for s in found if s.status not in TERMINAL_STATUSES]
    from engine.owner import engine_alive

    alive = {e: engine_alive(e) for e in {s.engine for s in found if s.engine}}

    def orphaned(s: SessionState) -> bool:  # live, but its engine is gone: the next engine settles it
        return s.status not in TERMINAL_STATUSES and s.engine is not None and not alive[s.engine]

    if want_json(json_out):
        emit_json([{**s.model_dump(), "engine_alive": alive.get(s.engine or "")} for s in found])
        return
    ids = _short([s.session_id for s in found] + [s.parent_session_id for s in found if s.parent_session_id])
    tasks = _short(s.task_id for s in found)
    table(
        f"{len(found)} session(s)",
        ["session", "task", "role", "status", "depth", "parent", "tokens", "cost $"],
        [
            (
                ids[s.session_id],
                tasks[s.task_id],
                s.role,
                s.status + (" (engine gone)" if orphaned(s) else ""),
                s.depth,
                ids[s.parent_session_id] if s.parent_session_id else "",
                s.tokens_used,
                f"{s.cost_usd:.4f}",
            )
            for s in found
        ],
    )


def show(
    session_id: Annotated[str, typer.Argument(help="Session id, or a prefix of it that no other shares.")],
    json_out: JsonOpt = False,
) -> None:
    """Show one session: its state, its children and its events."""
    with STATE.open() as led:
        session_id = _stream(led, session_id, "session")
        state = led.session(session_id)
        evs = list(led.entries(stream=session_id))
    if want_json(json_out):
        emit_json({"session": state.model_dump() if state else None, "events": [_entry_json(e) for e in evs]})
        return
    if state is not None:
        table(
            f"session {session_id}",
            ["field", "value"],
            [(k, v) for k, v in state.model_dump().items() if v not in (None, [], "")],
        )
    else:
        out.print(f"stream {session_id} has no session (a refused request leaves none)")
    table("events", ["seq", "type", "summary"], [(e.seq, e.type, _summary(e)) for e in evs])


def export(
    output: Annotated[Path | None, typer.Option("--out", help="File to write (default: stdout).")] = None,
    stream: StreamOpt = None,
    type_: TypeOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
) -> None:
    """Export entries as JSON Lines (headers, hashes, canonical payloads): re-verifiable anywhere."""
    with STATE.open() as led:
        filters = _filters(led, stream, None, type_, since, until)
    if output is not None:
        writable(output, "--out")
    try:
        sink = open(output, "w", encoding="utf-8") if output else contextlib.nullcontext(sys.stdout)  # noqa: SIM115
        with sink as stream, STATE.open() as led:
            n = 0
            for e in led.entries(**{k: v for k, v in filters.items() if v is not None}):
                stream.write(json.dumps(e.to_json(), sort_keys=True, ensure_ascii=False) + "\n")
                n += 1
    except OSError as exc:
        if output is None:
            raise
        write_failed(output, "--out", exc)
    if output:
        out.print(f"exported {n} entries to {output}")


def note(
    stream: Annotated[
        str,
        typer.Option(
            "--stream", help="Stream/session the note is about (or a prefix of it no other shares)."
        ),
    ],
    text: Annotated[str, typer.Option("--text", help="The note.")],
    by: Annotated[str, typer.Option("--by", help="Who writes it.")],
    kind: Annotated[str, typer.Option("--kind", help="note | oversight | incident")] = "note",
    new_stream: Annotated[
        bool, typer.Option("--new-stream", help="Start the stream if no entry has it yet (else refused).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Record a human oversight or operator note on the ledger."""
    if kind not in ("note", "oversight", "incident"):
        fail(f"--kind: expected note, oversight or incident (got {kind!r})")
    try:
        note_event = OperatorNote(text=text, by=by, kind=kind)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        fail(f"--{first['loc'][0]}: {msg}" + ("" if "(got" in msg else f" (got {first.get('input')!r:.80})"))
    with STATE.open(create=new_stream) as led:
        # a note is forever: a mistyped session id must not start a stream of its own
        if not (new_stream and not led.streams_from(stream, limit=1)):
            stream = _stream(led, stream, "--stream", new_hint=" (to start a new stream, add --new-stream)")
        try:
            entry = led.append(stream, note_event)
        except LedgerError as exc:
            fail(exc.diagnostics())
    if want_json(json_out):
        emit_json(_entry_json(entry))
    else:
        out.print(f"recorded note on {entry.stream} as seq {entry.seq} ({entry.hash.hex()[:16]}...)")
