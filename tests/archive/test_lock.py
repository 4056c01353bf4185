"""The repository lock of a long-lived process (the daemon).

A run forced out of a hung target by ``job_timeout`` may not get to remove its lock. The lock
names this very process, which is alive, so the "provably dead owner" rule never breaks it:
every later run of the daemon would wait for itself (exit 5) until it restarts. A lock of this
process that no run of it holds is broken; one that a run of it holds is not.
"""

from __future__ import annotations

import pytest

from dmbackup.archive.repository import Repository
from dmbackup.errors import Locked
from dmbackup.targets.dir import DirTarget


def _repo(world) -> Repository:
    t = DirTarget("local", world.repo_dir)
    t.open()
    return Repository(t, "mx.test")


def test_a_lock_left_by_an_earlier_run_of_this_process_is_broken(ready, monkeypatch):
    forced_out = _repo(ready)
    forced_out.lock("backup")
    # the run is forced out while its target hangs: removing the lock fails too
    def hung(self, name):
        raise TimeoutError(110, "the target did not answer")
    monkeypatch.setattr(DirTarget, "delete", hung)
    with pytest.raises(TimeoutError):
        forced_out.unlock_repo()
    monkeypatch.undo()
    nxt = _repo(ready)
    nxt.lock("backup")                 # not "locked by ... PID <ourselves>"
    nxt.unlock_repo()
    assert ready.run("backup", "--target", "local").code == 0


def test_a_lock_a_run_of_this_process_holds_is_respected(ready):
    holder = _repo(ready)
    holder.lock("backup")
    try:
        with pytest.raises(Locked):
            _repo(ready).lock("prune")
        r = ready.run("backup", "--target", "local")
        assert r.code == 5 and "locked" in r.err
    finally:
        holder.unlock_repo()
    assert ready.run("backup", "--target", "local").code == 0
