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


def test_restore_help_shows_the_common_restores(tmp_path):
    r = dm("restore", "--help", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())            # rich pads and may wrap: compare words
    assert "Examples:" in out
    for cmd in (
        "dmbackup restore --target usb1 --to /var/vmail.new --uid-gap 1000",         # disaster, into a dir
        "dmbackup restore --target usb1 --at 2026-11-27T23:00 --to /var/vmail.new --uid-gap 1000",
        "dmbackup restore --resync",
        "dmbackup restore --target usb1 --overwrite",                                 # into the live store
        "--resume",
        "dmbackup restore --target usb1 --mailbox anna@example.it --to /tmp/anna",   # one mailbox
        "--mailbox anna@example.it --folder Archivio/2024 --to /tmp/a",              # one folder
        "dmbackup restore --target usb1 --mailbox anna@example.it --at 2026-11-27T23:00",   # live, at a time
    ):
        assert cmd in out, f"{cmd!r} missing from restore --help:\n{r.stdout}"


def test_every_command_has_examples(tmp_path):
    wanted = {
        ("backup",): "dmbackup backup nightly",
        ("verify",): "dmbackup verify --target usb1 --read-data",
        ("snapshots",): "dmbackup snapshots --target usb1 --json",
        ("init",): "dmbackup init usb1",
        ("prune",): "dmbackup prune --target usb1 --dry-run",
        ("status",): "dmbackup status --json",
        ("daemon",): "systemctl enable --now dmbackup.service",
        ("check-config",): "dmbackup check-config",
        ("usb", "list"): "dmbackup usb list",
    }
    for args, cmd in wanted.items():
        r = dm(*args, "--help", tmp_path=tmp_path)
        assert r.returncode == 0, r.stderr
        out = " ".join(r.stdout.split())
        assert "Examples:" in out and cmd in out, f"{' '.join(args)} --help:\n{r.stdout}"
    r = dm("verify", "--help", tmp_path=tmp_path)
    assert "dmbackup verify --target usb1 --restore-drill" in " ".join(r.stdout.split())
