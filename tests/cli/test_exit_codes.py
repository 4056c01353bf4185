"""The exit codes themselves (README, "Exit codes"): 0, 1, 2, 3, 4, 5, 6, 7, 70 and 130.

Codes 2-7 are each shown with their failure in tests/engine/test_failures.py and 70 (a bug)
in tests/security/test_local_internal_error.py; this module adds the two that need a running
process or a quirk of the store, and checks the table of classes against the documented
numbers.
"""

import os
import signal
import socket
import time

from dmbackup import errors


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


def test_interrupt_exits_130_and_commits_nothing(ready):
    with open(os.path.join(ready.store, "example.it", "bulk.bin"), "wb") as f:
        f.write(os.urandom(60 << 20))
    p = ready.spawn("backup", "--target", "local")
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None and not ready.chain_files():
        time.sleep(0.005)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    if p.returncode == 0:
        return            # finished before the signal: nothing to show on this machine
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not ready.chain_files(".catalog")
    assert not [n for n in ready.chain_files() if ".tmp-" in n]
