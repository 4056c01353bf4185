"""The exit codes themselves (README, "Exit codes"): 0, 1, 2, 3, 4, 5, 6, 7, 70 and 130.

Codes 2-7 are each shown with their failure in tests/engine/test_failures.py and 70 (a bug)
in tests/security/test_local_internal_error.py; this module adds the two that need a running
process or a quirk of the store, and checks the table of classes against the documented
numbers.
"""

import os
import signal
import socket
import subprocess
import sys
import time

from dmbackup import errors
from tests.world import ROOT


def test_error_classes_carry_the_documented_codes():
    assert errors.EXIT_OK == 0 and errors.EXIT_WARNING == 1
    assert errors.ConfigError("x").exit_code == 2
    assert errors.UsageError("x").exit_code == 2
    assert errors.OperationFailed("x").exit_code == 3
    assert errors.NoSpace("x").exit_code == 3
    assert errors.DamageFound("x").exit_code == 4
    assert errors.CorruptObject("x").exit_code == 4
    assert errors.Locked("x").exit_code == 5
    assert errors.WrongPassphrase("x").exit_code == 6
    assert errors.TargetUnavailable("x").exit_code == 7
    assert errors.NoRepository("x").exit_code == 7
    assert errors.AuthFailed("x").exit_code == 7
    assert errors.Interrupted("x").exit_code == 130
    assert errors.EXIT_INTERNAL == 70


def test_warning_exits_1_and_commits_the_snapshot(ready):
    sock_path = os.path.join(ready.store, "example.it", "s.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock_path)
    try:
        r = ready.run("backup", "--target", "local")
    finally:
        s.close()
    assert r.code == 1
    assert "s.sock" in r.err
    assert len(ready.chain_files(".catalog")) == 1


def test_interrupt_exits_130_and_commits_nothing(ready, tmp_path):
    """SIGINT in the middle of a backup: the run is held (tests/cli/stall.py) right after it
    wrote the first bytes of a data volume, so the signal always lands while it is going."""
    stall = tmp_path / "stall"
    stall.mkdir()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               DMB_STALL_DIR=str(stall))
    p = subprocess.Popen([sys.executable, "-m", "tests.cli.stall", "--config", ready.config,
                          "backup", "--target", "local"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not (stall / "stalled").exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (stall / "stalled").exists() and p.poll() is None, "the backup never reached a volume write"
        partial = [n for n in ready.chain_files() if ".tmp-" in n]
        assert partial and any(os.path.getsize(n) > 0 for n in partial)   # a volume half written
        assert not ready.chain_files(".catalog")
        p.send_signal(signal.SIGINT)
        time.sleep(0.2)                  # the handler has run (it interrupts the stall's sleep)
        (stall / "go").touch()
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not ready.chain_files(".catalog")
    assert not [n for n in ready.chain_files() if ".tmp-" in n]
