"""``<state_dir>/daemon.lock``: one daemon per machine, and how others know it runs.

The daemon holds an exclusive ``flock`` on the file for its whole life (its PID inside, for
the message a second daemon gets). While it runs it also handles USB plug-ins, so the udev
unit (``dmbackup backup --on-plug-device``) asks ``daemon_running`` and leaves the disk to it.
"""

from __future__ import annotations

import fcntl
import os
from typing import IO

from dmbackup.errors import Locked

LOCK_NAME = "daemon.lock"


def take(state_dir: str) -> IO[str]:
    """Hold the lock (keep the returned file open); ``Locked`` (exit 5) names the holder."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(state_dir, LOCK_NAME)
    f = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise Locked(f"another dmbackup daemon is running (pid {holder}, lock {path})") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def daemon_running(state_dir: str) -> bool:
    """True when a daemon holds ``<state_dir>/daemon.lock`` (it then handles USB plug-ins)."""
    path = os.path.join(state_dir, LOCK_NAME)
    try:
        f = open(path, "r", encoding="utf-8")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False
