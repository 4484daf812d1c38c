"""The audit's work on the second core: a forked worker process, kept for the process's next audits.

A worker (`Worker`) is a plain `os.fork()` of this process, made at the first audit that wants one
and kept until this process exits: forking again for every audit would cost more than the fork.
While a forked child runs, every page of memory it still shares with this process is copied when
this process first writes it (copy-on-write: a page fault and a 4 KiB copy). An audit of 10,000
events writes some 10,000 such pages, freed memory of earlier work included; with a child forked
per audit that cost 35-45 ms of the audit's 250 every time (counted with `ru_minflt`). A worker
kept alive pays it once: by the next audit this process's pages are its own.

It runs one task at a time (`begin`): a task is pickled into a shared anonymous mapping (the
worker's inbox; memory is made as it is used), its place told through a pipe, so the parent never
blocks on a full pipe; a task may be handed one later input (`send`), and be told to hurry
(`hurry`: answer what it has done). Its answer comes back pickled through a second pipe, with its
length first. It opens its own connections and never uses the parent's; it ignores SIGINT (its
parent decides its fate); it leaves with `os._exit` (no atexit handler, no finaliser of the
parent's state) when its parent is gone (end of file on its pipe, or a new parent pid), and its
parent closes and reaps it at exit (`atexit`).

Forking is only done where it is safe and useful: a POSIX system with two cores or more, called
from the main thread, and no other thread in the process but idle ledger writers (a fork copies
locks held by other threads, never their owners; an idle `ledger-writer` waits on its queue and
holds none the worker needs), as in the CLI and the benchmark. Otherwise (the MCP server's
threads, `LEDGER_AUDIT_FORK=0`, no idle core), and whenever the worker fails in any way or does
not answer in time (it is then killed, and a later audit forks a new one), the audit does the work
in this process instead.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import mmap
import os
import pickle
import select
import signal
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

#: what a task's handler is called with: (task, receive, hurried); its return value is the answer
Handler = Callable[[Any, Callable[[], Any], Callable[[], bool]], Any]


def can_fork() -> bool:
    """Whether a worker may be forked, or used, here now (see the module's docstring).
    `LEDGER_AUDIT_FORK=0`: never; `=1`: whenever it is safe; unset: when it is safe and a core is idle
    (`busy_elsewhere()` below the number of cores minus a half: on a busy machine the worker only
    competes for a core)."""
    mode = os.environ.get("LEDGER_AUDIT_FORK", "")
    if mode == "0" or not hasattr(os, "fork"):
        return False
    main = threading.current_thread()
    if main is not threading.main_thread() or not all(
        t is main or t.name in _IDLE_THREADS for t in threading.enumerate()
    ):
        return False
    cores = os.cpu_count() or 1
    return mode == "1" or (cores > 1 and busy_elsewhere() < cores - 0.5)


def busy_elsewhere() -> float:
    """How many tasks besides this one want a core now: the runnable count of /proc/loadavg, less
    this process (Linux); elsewhere the 1-minute load average. Now, not the last minute: the
    audit's own earlier work (or a test run just finished) must not keep its helper away."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[3].split(b"/")[0]) - 1
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]


#: threads that may be running when the worker is forked: the ledger's writer, idle while auditing
_IDLE_THREADS = frozenset({"ledger-writer"})
#: frames on the worker's pipe: a task, a task's input (both in the inbox), hurry up
_TASK, _INPUT, _HURRY = b"T", b"I", b"H"
_FRAME = struct.Struct(">cqq")  # kind, offset in the inbox, size (-1: none, or too large)
_LENGTH = struct.Struct(">q")
#: how often an idle worker looks whether its parent is still there (seconds)
_PARENT_CHECK_S = 1.0


