"""Two halves of a read-only job on two processors: the second half in a forked child.

``find`` spends most of a search reading, authenticating and inflating pages and picking
entries out of them, in pure Python under one interpreter lock; the appliance has (at least)
two cores. ``in_two(work, first, second, allowed=...)`` returns ``(work(first),
work(second))``, computing the second in a child process made by ``fork`` (it sees the
parent's memory as it was: the unlocked keys, the parsed tables, the open target) while the
parent computes the first.

The rules that keep this safe:

- ``work`` only reads: the child never writes to the medium or to ``state_dir``; what it
  learned (for a local cache, say) is part of its result, for the parent to keep.
- Only when ``allowed``: the caller passes the target's ``capabilities.concurrent`` (a local
  or mounted file system, read with per-call descriptors; not one SMB or userspace NFS
  connection, whose protocol state a second process would corrupt), and only when this
  process runs no other thread (a lock held by one at the fork would never be released in
  the child) and the machine has more than one processor.
- The result comes back through a pipe as a pickle, which is safe here: the child is this
  very program, and nothing from the medium is unpickled (the pickle holds what the child
  made of the medium after checking it, as the parent would have).
- The child leaves with ``os._exit``: no ``finally``, ``atexit`` or buffered output of the
  parent runs twice. Whatever goes wrong in it (an exception, a signal, a crash, a result
  that does not unpickle) makes the parent compute the second half itself, so the answer is
  the same with or without the child. ``KeyboardInterrupt`` or any exception in the parent
  kills the child and waits for it: no process is left behind.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import threading
from typing import Callable, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MIN_ITEMS = 64          # below this many items a fork costs more than it saves (tests lower it)


def usable(allowed: bool, items: int) -> bool:
    """Whether ``in_two`` would fork for ``items`` items of work."""
    return (allowed and items >= MIN_ITEMS and hasattr(os, "fork") and (os.cpu_count() or 1) > 1
            and threading.active_count() == 1)


def in_two(work: Callable[..., R], first: T, second: T, *, allowed: bool, items: int = MIN_ITEMS,
           peer: bool = False) -> tuple[R, R]:
    """``(work(first), work(second))``, the second in a forked child when ``usable``.

    ``peer``: the parent calls ``work(first, p)``, where ``p`` is a ``Peer`` (or None when
    there is no child) whose ``finished()`` gives the child's result as soon as it is there,
    so the parent's half can stop early when the child's answer makes it useless; the child
    and the fallback call ``work(second)``."""
    def alone() -> tuple[R, R]:                    # both halves here, one after the other
        return (work(first, None) if peer else work(first)), work(second)

    if not usable(allowed, items):
        return alone()
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return alone()
    if pid == 0:                                    # the child
        code = 1
        try:
            os.close(r)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            data = pickle.dumps(work(second), protocol=pickle.HIGHEST_PROTOCOL)
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
            code = 0
        except BaseException:                       # the parent does this half itself
            pass
        finally:
            os._exit(code)
    os.close(w)
    p = Peer(r, pid)
    try:
        mine = work(first, p) if peer else work(first)
        theirs = p.collect()
    finally:
        os.close(r)
        if p.value is None:
            _reap(pid)
    if theirs is _FAILED:
        theirs = work(second)
    return mine, theirs


class Peer:
    """The child, as the parent sees it while it computes its own half."""

    def __init__(self, fd: int, pid: int):
        self.fd, self.pid = fd, pid
        self.value = None                           # the child's result (or _FAILED) once collected

    def finished(self):
        """The child's result if it is there, else None (also when the child failed: the
        parent then does that half itself, later). Never waits for a child still working:
        it writes its result only once it has it."""
        if self.value is None:
            ready, _, _ = select.select([self.fd], [], [], 0)
            if not ready:
                return None
            self.collect()
        return None if self.value is _FAILED else self.value

    def collect(self):
        """Wait for the child's result (``_FAILED`` when it has none)."""
        if self.value is None:
            chunks = []
            while True:
                piece = os.read(self.fd, 1 << 20)
                if not piece:
                    break
                chunks.append(piece)
            _, status = os.waitpid(self.pid, 0)
            self.value = _result(b"".join(chunks), status)
        return self.value


_FAILED = object()


def _result(data: bytes, status: int):
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0 or not data:
        return _FAILED
    try:
        return pickle.loads(data)
    except Exception:
        return _FAILED


def _reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
