"""``paused()``: no cyclic garbage collection inside a block.

Reading a month of catalogs builds millions of small lists and tuples that are all still in
use; each full collection walks them all again, and in ``dmbackup find`` over 30 snapshots
that was 1.5 s of 4 (profile in issue 15's notes). What those reads build holds no reference
cycles, so reference counting frees it; a run inside ``paused()`` leaves collection to after.
Re-enabled, the collector would walk it all on the next allocations (0.4 s more after a
``find``): ``paused(freeze=True)`` hands it to the permanent generation instead.

``relaxed()``: collection made rare, not stopped, for a whole backup, restore or verify. An
incremental holds its parent's page table, pages and content indexes while it allocates an
entry per file; with the default thresholds the collector walked all of that again and
again: a day-30 incremental on the find bench chain spent a quarter of its time there
(10.2 -> 7.6 s, 13.1 -> 9.0 s; the same peak memory with collection off: nothing it builds
needs the collector). Young collections still run (every 100,000 net allocations), so a
long-lived daemon still frees cycles; the thresholds are restored afterwards.
"""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def paused(freeze: bool = False):
    """``freeze``: afterwards, move what exists to the permanent generation (``gc.freeze``), so
    the next collections do not walk it once more (a one-shot command that keeps its results:
    they are still freed by reference counting)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if was:
            gc.enable()


RELAXED = (100_000, 50, 100)
DEFAULT = gc.get_threshold()        # the interpreter's, before anything here changed them


def one_shot() -> None:
    """For a process that runs one command and exits (every CLI command but ``daemon``): rare
    collections from the start, never put back. Putting them back at the end of a backup made
    the next allocation pay a full collection of everything the run still held (0.5-1.7 s at
    the end of a day-30 incremental), work an exiting process does not need."""
    gc.set_threshold(*RELAXED)


def long_lived() -> None:
    """For the daemon: the interpreter's thresholds, so garbage cycles are collected between
    jobs (each job runs ``relaxed()`` and pays one collection when it ends)."""
    gc.set_threshold(*DEFAULT)


@contextlib.contextmanager
def relaxed():
    """Rare collections inside the block (see the module docstring); nests."""
    old = gc.get_threshold()
    gc.set_threshold(*(max(a, b) for a, b in zip(RELAXED, old)))
    try:
        yield
    finally:
        gc.set_threshold(*old)
