"""Engine ids: which engine owns a delegation, and whether it still runs (another process, or another
engine instance of this one)."""

from __future__ import annotations

import subprocess
import sys

from engine.owner import engine_alive, engine_stopped, new_engine_id

CHILD = "import sys, time; from engine.owner import new_engine_id; print(new_engine_id(), flush=True); time.sleep(60)"


def test_an_engine_of_this_process_runs_until_it_stops() -> None:
    a, b = new_engine_id(), new_engine_id()
    assert a != b
    assert engine_alive(a)
    assert engine_alive(b)
    engine_stopped(a)
    assert not engine_alive(a)
    assert engine_alive(b)
    engine_stopped(b)


def test_an_engine_of_another_process_runs_while_that_process_does() -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        other = proc.stdout.readline().strip()
        assert engine_alive(other)
    finally:
        proc.kill()
        proc.wait()
    assert not engine_alive(other)


def test_ids_of_another_boot_or_malformed_are_not_alive() -> None:
    mine = new_engine_id()
    try:
        host, pid, ticks, instance = mine.split("/")
        boot = host.partition(":")[0]
        assert not engine_alive(f"another-boot/{pid}/{ticks}/{instance}")
        assert not engine_alive(f"{boot}/1/{ticks}/{instance}")  # pid 1 did not start then
        assert not engine_alive("garbage")
        assert not engine_alive(f"{boot}/x/{ticks}/{instance}")
    finally:
        engine_stopped(mine)


def test_an_engine_of_another_pid_namespace_is_never_taken_for_gone() -> None:
    """Another container sharing the ledger file: its pids mean nothing here, so its engine counts as
    alive (its sessions are left to it), even when no process here has its pid; an id of this
    namespace, or one written before namespaces were recorded, is judged by its pid."""
    mine = new_engine_id()
    try:
        host, _pid, ticks, instance = mine.split("/")
        boot, _, ns = host.partition(":")
        assert ns.isdigit(), "this Linux records the engine's pid namespace"
        assert engine_alive(f"{boot}:{int(ns) + 1}/999999/{ticks}/{instance}")
        assert not engine_alive(f"{boot}:{ns}/999999/{ticks}/{instance}")
        assert not engine_alive(f"{boot}/999999/{ticks}/{instance}")
        assert not engine_alive(f"another-boot:{int(ns) + 1}/999999/{ticks}/{instance}")  # rebooted since
    finally:
        engine_stopped(mine)