class Worker:
    """A forked process that runs this process's tasks one at a time (see the module's docstring)."""

    def __init__(self, pid: int, commands: int, answers: int, box: mmap.mmap, name: str = "") -> None:
        self.pid, self.commands, self.answers, self.box = pid, commands, answers, box
        self.name = name
        self.alive = True
        self._used = 0  # bytes of the inbox the current task's messages take
        self._sent = False
        self._deadline = 0.0

    @classmethod
    def fork(cls, handle: Handler, *, inbox: int, name: str = "") -> Worker | None:
        """A worker running `handle(task, receive, hurried)` for each task (None when none can be forked
        here). `inbox`: the room for a task and its input, pickled (memory made as used)."""
        if not can_fork():
            return None
        try:  # shared with the worker, pages made on use (refused where memory is not overcommitted)
            box = mmap.mmap(-1, inbox)
        except (OSError, ValueError, OverflowError):
            return None
        cmd_read, cmd_write = os.pipe()
        ans_read, ans_write = os.pipe()
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            for fd in (cmd_read, cmd_write, ans_read, ans_write):
                os.close(fd)
            box.close()
            return None
        if pid == 0:  # the worker: serve tasks until the parent is gone, then leave without cleanup
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                gc.disable()  # as in the audit that forked it; collected between tasks
                os.close(cmd_write)
                os.close(ans_read)
                _serve(handle, cmd_read, ans_write, box, parent)
                code = 0
            finally:
                os._exit(code)
        os.close(cmd_read)
        os.close(ans_write)
        return cls(pid, cmd_write, ans_read, box, name)

    def begin(self, task: Any, *, allowance_s: float) -> bool:
        """Start `task` in the worker (False when it cannot take it: the caller works alone).
        `allowance_s`: its time to answer, from now, before it is killed."""
        self._used, self._sent = 0, False
        self._deadline = time.monotonic() + allowance_s
        return self._put(_TASK, task)

    def send(self, value: Any) -> bool:
        """Hand the current task its input (once; never blocks): False when it does not fit the inbox
        or the worker is gone (the task then goes on without it: None)."""
        if self._sent:
            return False
        self._sent = True
        return self._put(_INPUT, value)

    def hurry(self) -> None:
        """Tell the worker (once its task has its input) that the answer is wanted now."""
        if self._sent:
            self._frame(_HURRY, 0, 0)

    def result(self) -> Any:
        """The current task's answer (None when the worker failed: it is then retired, killed and
        reaped, and the caller does the work itself)."""
        if not self.alive:
            return None
        if not self._sent:
            self.send(None)  # nothing sent by now: the task goes on without it
        head = self._read(_LENGTH.size)
        data = None if head is None else self._read(_LENGTH.unpack(head)[0])
        if data is None:
            self.retire()
            return None
        try:
            return pickle.loads(data)  # noqa: S301 - our own worker's answer
        except Exception:  # a worker that died mid-write
            self.retire()
            return None

    def retire(self) -> None:
        """Kill the worker and reap it (a task given up, a failure, this process's exit)."""
        if not self.alive:
            return
        self.alive = False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        for fd in (self.commands, self.answers):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.box.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    def _put(self, kind: bytes, value: Any) -> bool:
        if not self.alive:
            return False
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        offset = self._used
        fits = offset + len(data) <= len(self.box)
        if fits:
            self.box[offset : offset + len(data)] = data
            self._used = offset + len(data)
        return self._frame(kind, offset, len(data) if fits else -1) and fits

    def _frame(self, kind: bytes, offset: int, size: int) -> bool:
        try:  # 17 bytes into a pipe the worker drains: never blocks
            os.write(self.commands, _FRAME.pack(kind, offset, size))
            return True
        except OSError:  # the worker has died
            self.retire()
            return False

    def _read(self, size: int) -> bytes | None:
        """`size` bytes of the answer, or None when the worker is gone or past its allowance (killed)."""
        chunks: list[bytes] = []
        left = size
        while left > 0:
            wait = self._deadline - time.monotonic()
            if wait <= 0 or not select.select([self.answers], [], [], wait)[0]:
                return None
            try:
                chunk = os.read(self.answers, min(left, 1 << 20))
            except OSError:
                return None
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


