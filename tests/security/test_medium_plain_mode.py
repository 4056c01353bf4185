"""``encryption.mode = "none"`` (issue 13, item 2).

Without a key nothing on the medium can be authenticated: the SHA-256 in an unencrypted
repository catches accidents, not forgery (anyone with the disk can recompute it). So
dmbackup does not claim integrity there: it never applies a config bundle from such a
repository to the live system (``--overwrite``; the preflight and ``--to DIR`` still work),
and secret files (``*.pw``, private keys, anything not readable by others) never go into an
unencrypted bundle.
"""

from __future__ import annotations

import json
import os

from dmbackup.archive import crypto
from tests.security.conftest import craft_bundle, files_containing, one_line, repo_id

PEM = b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBogus0nlyForTests\n-----END EC PRIVATE KEY-----\n"


def _plain_world(world):
    etc = os.path.join(world.tmp, "etc")
    os.makedirs(os.path.join(etc, "dmbackup"), exist_ok=True)
    os.makedirs(os.path.join(etc, "opendkim"), exist_ok=True)
    with open(os.path.join(etc, "dmbackup", "relay.pw"), "w") as f:
        f.write("relay-Secret-7\n")
    os.chmod(os.path.join(etc, "dmbackup", "relay.pw"), 0o600)
    with open(os.path.join(etc, "opendkim", "mail.private"), "wb") as f:
        f.write(PEM)
    os.chmod(os.path.join(etc, "opendkim", "mail.private"), 0o644)   # carelessly readable
    with open(os.path.join(etc, "postfix", "sasl_passwd"), "w") as f:
        f.write("[relay.example]:587 user:sasl-Secret-9\n")
    os.chmod(os.path.join(etc, "postfix", "sasl_passwd"), 0o600)
    world.write_config(encryption='mode = "none"')
    world.ok("init", "local")
    return world


def test_secret_files_never_reach_an_unencrypted_medium(world):
    w = _plain_world(world)
    w.ok("backup", "--target", "local")
    w.ok("backup", "--target", "local", "--what", "config")
    for needle in (b"relay-Secret-7", b"sasl-Secret-9", b"MHcCAQEEIBogus0nlyForTests"):
        assert files_containing(w.repo_dir, needle) == [], needle
    # the ordinary configuration is there, and the manifest says what was left out and why
    dest = os.path.join(w.tmp, "cfg")
    r = w.run("restore", "--target", "local", "--what", "config", "--to", dest, "--json")
    assert r.code in (0, 1), r.err
    etc = os.path.join(dest, w.tmp.lstrip("/"), "etc")
    assert os.path.exists(os.path.join(etc, "postfix", "main.cf"))
    assert not os.path.exists(os.path.join(etc, "dmbackup", "relay.pw"))
    with open(os.path.join(dest, "MANIFEST.json")) as f:
        left_out = json.load(f)["secrets_left_out"]
    assert {os.path.basename(p) for p in left_out} == {"relay.pw", "mail.private", "sasl_passwd"}


def test_forged_bundle_in_an_unencrypted_repository_is_never_applied_live(world):
    w = _plain_world(world)
    w.ok("backup", "--target", "local")
    main_cf = os.path.join(w.tmp, "etc", "postfix", "main.cf")
    with open(main_cf, "rb") as f:
        before = f.read()
    snap = "20990101T000000Z-config"
    data = craft_bundle([{"path": main_cf, "data": b"relayhost = [evil.example]\n"}],
                        sealer=crypto.PlainSealer(), context=f"{repo_id(w)}|bundle|{snap}".encode())
    with open(os.path.join(w.repo_root, "config", f"{snap}.bundle"), "wb") as f:
        f.write(data)
    r = w.run("restore", "--target", "local", "--what", "config", "--overwrite")
    line = one_line(r)
    assert r.code == 2, (r.code, line)
    assert "--to" in line and "unencrypted" in line
    with open(main_cf, "rb") as f:
        assert f.read() == before
    # looking is allowed: the preflight lists what would change, writing nothing
    r = w.run("restore", "--target", "local", "--what", "config", "--json")
    assert r.code in (0, 1), r.err
    with open(main_cf, "rb") as f:
        assert f.read() == before
