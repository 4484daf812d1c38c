"""What an ended agent leaves on disk: its opencode.log, in its session's folder; its credentials and
the rest of its OpenCode state go, unless the engine keeps agent state."""

from __future__ import annotations

from pathlib import Path

from engine.opencode_backend import OpenCodeBackend


def server_folder(path: Path, *, creds: bool) -> Path:
    (path / "tmp" / "opencode").mkdir(parents=True)
    (path / "tmp" / ".runtime.so").write_bytes(b"\0" * 1024)
    (path / "xdg" / "data").mkdir(parents=True)
    (path / "opencode.db").write_bytes(b"db")
    (path / "opencode.log").write_text("the server's log\n")
    if creds:
        (path / "server.json").write_text('{"password": "pw"}')
    return path


def names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_a_cold_started_agent_leaves_its_log_only(tmp_path: Path) -> None:
    backend = OpenCodeBackend(tmp_path)
    session = server_folder(tmp_path / "s1", creds=True)
    backend._tidy(session, session)
    assert names(session) == ["opencode.log"]
    assert (session / "opencode.log").read_text() == "the server's log\n"


def test_a_pooled_agent_leaves_its_log_in_its_session_folder_and_no_pool_folder(tmp_path: Path) -> None:
    backend = OpenCodeBackend(tmp_path)
    session = tmp_path / "s2"
    session.mkdir()
    (session / "server.json").write_text('{"password": "pw"}')
    pooled = server_folder(tmp_path / "_pool" / "run-0", creds=False)
    (pooled / "work").mkdir()
    backend._tidy(session, pooled)
    assert names(session) == ["opencode.log"]
    assert (session / "opencode.log").read_text() == "the server's log\n"
    assert not pooled.exists()


def test_kept_state_loses_only_the_credentials(tmp_path: Path) -> None:
    backend = OpenCodeBackend(tmp_path, keep_state=True)
    session = server_folder(tmp_path / "s3", creds=True)
    backend._tidy(session, session)
    assert names(session) == ["opencode.db", "opencode.log", "tmp", "xdg"]


def test_tidying_twice_or_a_folder_already_gone_is_harmless(tmp_path: Path) -> None:
    backend = OpenCodeBackend(tmp_path)
    session = server_folder(tmp_path / "s4", creds=True)
    backend._tidy(session, session)
    backend._tidy(session, session)
    backend._tidy(tmp_path / "never-made", tmp_path / "_pool" / "gone")
    assert names(session) == ["opencode.log"]
