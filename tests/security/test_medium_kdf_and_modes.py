"""The shipped KDF cannot be weakened from outside (issue 13, item 7), and what dmbackup
creates on a target and in ``state_dir`` is private whatever the caller's umask (item 8).

Tests weaken scrypt only by monkeypatching ``dmbackup.archive.crypto.SCRYPT_N`` in their own process
(tests/conftest.py); a real ``dmbackup`` process always uses the production cost, whatever
its environment says.
"""

from __future__ import annotations

import json
import os
import stat

import dmbackup
from dmbackup.archive import crypto
from tests.security.conftest import run_child


def test_environment_cannot_weaken_the_kdf_of_a_real_run(world):
    w = world
    c = run_child(w, "init", "local", env={"DMBACKUP_TEST_WEAK_KDF": "1"})
    assert c.code == 0, c.err
    doc = json.load(open(os.path.join(w.repo_root, "keys", "master.json")))
    assert (doc["n"], doc["r"], doc["p"]) == (1 << 15, 8, 1)
    assert (crypto.SCRYPT_N, crypto.SCRYPT_R, crypto.SCRYPT_P) == (1 << 10, 8, 1)   # only here, patched
    pkg = os.path.dirname(dmbackup.__file__)
    for dp, _, fns in os.walk(pkg):
        for n in fns:
            if n.endswith(".py"):
                with open(os.path.join(dp, n)) as f:
                    assert "WEAK_KDF" not in f.read(), n


def _modes(root: str) -> dict[str, int]:
    out = {}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.join(dp, n)
            out[os.path.relpath(p, root)] = stat.S_IMODE(os.lstat(p).st_mode)
    return out


def test_files_on_the_target_and_in_state_dir_are_private_whatever_the_umask(world):
    w = world
    for argv in (["init", "local"], ["backup", "--target", "local"],
                 ["backup", "--target", "local", "--what", "config"]):
        c = run_child(w, *argv, umask=0)
        assert c.code == 0, c.err
    modes = _modes(os.path.join(w.repo_dir, "dmbackup"))
    modes.update({f"state/{k}": v for k, v in _modes(w.state).items()})
    assert any(k.endswith(".catalog") for k in modes) and any(k.startswith("state/") for k in modes)
    wrong = {k: oct(v) for k, v in modes.items()
             if v != (0o700 if os.path.isdir(os.path.join(w.repo_dir, "dmbackup", k))
                      or os.path.isdir(os.path.join(w.tmp, k)) else 0o600)}
    assert wrong == {}
    assert stat.S_IMODE(os.stat(w.state).st_mode) == 0o700
