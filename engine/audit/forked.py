"""The audit's work on the second core, in a forked child: the verify, and a share of the re-runs.

The child (`helper.Helper`) is forked at the start of the audit, before the scan, while the process
holds little: a fork is not free for the parent, every page it writes afterwards that the child
still shares is copied (a page fault of a few microseconds), and forked after the fold that cost
about 25 ms. The child verifies the chain on a read of its own while the audit reads, decodes and
folds it; then it is handed its input (`send`: pickled into a shared anonymous mapping, its size
through a pipe, so the parent never blocks) and re-runs that share of the decisions while the audit
builds the tree; told to hurry (`hurry`: one byte down the same pipe), it answers what it has done.
It is a plain `os.fork()`: it sends its pickled answer back through a pipe and leaves with
`os._exit` (no atexit handler, no finaliser of the parent's state); it opens its own connection
and never uses the parent's.

Forking is only done where it is safe and useful: a POSIX system with two cores or more, called
from the main thread, and no other thread in the process but idle ledger writers (a fork copies
locks held by other threads, never their owners; an idle `ledger-writer` waits on its queue and
holds none the child needs), as in the CLI and the benchmark. Otherwise (the MCP server's
threads, `LEDGER_AUDIT_FORK=0`, no idle core), and whenever the child fails in any way or does not
answer in time (it is then killed), the audit does the work in this process instead.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import select
import signal
import struct
import threading
from collections.abc import Callable
from typing import Any


def can_fork() -> bool:
    """Whether a child may be forked here (see the module's docstring). `LEDGER_AUDIT_FORK=0`: never;
    `=1`: whenever it is safe; unset: when it is safe and a core is idle (the 1-minute load average
    below the number of cores minus a half: on a busy machine a child only competes for a core)."""
    mode = os.environ.get("LEDGER_AUDIT_FORK", "")
    if mode == "0" or not hasattr(os, "fork"):
        return False
    main = threading.current_thread()
    if main is not threading.main_thread() or not all(
        t is main or t.name in _IDLE_THREADS for t in threading.enumerate()
    ):
        return False
    cores = os.cpu_count() or 1
    return mode == "1" or (cores > 1 and os.getloadavg()[0] < cores - 0.5)


#: threads that may be running when the child is forked: the ledger's writer, idle while auditing
_IDLE_THREADS = frozenset({"ledger-writer"})
#: the child's time allowance by default: generous (a thousand re-runs take about 0.1 s), then it is killed
_ALLOWANCE_S = 60.0


class Child:
    """Work running in a forked child; `result()` waits for its answer (None when it failed)."""

    def __init__(self, pid: int, fd: int, timeout: float) -> None:
        self.pid, self.fd, self.timeout = pid, fd, timeout
        self._done = False
        self._result: Any = None
        self._box: mmap.mmap | None = None
        self._inbox = -1
        self._sent = False

    @classmethod
    def start(
        cls, work: Callable[..., Any], *, allowance_s: float = _ALLOWANCE_S, inbox: int = 0
    ) -> Child | None:
        """Fork a child that runs `work()` and answers its pickled result (None when no child can be
        forked here: do the work in this process instead). `allowance_s`: its time before being killed.
        `inbox` > 0: the child can be handed one object later (`send`), of up to `inbox` bytes pickled,
        and then be told to hurry (`hurry`): `work(receive, hurried)` is then called; `receive()`
        returns that object (None if none came), `hurried()` whether the parent wants the answer now."""
        if not can_fork():
            return None
        try:  # shared with the child, pages made on use (refused where memory is not overcommitted)
            box = mmap.mmap(-1, inbox) if inbox > 0 else None
        except (OSError, ValueError, OverflowError):
            return None
        in_read, in_write = os.pipe() if box is not None else (-1, -1)
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (read_fd, write_fd, in_read, in_write):
                if fd >= 0:
                    os.close(fd)
            return None
        if pid == 0:  # the child: work, answer, leave without touching the parent's state
            code = 1
            try:
                os.close(read_fd)
                if box is None:
                    answer = work()
                else:
                    os.close(in_write)
                    answer = work(lambda: _receive(in_read, box), lambda: _poked(in_read))
                data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
                view = memoryview(data)
                while view:
                    view = view[os.write(write_fd, view) :]
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        child = cls(pid, read_fd, allowance_s)
        if box is not None:
            os.close(in_read)
            child._box, child._inbox = box, in_write
        return child

    def send(self, value: Any) -> bool:
        """Hand the child its input (once; never blocks): False when it does not fit the inbox or the
        child is gone (it then answers None: the caller does the work itself)."""
        box, fd = self._box, self._inbox
        if box is None or fd < 0 or self._sent:
            return False
        self._sent = True
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            fits = len(data) <= len(box)
            if fits:
                box[: len(data)] = data
            os.write(fd, struct.pack(">q", len(data) if fits else -1))  # 8 bytes into an empty pipe
            return fits
        except OSError:  # the child has died already
            return False

    def hurry(self) -> None:
        """Tell the child (once it has its input) that its answer is wanted now: what it has done."""
        if self._inbox >= 0 and self._sent:
            with contextlib.suppress(OSError):
                os.write(self._inbox, b"!")

    def close(self) -> None:
        """Stop waiting: kill the child if it still runs and reap it (after an error, say)."""
        self._close_inbox()
        if self._done:
            return
        self._done = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.close(self.fd)
        os.waitpid(self.pid, 0)

    def result(self) -> Any:
        """The child's answer, once (None when the child failed: the caller does the work itself)."""
        if self._done:
            return self._result
        if not self._sent:
            self._close_inbox()  # nothing sent by now: the child is told so and answers without it
        self._done = True
        chunks = []
        status = -1
        try:
            while select.select([self.fd], [], [], self.timeout)[0]:
                chunk = os.read(self.fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
            else:  # no answer in time (a lock the fork copied held?): kill it, work here
                os.kill(self.pid, signal.SIGKILL)
                chunks = []
        finally:
            os.close(self.fd)
            _, status = os.waitpid(self.pid, 0)
            self._close_inbox()
        if status != 0 or not chunks:
            return None
        try:
            self._result = pickle.loads(b"".join(chunks))  # noqa: S301 - our own child's answer
        except Exception:  # a child that died mid-write: the caller does the work itself
            return None
        return self._result

    def _close_inbox(self) -> None:
        if self._inbox >= 0:
            os.close(self._inbox)
            self._inbox = -1
        if self._box is not None:
            self._box.close()
            self._box = None


def _receive(fd: int, box: mmap.mmap) -> Any:
    """In the child: the object the parent sent (None when it sent none, or one too large)."""
    head = b""
    while len(head) < 8:
        chunk = os.read(fd, 8 - len(head))
        if not chunk:  # the parent closed the inbox without a word
            return None
        head += chunk
    (size,) = struct.unpack(">q", head)
    return None if size < 0 else pickle.loads(box[:size])  # noqa: S301 - our parent's input


def _poked(fd: int) -> bool:
    """In the child, after `_receive`: whether the parent has written to (or closed) the inbox since."""
    return bool(select.select([fd], [], [], 0)[0])
