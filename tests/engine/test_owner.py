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
        boot, pid, ticks, instance = mine.split("/")
        assert not engine_alive(f"another-boot/{pid}/{ticks}/{instance}")
        assert not engine_alive(f"{boot}/1/{ticks}/{instance}")  # pid 1 did not start then
        assert not engine_alive("garbage")
        assert not engine_alive(f"{boot}/x/{ticks}/{instance}")
    finally:
        engine_stopped(mine)
