"""The repository lock: one writer at a time.

``locks/lock`` is created exclusively and holds who took it (JSON: host, PID, boot id, the
process's start time in clock ticks, time, purpose). A lock is broken only when its owner is
provably gone: this host rebooted since, or no process with that PID and start time exists,
or it is a lock of this very process that no run of it holds any more (a daemon run forced
out of a hung target before it could remove its lock). A lock of another machine is never
broken: we cannot know whether it still runs.
"""

from __future__ import annotations

import json
import os

from dmbackup import utctime
from dmbackup.archive import layout
from dmbackup.archive.reader import read_small
from dmbackup.errors import CorruptObject, Locked, NotFound
from dmbackup.targets.base import AlreadyExists


def _hostname() -> str:
    import socket               # late: 5 ms of start-up for commands that never lock (issue 17)

    return socket.gethostname()


_HELD_HERE: set[str] = set()      # locks this process holds now (target + host), see _left_by_us


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def proc_start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
        return int(data.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class RepoLock:
    def __init__(self, t, hostname: str):
        self.t, self.hostname = t, hostname
        self.held: str | None = None

    def take(self, purpose: str) -> None:
        info = {"host": _hostname(), "pid": os.getpid(), "boot_id": boot_id(),
                "start_ticks": proc_start_ticks(os.getpid()), "time": utctime.iso(utctime.utc_now()), "purpose": purpose}
        data = json.dumps(info).encode()
        for _ in range(2):
            try:
                self.t.create_exclusive(layout.LOCK, data)
                self.held = layout.LOCK
                _HELD_HERE.add(self._key())
                return
            except AlreadyExists:
                holder = self._read()
                if holder == {}:
                    raise Locked(
                        f"the lock file {layout.LOCK} on {self.t.describe()} is unreadable (damaged, e.g. by a "
                        "dropped connection while it was written): if no dmbackup run of this appliance "
                        "is active, delete it and run again")
                if holder is not None and not self._owner_dead(holder) and not self._left_by_us(holder):
                    raise Locked(
                        f"repository on {self.t.describe()} is locked by {holder.get('purpose', 'a run')} "
                        f"on host {holder.get('host')} (PID {holder.get('pid')}, since {holder.get('time')}); "
                        f"wait for it to finish, or remove {layout.LOCK} if that run is certainly gone")
                self.t.delete(layout.LOCK)   # provably dead owner (or unreadable stale lock)
        raise Locked(f"could not take the lock on {self.t.describe()}")

    def release(self) -> None:
        if self.held:
            # the run is over whether or not the delete gets through (a hung target): from now
            # on a lock file it leaves behind is stale, and the next run of this process breaks it
            _HELD_HERE.discard(self._key())
            name, self.held = self.held, None
            self.t.delete(name)

    def _read(self) -> dict | None:
        """The holder's record; {} when unreadable; None when the lock vanished meanwhile."""
        try:
            info = json.loads(read_small(self.t, layout.LOCK, "the lock file"))
            return info if isinstance(info, dict) and info else {}
        except NotFound:
            return None
        except (ValueError, RecursionError, CorruptObject):
            return {}

    @staticmethod
    def _owner_dead(info: dict) -> bool:
        if info.get("host") != _hostname():
            return False                      # another machine: we cannot know
        if info.get("boot_id") and info.get("boot_id") != boot_id():
            return True                       # this host rebooted since
        pid = info.get("pid")
        if not isinstance(pid, int):
            return False
        ticks = proc_start_ticks(pid)
        if ticks is None:
            return True                       # no such process
        return info.get("start_ticks") is not None and ticks != info.get("start_ticks")

    def _key(self) -> str:
        return f"{self.t.describe()}|{self.hostname}"

    def _left_by_us(self, info: dict) -> bool:
        """A lock of this very process that no run of it holds: an earlier run of the daemon was
        forced out (job_timeout on a hung target) before it could remove its lock. Its PID is
        alive -- it is ours -- so without this every later run would wait for ourselves."""
        return (info.get("host") == _hostname() and info.get("pid") == os.getpid()
                and info.get("boot_id") == boot_id() and info.get("start_ticks") == proc_start_ticks(os.getpid())
                and self._key() not in _HELD_HERE)
