"""Run the real dmbackup CLI with a dir target that stalls in the middle of a backup.

Test-side only (nothing of this is in the product): ``python -m tests.cli.stall ARGS`` runs
``dmbackup ARGS`` exactly as ``python -m dmbackup ARGS`` would, except that the first write
to a ``dir`` target object whose name matches ``$DMB_STALL_MATCH`` (a regular expression,
``re.search``; default: a data volume) is made and then held: the process creates the file
``$DMB_STALL_DIR/stalled`` and waits until ``$DMB_STALL_DIR/go`` exists (at most
``$DMB_STALL_MAX`` seconds, default 120) before it returns. A test can so act on a run it
knows is still going, with part of a volume already on the target.
"""

from __future__ import annotations

import os
import re
import sys
import time

_DIR = os.environ.get("DMB_STALL_DIR", "")
_MATCH = re.compile(os.environ.get("DMB_STALL_MATCH", r"\.v\d+$"))
_MAX = float(os.environ.get("DMB_STALL_MAX", "120"))
_done = {"stalled": False}


def _hold() -> None:
    _done["stalled"] = True
    with open(os.path.join(_DIR, "stalled"), "w"):
        pass
    deadline = time.monotonic() + _MAX
    while not os.path.exists(os.path.join(_DIR, "go")) and time.monotonic() < deadline:
        time.sleep(0.01)


def install() -> None:
    from dmbackup.targets import dir as dir_mod

    real = dir_mod._FileWriter.write

    def write(self, data):
        out = real(self, data)
        if _DIR and not _done["stalled"] and _MATCH.search(self.name):
            _hold()
        return out

    dir_mod._FileWriter.write = write


if __name__ == "__main__":
    install()
    from dmbackup.cli.main import app

    sys.argv[0] = "dmbackup"
    app(prog_name="dmbackup")
