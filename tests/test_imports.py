"""The package has no import cycles and keeps its layers (scripts/check-imports.py)."""

from __future__ import annotations

import os
import subprocess
import sys


from tests.world import ROOT


def test_no_import_cycles_and_no_layer_violations():
    r = subprocess.run([sys.executable, "scripts/check-imports.py"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _write(root, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_checker_finds_a_planted_cycle_and_each_kind_of_violation(tmp_path):
    for pkg in ("dmbackup", "dmbackup/archive", "dmbackup/engine", "dmbackup/cli"):
        _write(tmp_path, f"{pkg}/__init__.py", "")
    _write(tmp_path, "dmbackup/archive/a.py", "from dmbackup.archive import b\n")
    _write(tmp_path, "dmbackup/archive/b.py", "def f():\n    from dmbackup.archive.a import x\n")
    _write(tmp_path, "dmbackup/archive/c.py", "import dmbackup.engine.run\n")
    _write(tmp_path, "dmbackup/engine/run.py", "import typer\nfrom dmbackup.cli import main\n")
    _write(tmp_path, "dmbackup/engine/typed.py",
           "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dmbackup.cli import main\n")
    _write(tmp_path, "dmbackup/cli/main.py", "import typer\n")
    _write(tmp_path, "dmbackup/__main__.py", "from dmbackup.cli.main import app\n")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "check-imports.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert "cycles: 1\n" in out and "dmbackup.archive.a, dmbackup.archive.b" in out
    assert "dmbackup.archive.b -> dmbackup.archive.a (line 2, deferred)" in out
    assert "dmbackup.archive.c -> dmbackup.engine.run (line 1): archive/ must not import engine/" in out
    assert "dmbackup.engine.run -> dmbackup.cli.main (line 2): engine/ must not import cli/" in out
    assert "only dmbackup.__main__ imports cli/" in out
    assert "dmbackup.engine.run imports typer (line 1)" in out
    assert "typed" not in out                       # TYPE_CHECKING imports never run
    assert "dmbackup.cli.main imports typer" not in out and "dmbackup.__main__ ->" not in out


def test_a_clean_package_passes(tmp_path):
    _write(tmp_path, "dmbackup/__init__.py", "")
    _write(tmp_path, "dmbackup/engine/__init__.py", "from dmbackup.engine.run import go\n")
    _write(tmp_path, "dmbackup/engine/run.py", "from dmbackup import errors\n")
    _write(tmp_path, "dmbackup/errors.py", "")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "check-imports.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cycles: 0" in r.stdout and "layer violations: 0" in r.stdout
