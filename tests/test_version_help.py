"""``dmbackup --version`` and the examples in ``--help``: run as a real process, no config.

``--version`` must work on a machine with no config file at all (it is the first thing asked
in a bug report and the first thing run after installing the package), so these tests point
``$DMBACKUP_CONFIG`` at a file that does not exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

from dmbackup import __version__
from dmbackup.archive import FORMAT_VERSION

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dm(*args, tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["DMBACKUP_CONFIG"] = str(tmp_path / "no-such-config.toml")
    env["COLUMNS"] = "200"          # rich wraps help text at the terminal width
    env["TERM"] = "dumb"
    return subprocess.run([sys.executable, "-m", "dmbackup", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_version_without_a_config(tmp_path):
    r = dm("--version", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"dmbackup {__version__}"
    assert f"repository format {FORMAT_VERSION}" in lines
    assert any(ln.startswith(f"Python {sys.version.split()[0]}") for ln in lines)
    for lib in ("typer", "smbprotocol", "pyudev", "zstandard", "cryptography", "schedule"):
        try:
            want = metadata.version(lib)
        except metadata.PackageNotFoundError:
            want = "not installed"
        assert f"{lib} {want}" in lines, r.stdout
    assert r.stderr == ""


def test_version_wins_over_a_bad_config_option(tmp_path):
    r = dm("--config", str(tmp_path / "missing.toml"), "--version", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("dmbackup ")


def test_a_missing_library_is_reported_not_fatal():
    from dmbackup.cli import main

    old = main.VERSION_LIBRARIES
    main.VERSION_LIBRARIES = old + ("dmbackup-no-such-distribution",)
    try:
        text = main.version_text()
    finally:
        main.VERSION_LIBRARIES = old
    assert "dmbackup-no-such-distribution not installed" in text.splitlines()
