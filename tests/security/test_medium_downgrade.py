"""Downgrade and forgery through the medium (issue 13, item 1).

The encryption mode comes from the config and from what ``init`` recorded in ``state_dir``
(with the key's fingerprint), never from the medium: a ``repo.json`` edited to say "none"
makes the next run stop (exit 7) instead of writing mail and secrets in clear and pruning
the encrypted chain. A planted unencrypted config bundle is refused. Whatever a config
bundle says, a config restore writes only inside ``config_paths`` and never a set-uid or
set-gid file. A new machine enrols an existing repository with ``init`` and is shown what
it enrols.
"""

from __future__ import annotations

import json
import os
import stat

from dmbackup.archive import crypto
from tests.engine.forge import open_repo
from tests.security.conftest import (
    PASSPHRASE,
    craft_bundle,
    files_containing,
    one_line,
    read_json,
    repo_id,
    write_json,
)
from tests.world import World

SECRET = b"nas-Secret-42"


def _catalogs(w) -> list[str]:
    return [p for p in w.chain_files(".catalog")]


def test_repo_json_saying_none_does_not_turn_encryption_off(job_world):
    w = job_world
    before = _catalogs(w)
    assert before and not files_containing(w.repo_dir, SECRET)
    p = os.path.join(w.repo_root, "repo.json")
    doc = read_json(p)
    assert doc["encryption"] == "aes-256-gcm"
    doc["encryption"] = "none"
    write_json(p, doc)

    r = w.run("backup", "nightly")
    line = one_line(r)
    assert r.code == 7, (r.code, line)
    assert "repo.json" in line and "dmbackup init local" in line
    # nothing in clear, and the encrypted chain is still there
    assert files_containing(w.repo_dir, SECRET) == []
    assert files_containing(w.repo_dir, PASSPHRASE.encode()) == []
    assert _catalogs(w) == before

    # what to do: `init` checks the key and rewrites repo.json from it; backups go on, encrypted
    r = w.ok("init", "local", "--json")
    info = json.loads(r.out)
    assert info["repaired_repo_json"] is True and info["encryption"] == "aes-256-gcm"
    assert read_json(p)["encryption"] == "aes-256-gcm"
    w.ok("backup", "nightly")
    assert files_containing(w.repo_dir, SECRET) == []


def test_planted_plain_bundle_with_a_downgraded_repo_json_writes_nothing(job_world):
    """The attack as found: repo.json says "none" and an unencrypted bundle is planted; the
    config restore created a set-uid root file outside config_paths."""
    w = job_world
    p = os.path.join(w.repo_root, "repo.json")
    doc = read_json(p)
    doc["encryption"] = "none"
    write_json(p, doc)
    evil = os.path.join(w.tmp, "outside", "suid-root")
    snap = "20990101T000000Z-config"
    data = craft_bundle([{"path": evil, "data": b"#!/bin/sh\nid\n", "mode": 0o4755, "uid": 0}],
                        sealer=crypto.PlainSealer(), context=f"{doc['id']}|bundle|{snap}".encode())
    with open(os.path.join(w.repo_root, "config", f"{snap}.bundle"), "wb") as f:
        f.write(data)
    r = w.run("restore", "--target", "local", "--what", "config", "--overwrite")
    line = one_line(r)
    assert r.code in (4, 7), (r.code, line)
    assert not os.path.lexists(evil)
    assert not os.path.lexists(os.path.dirname(evil))


def test_planted_plain_bundle_in_an_encrypted_repository_is_damage(job_world):
    w = job_world
    snap = "20990101T000000Z-config"
    evil = os.path.join(w.tmp, "etc", "postfix", "planted.cf")
    data = craft_bundle([{"path": evil, "data": b"relayhost = [evil.example]\n"}],
                        sealer=crypto.PlainSealer(), context=f"{repo_id(w)}|bundle|{snap}".encode())
    with open(os.path.join(w.repo_root, "config", f"{snap}.bundle"), "wb") as f:
        f.write(data)
    r = w.run("restore", "--target", "local", "--what", "config", "--overwrite")
    line = one_line(r)
    assert r.code == 4, (r.code, line)
    assert "not encrypted" in line
    assert not os.path.lexists(evil)
    r = w.run("verify", "--target", "local", "--read-data")
    assert r.code == 4 and "not encrypted" in r.err


