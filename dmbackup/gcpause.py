"""``paused()``: no cyclic garbage collection inside a block.

Reading a month of catalogs builds millions of small lists and tuples that are all still in
use; each full collection walks them all again, and in ``dmbackup find`` over 30 snapshots
that was 1.5 s of 4 (profile in issue 15's notes). What those reads build holds no reference
cycles, so reference counting frees it; a run inside ``paused()`` leaves collection to after.
Re-enabled, the collector would walk it all on the next allocations (0.4 s more after a
``find``): ``paused(freeze=True)`` hands it to the permanent generation instead.
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
