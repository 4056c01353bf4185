"""Byte-code for the code under test, as an installed dmbackup has it.

The Debian package compiles its modules when it is installed (packaging/deb/postinst). A
checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (some sandboxes and CI images set it) has no
``__pycache__``, so every dmbackup process would compile the whole package first: about
0.3 s a start on the bench machine, which is not what an administrator waits for. Every bench
that times dmbackup processes calls ``compile_package`` on each checkout it runs first.
"""

from __future__ import annotations

import compileall
import os


def compile_package(root: str) -> None:
    """Write the ``.pyc`` files of ``root``/dmbackup (a no-op when they are up to date)."""
    if not compileall.compile_dir(os.path.join(root, "dmbackup"), quiet=1):
        raise SystemExit(f"{root}/dmbackup does not compile")