def test_config_restore_stays_inside_config_paths_and_drops_setuid(job_world):
    """Even a bundle sealed with the repository's own key (a compromised writer) cannot make
    a config restore write outside config_paths or create set-uid/set-gid files."""
    w = job_world
    repo = open_repo(w)
    snap = "20990101T000000Z-config"
    inside = os.path.join(w.tmp, "etc", "postfix", "helper")
    outside = os.path.join(w.tmp, "outside", "cron-job")
    data = craft_bundle([
        {"path": inside, "data": b"#!/bin/sh\n", "mode": 0o6755, "uid": 0, "gid": 0},
        {"path": outside, "data": b"* * * * * root id\n", "mode": 0o644},
    ], sealer=repo.keys.bundle, context=f"{repo.id}|bundle|{snap}".encode())
    repo.t.put(f"config/{snap}.bundle", data)

    r = w.run("restore", "--target", "local", "--what", "config", "--overwrite", "--json")
    assert r.code == 1, r.err
    assert "outside" in r.err or "outside" in r.out
    assert not os.path.lexists(outside) and not os.path.lexists(os.path.dirname(outside))
    st = os.lstat(inside)
    assert stat.S_IMODE(st.st_mode) & 0o6000 == 0 and stat.S_IMODE(st.st_mode) & 0o755 == 0o755

    dest = os.path.join(w.tmp, "cfg")
    r = w.run("restore", "--target", "local", "--what", "config", "--to", dest)
    assert r.code == 1, r.err
    st = os.lstat(os.path.join(dest, inside.lstrip("/")))
    assert stat.S_IMODE(st.st_mode) & 0o6000 == 0


def test_new_machine_enrols_an_existing_repository_and_is_shown_what(job_world, tmp_path):
    w = job_world
    first = json.loads(w.ok("init", "local", "--json").out)
    newbox = World(tmp_path / "newbox")
    newbox.repo_dir = w.repo_dir
    newbox.passfile = w.passfile
    newbox.make_store()
    newbox.write_config()
    r = newbox.ok("init", "local", "--json")
    info = json.loads(r.out)
    assert info["created"] is False and info["enrolled"] is True
    assert info["repository"] == repo_id(w)
    assert info["fingerprint"] == first["fingerprint"] and len(info["fingerprint"].replace("-", "")) == 32
    assert info["created_at"] == read_json(os.path.join(w.repo_root, "repo.json"))["created"]
    assert info["newest_snapshot"] and info["newest_snapshot"]["id"] in [
        os.path.basename(c)[:-len(".catalog")] for c in w.chain_files(".catalog")]
    text = newbox.ok("init", "local").out
    assert info["fingerprint"] in text and info["repository"] in text and info["newest_snapshot"]["id"] in text
    newbox.ok("restore", "--target", "local", "--to", os.path.join(newbox.tmp, "restored"))


def test_old_enrolment_trusts_on_first_use_then_pins_the_key(job_world):
    """A machine enrolled by an older dmbackup has no fingerprint: the first unlock records it;
    from then on a different key (made by someone who knows the passphrase) is refused."""
    w = job_world
    os.unlink(os.path.join(w.state, "trust.json"))          # as an older dmbackup left state_dir
    w.ok("backup", "nightly")
    rec = read_json(os.path.join(w.state, "trust.json"))["local"][repo_id(w)]
    assert rec["fingerprint"] and rec["mode"] == "repokey"
    keyfile = os.path.join(w.repo_root, "keys", "master.json")
    with open(keyfile, "wb") as f:
        f.write(crypto.wrap_master(os.urandom(64), PASSPHRASE.encode(), repo_id(w)))
    r = w.run("backup", "nightly")
    line = one_line(r)
    assert r.code == 7, (r.code, line)
    r = w.run("restore", "--target", "local", "--to", os.path.join(w.tmp, "out"))
    assert r.code == 7, r.err


def test_config_mode_none_on_an_encrypted_enrolment_is_refused(job_world):
    w = job_world
    w.write_config(w.extra, encryption='mode = "none"')
    r = w.run("backup", "nightly")
    line = one_line(r)
    assert r.code == 7, (r.code, line)
    assert "encryption" in line
    assert files_containing(w.repo_dir, SECRET) == []
