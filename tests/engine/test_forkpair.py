"""dmbackup.engine.forkpair: the second half of a read-only job in a forked child.

The answer must be the same with or without the child: a child that fails, dies or sends
nothing leaves its half to the parent, and an error in the parent leaves no process behind.
(find's use of it: tests/engine/test_find.py, ``..._on_one_or_two_processors``.)"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from dmbackup.engine import forkpair

PARENT = os.getpid()


def count_forks(monkeypatch) -> list:
    """A list that gets an item at each fork; the machine is said to have two processors."""
    n: list = []
    real = os.fork

    def fork():
        n.append(1)
        return real()

    monkeypatch.setattr(os, "fork", fork)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    return n


@pytest.fixture
def forks(monkeypatch):
    """Counts the forks; forkpair forks for any number of items."""
    monkeypatch.setattr(forkpair, "MIN_ITEMS", 1)
    return count_forks(monkeypatch)


def test_the_second_half_runs_in_a_child_and_comes_back(forks):
    def work(part):
        return [x * x for x in part], os.getpid()

    (a, pa), (b, pb) = forkpair.in_two(work, [1, 2, 3], list(range(10_000)), allowed=True)
    assert a == [1, 4, 9] and b == [x * x for x in range(10_000)]      # more than a pipe's buffer
    assert pa == PARENT and pb != PARENT and forks == [1]


@pytest.mark.parametrize("how", ["raise", "kill", "unpicklable", "exit"])
def test_a_child_that_fails_or_dies_leaves_its_half_to_the_parent(forks, how):
    def work(part):
        if os.getpid() != PARENT:
            if how == "raise":
                raise RuntimeError("boom")
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "unpicklable":
                return lambda: part
            if how == "exit":
                raise SystemExit(0)
        return sum(part), os.getpid()

    (a, pa), (b, pb) = forkpair.in_two(work, [1, 2], [3, 4], allowed=True)
    assert (a, b) == (3, 7) and pa == pb == PARENT and forks == [1]


def test_an_error_in_the_parent_kills_and_reaps_the_child(forks, tmp_path):
    pidfile = tmp_path / "child"

    def work(part):
        if os.getpid() != PARENT:
            pidfile.write_text(str(os.getpid()))
            time.sleep(60)
            return part
        while not pidfile.exists():
            time.sleep(0.01)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        forkpair.in_two(work, [1], [2], allowed=True)
    with pytest.raises(ProcessLookupError):         # killed and waited for: not even a zombie
        os.kill(int(pidfile.read_text()), 0)


def test_no_fork_when_not_allowed_too_small_or_with_threads(forks, monkeypatch):
    def work(part):
        return os.getpid()

    assert forkpair.in_two(work, [1], [2], allowed=False) == (PARENT, PARENT)
    monkeypatch.setattr(forkpair, "MIN_ITEMS", 10)
    assert forkpair.in_two(work, [1], [2], allowed=True, items=9) == (PARENT, PARENT)
    monkeypatch.setattr(forkpair, "MIN_ITEMS", 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert forkpair.in_two(work, [1], [2], allowed=True) == (PARENT, PARENT)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)          # a lock a thread holds at a fork stays held
    t.start()
    try:
        assert forkpair.in_two(work, [1], [2], allowed=True) == (PARENT, PARENT)
    finally:
        stop.set()
        t.join()
    assert forks == []
    assert forkpair.in_two(work, [1], [2], allowed=True)[1] != PARENT and forks == [1]