_lock = threading.Lock()
_workers: dict[str, Worker] = {}
_owner = os.getpid()  # the process `_workers` belongs to (a forked child starts afresh)


def lease(name: str, handle: Handler, *, inbox: int) -> Worker | None:
    """This process's worker `name`, forked on first use (see `Worker.fork`), for one task; None when
    none can serve now (refused here, or busy with another thread's task). Give it back with
    `give_back` once its answer is in (or `retire` it)."""
    global _owner
    if not can_fork() or not _lock.acquire(blocking=False):
        return None
    try:
        if _owner != os.getpid():  # forked from the process that owns these: not ours to use
            _workers.clear()
            _owner = os.getpid()
        worker = _workers.get(name)
        if worker is None or not worker.alive or len(worker.box) < inbox:
            if worker is not None:
                worker.retire()
            worker = Worker.fork(handle, inbox=inbox, name=name)
            if worker is None:
                _workers.pop(name, None)
                _lock.release()
                return None
            _workers[name] = worker
        return worker
    except BaseException:
        _lock.release()
        raise


def give_back(worker: Worker) -> None:
    """The task is over (answered, or the worker retired): the worker serves the next one."""
    if not worker.alive and _workers.get(worker.name) is worker:
        del _workers[worker.name]
    _lock.release()


def cpu_seconds() -> float:
    """CPU time (user + system) this process's live workers have used so far (Linux; 0 elsewhere):
    a worker is reaped only when it is retired, so `os.times()` does not count it before."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for worker in list(_workers.values()):
        try:
            with open(f"/proc/{worker.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            continue
    return total


@atexit.register
def _retire_all() -> None:
    if _owner == os.getpid():
        for worker in _workers.values():
            worker.retire()
        _workers.clear()


def _serve(handle: Handler, commands: int, answers: int, box: mmap.mmap, parent: int) -> None:
    """In the worker: run each task handed over, answer it, until the parent is gone."""
    while True:
        frame = _next_frame(commands, parent)
        if frame is None:
            return
        kind, offset, size = frame
        if kind != _TASK:  # a hurry (or input) of a task already answered
            continue
        task = _load(box, offset, size)
        answer = handle(task, lambda: _receive(commands, box, parent), lambda: _poked(commands))
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(_LENGTH.pack(len(data)) + data)
        while view:
            view = view[os.write(answers, view) :]
        del task, answer, data, view  # freed off the parent's path
        # the collector is paused (as in the audit that forked it): what a task left in cycles is in
        # the youngest generation, collected here; the older ones (the copy of the parent) are not
        # walked again after every task
        gc.collect(0)


def _next_frame(fd: int, parent: int) -> tuple[bytes, int, int] | None:
    """The next frame from the parent (None once the parent is gone)."""
    head = b""
    while len(head) < _FRAME.size:
        if not select.select([fd], [], [], _PARENT_CHECK_S)[0]:
            if os.getppid() != parent:
                return None
            continue
        chunk = os.read(fd, _FRAME.size - len(head))
        if not chunk:
            return None
        head += chunk
    kind, offset, size = _FRAME.unpack(head)
    return kind, offset, size


def _load(box: mmap.mmap, offset: int, size: int) -> Any:
    return None if size < 0 else pickle.loads(box[offset : offset + size])  # noqa: S301 - our parent's


def _receive(fd: int, box: mmap.mmap, parent: int) -> Any:
    """In the worker: the current task's input (None when the parent sent none, or one too large)."""
    while True:
        frame = _next_frame(fd, parent)
        if frame is None:
            os._exit(0)  # the parent is gone: nobody wants the answer
        kind, offset, size = frame
        if kind == _INPUT:
            return _load(box, offset, size)


def _poked(fd: int) -> bool:
    """In the worker, after `_receive`: whether the parent has written to (or closed) the pipe since."""
    return bool(select.select([fd], [], [], 0)[0])
