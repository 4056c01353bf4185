"""Rollback (issue 13, item 3): an older copy of the repository put back, or its newest
catalogs or config bundles deleted, is noticed. ``state_dir`` records per target and
repository the newest snapshot (chain number and sequence) seen; ``verify`` then exits 4,
a restore of "the newest" refuses to hand back an older one in silence, and the next job
fails with exit 7 through the ordinary failure path (one notification mail). ``init``
accepts the older state when that was deliberate.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import subprocess

from tests.security.conftest import JOB, one_line


def _notify(w, server) -> str:
    pw = os.path.join(w.tmp, "relay.pw")
    with open(pw, "w") as f:
        f.write(server.password + "\n")
    os.chmod(pw, 0o600)
    return (f'[notify]\nto = ["admin@example.test"]\nfrom = "dmbackup@mx.test"\nsmtp_host = "127.0.0.1"\n'
            f'smtp_port = {server.port}\nsecurity = "starttls"\nusername = "{server.username}"\n'
            f'password_file = "{pw}"\nca_file = "{server.cert_file}"\n')


def _job_world(world, server=None):
    extra = JOB.replace("keep_chains = 1", "keep_chains = 4") + (_notify(world, server) if server else "")
    world.write_config(extra)
    world.ok("init", "local")
    world.ok("backup", "nightly")
    return world


def _save(w) -> str:
    saved = os.path.join(w.tmp, "saved-copy")
    subprocess.run(["cp", "-a", w.repo_dir, saved], check=True)
    return saved


def _put_back(w, saved: str) -> None:
    shutil.rmtree(w.repo_dir)
    subprocess.run(["cp", "-a", saved, w.repo_dir], check=True)


def test_an_older_copy_put_back_is_reported_everywhere(world, smtp_factory):
    server = smtp_factory()
    w = _job_world(world, server)
    saved = _save(w)
    w.ok("backup", "nightly")
    _put_back(w, saved)

    r = w.run("snapshots", "--target", "local")
    assert "older than" in r.err, r.err
    r = w.run("verify", "--target", "local")
    assert r.code == 4 and "older than" in r.err, (r.code, r.err)
    r = w.run("restore", "--target", "local", "--to", os.path.join(w.tmp, "out"))
    line = one_line(r)
    assert r.code == 4 and "older than" in line, (r.code, line)
    before = sorted(os.listdir(os.path.join(w.repo_root, "chains")))

    r = w.run("backup", "nightly")
    line = one_line(r)
    assert r.code == 7 and "older than" in line and "dmbackup init local" in line, (r.code, line)
    assert sorted(os.listdir(os.path.join(w.repo_root, "chains"))) == before
    runs = json.load(open(os.path.join(w.state, "runs.json")))
    assert runs["nightly"]["last_run"]["exit_code"] == 7
    assert len(server.messages) == 1
    body = email.message_from_bytes(server.messages[0].data, policy=email.policy.default).get_content()
    assert "older than" in body and "Exit code:  7" in body

    # deliberate: the administrator accepts the older copy, and backups go on
    w.ok("init", "local")
    w.ok("backup", "nightly")
    w.ok("verify", "--target", "local")


def test_deleting_the_newest_catalog_is_noticed(world):
    w = _job_world(world)
    w.ok("backup", "nightly")
    newest = w.chain_files(".catalog")[-1]
    os.unlink(newest)
    r = w.run("verify", "--target", "local")
    assert r.code == 4 and "older than" in r.err, (r.code, r.err)
    r = w.run("backup", "nightly")
    assert r.code == 7 and "older than" in one_line(r)


def test_deleting_the_newest_config_bundle_is_noticed(world):
    w = _job_world(world)
    w.ok("backup", "--target", "local", "--what", "config")
    cfg = os.path.join(w.repo_root, "config")
    saved = _save(w)
    w.ok("backup", "--target", "local", "--what", "config")
    newest = sorted(n for n in os.listdir(cfg) if n.endswith("-config.bundle"))[-1]
    os.unlink(os.path.join(cfg, newest))
    r = w.run("restore", "--target", "local", "--what", "config", "--to", os.path.join(w.tmp, "c"))
    line = one_line(r)
    assert r.code == 4 and "older than" in line, (r.code, line)
    r = w.run("verify", "--target", "local")
    assert r.code == 4 and "older than" in r.err
    r = w.run("backup", "--target", "local", "--what", "config")
    assert r.code == 7 and "older than" in one_line(r)
    # the whole older copy put back: the same
    _put_back(w, saved)
    r = w.run("backup", "nightly")
    assert r.code == 7 and "older than" in one_line(r)
