"""dmbackup.gcpause: collection paused for a catalog read, made rare for a whole backup,
restore or verify, and always put back as it was."""

from __future__ import annotations

import gc
import os

import pytest

from dmbackup import gcpause


def test_relaxed_raises_the_thresholds_and_puts_them_back():
    old = gc.get_threshold()
    with gcpause.relaxed():
        inside = gc.get_threshold()
        with gcpause.relaxed():                 # nests
            assert gc.get_threshold() == inside
        assert gc.get_threshold() == inside
    assert inside[0] >= 100_000 and all(a >= b for a, b in zip(inside, old))
    assert gc.get_threshold() == old and gc.isenabled()
    with pytest.raises(RuntimeError):
        with gcpause.relaxed():
            raise RuntimeError("a failed run")
    assert gc.get_threshold() == old


def test_paused_puts_collection_back_on():
    with gcpause.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gcpause.paused():
            pass
        assert not gc.isenabled()               # it was off: it stays off
    finally:
        gc.enable()


def test_backup_restore_and_verify_run_relaxed(ready, monkeypatch):
    import importlib

    backup_mod, restoredir, verify_mod = (importlib.import_module(f"dmbackup.engine.{m}")
                                          for m in ("backup", "restoredir", "verify"))

    seen = {}

    def spy(mod, name):
        real = getattr(mod, name)

        def wrapper(*a, **k):
            seen[name] = gc.get_threshold()
            return real(*a, **k)
        monkeypatch.setattr(mod, name, wrapper)

    spy(backup_mod, "backup_mail")
    spy(restoredir, "restore_to_dir")
    spy(verify_mod, "verify_repo")
    old = gc.get_threshold()
    ready.ok("backup", "--target", "local")
    ready.ok("verify", "--target", "local")
    ready.ok("restore", "--target", "local", "--to", os.path.join(ready.tmp, "out"))
    assert set(seen) == {"backup_mail", "restore_to_dir", "verify_repo"}
    assert all(t[0] >= 100_000 for t in seen.values()) and gc.get_threshold() == old


def test_a_cli_process_keeps_collections_rare_and_the_daemon_puts_them_back():
    """A one-shot command never restores the default thresholds (the next allocation would pay
    a full collection of everything the run still holds, just before exiting); the daemon
    runs with the interpreter's thresholds between jobs."""
    import subprocess
    import sys

    from tests.world import ROOT

    code = ("import gc, sys\nfrom dmbackup.cli.main import main\nsys.argv = ['dmbackup', '--version']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint(tuple(gc.get_threshold()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=60).stdout.strip().splitlines()[-1]
    assert out == str(gcpause.RELAXED)
    old = gc.get_threshold()
    try:
        gcpause.one_shot()
        with gcpause.relaxed():
            pass
        assert gc.get_threshold() == gcpause.RELAXED
        gcpause.long_lived()
        assert gc.get_threshold() == gcpause.DEFAULT == (700, 10, 10)
    finally:
        gc.set_threshold(*old)
