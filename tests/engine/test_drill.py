"""Restore drills (`verify --restore-drill`, `drill_after`): one mailbox restored to scratch and checked.

Everything is real: the sample store, a dir target, the CLI in-process, Dovecot's own doveadm
(where installed) opening the restored folders, an SMTP relay (aiosmtpd) for the failure mail.
Defects are planted the way a failing disk makes them: one byte of a volume changed on disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap

import pytest

from dmbackup.context import App
from dmbackup.config import load
from dmbackup.engine.backup import open_repository
from dmbackup.log import Logger
from tests.engine.forge import forge, some_file_entry
from tests.world import World

DOVEADM = shutil.which("doveadm") is not None
AS_ROOT = os.geteuid() == 0
needs_dovecot = pytest.mark.skipif(not (DOVEADM and AS_ROOT),
                                   reason="Dovecot's own check needs doveadm and root (vmail uid 5000)")
SAMPLE_MAILBOXES = ["anna@dom1.example.it", "mario@dom1.example.it", "anna@example.it", "mario@example.it"]


def valid_uidlists(store: str) -> None:
    """Give every dovecot-uidlist the 128-bit mailbox GUID Dovecot 2.3 writes.

    The sample generator writes a 64-bit one, which Dovecot rejects ("Broken file ... Invalid
    mailbox GUID") and then gives the folder a new UIDVALIDITY; a store Dovecot wrote has valid
    ones. test_rejected_uidlist_is_a_warning keeps the sample as it is."""
    for dp, _, fns in os.walk(store):
        if "dovecot-uidlist" in fns:
            p = os.path.join(dp, "dovecot-uidlist")
            with open(p, "rb") as f:
                head, sep, rest = f.read().partition(b"\n")
            head = re.sub(rb" G([0-9a-f]{16})$", lambda m: b" G" + m.group(1) * 2, head)
            with open(p, "wb") as f:
                f.write(head + sep + rest)


def scratch_dirs(w) -> list[str]:
    return [n for n in os.listdir(w.state) if n.startswith("drill-")] if os.path.isdir(w.state) else []


def drill(w, *args):
    r = w.run("verify", "--restore-drill", "--json", *args)
    assert "Traceback" not in r.err
    return r, (json.loads(r.out) if r.out.strip() else None)


def mailbox_files(store: str, mailbox: str) -> tuple[int, int]:
    user, domain = mailbox.split("@")
    n = size = 0
    for dp, _, fns in os.walk(os.path.join(store, domain, user)):
        for fn in fns:
            p = os.path.join(dp, fn)
            if not os.path.islink(p):
                n += 1
                size += os.path.getsize(p)
    return n, size


def plant_defect(w, mailbox: str, *, big: bool = False) -> tuple[str, str]:
    """Change one byte, on disk, inside a stored block of ``mailbox`` in the newest snapshot;
    returns (snapshot id, path of the message whose block it is). ``big``: a block in the middle
    of the mailbox's largest message, which that message fills alone (blocks are 4 MiB; small
    messages share theirs, so a hit there damages several files, often the whole mailbox)."""
    user, domain = mailbox.split("@")
    app = App(load(w.config), log=Logger(None))
    target = app.target("local")
    with target:
        repo = open_repository(app, target, "local", require_enrolled=False)
        ref = repo.snapshots()[-1]
        rows, _ = repo.catalog_body(ref)
        want = f"{domain}/{user}/Maildir/cur" if big else f"{domain}/{user}/Maildir/.Sent/cur"
        row = next(r for r in rows if r.dir == want)
        files = [e for e in repo.page(ref.chain, row) if e.type == "f" and e.size]
        e = max(files, key=lambda e: len(e.extents)) if big else files[0]
        if big:
            assert len(e.extents) >= 3, "the test needs a message larger than two blocks"
        vol, voff, vlen, _, _ = e.extents[len(e.extents) // 2]
        path = os.path.join(w.repo_root, "chains", ref.chain, vol)
        with open(path, "r+b") as f:
            f.seek(voff + vlen // 2)
            b = f.read(1)
            f.seek(voff + vlen // 2)
            f.write(bytes([b[0] ^ 0x5A]))
        return ref.id, f"{row.dir}/{e.name}"


def status_json(w) -> dict:
    r = w.run("status", "--json")
    assert r.code in (0, 1), r.err
    return json.loads(r.out)


@pytest.fixture
def healthy(ready):
    """A ready world whose store Dovecot reads without complaint, backed up once."""
    valid_uidlists(ready.store)
    ready.ok("backup", "--target", "local")
    return ready


def test_drill_passes_on_a_healthy_repository(healthy):
    w = healthy
    snap = [s for s in json.loads(w.ok("snapshots", "--json").out) if s["kind"] != "config"][-1]["id"]
    r, d = drill(w, "--mailbox", "mario@example.it")
    assert r.code == 0, r.err
    assert d["result"] == "ok" and d["problems"] == [] and d["warnings"] == []
    assert d["snapshot"] == snap and d["mailbox"] == "mario@example.it" and d["picked"] == "asked"
    n, size = mailbox_files(w.store, "mario@example.it")
    assert (d["files"], d["bytes"]) == (n, size)        # every file, with the 3 MB attachment
    assert d["links"] == 1 and d["dirs"] > 20
    assert d["scratch"].startswith(os.path.join(w.state, "drill-")) and d["scratch_removed"] is True
    assert scratch_dirs(w) == []
    if DOVEADM and AS_ROOT:
        # INBOX, Sent, Drafts, Trash, Archivio, Archivio/2024, Posta inviàta, Empty folder
        assert d["dovecot"] == "checked" and d["folders"] == 8
    # the plain text summary says what was drilled
    r = w.run("verify", "--restore-drill", "--mailbox", "mario@example.it")
    assert r.code == 0, r.err
    assert snap in r.out and "mario@example.it" in r.out and f"{n} file(s)" in r.out
    t = {t["name"]: t for t in status_json(w)["targets"]}["local"]["last_drill"]
    assert (t["result"], t["mailbox"], t["snapshot"], t["files"], t["job"]) == ("ok", "mario@example.it", snap, n, None)


def test_round_robin_picks_the_next_mailbox_each_run(healthy):
    w = healthy
    picked = []
    for _ in range(5):
        r, d = drill(w)
        assert r.code == 0, r.err
        assert d["picked"] == "round-robin"
        picked.append(d["mailbox"])
    assert picked[:4] == SAMPLE_MAILBOXES                # every mailbox once, in a stable order
    assert picked[4] == picked[0]                        # then around again
    # a drill of a named mailbox does not move the rotation on
    drill(w, "--mailbox", "mario@example.it")
    assert drill(w)[1]["mailbox"] == picked[1]
    assert scratch_dirs(w) == []


def test_scratch_left_by_a_killed_drill_is_removed(healthy):
    w = healthy
    dead = subprocess.Popen(["true"])
    dead.wait()                                          # its pid names no process any more
    left = os.path.join(w.state, f"drill-{dead.pid}-x1/tree/example.it/anna/Maildir/cur")
    os.makedirs(left)
    os.chmod(os.path.dirname(left), 0o500)               # as a restored directory may be
    live = os.path.join(w.state, f"drill-{os.getppid()}-x2")
    os.makedirs(live)
    r, d = drill(w)
    assert r.code == 0, r.err
    assert scratch_dirs(w) == [os.path.basename(live)]   # a running drill's copy is left alone


def test_planted_defect_is_damage_naming_snapshot_mailbox_and_file(tmp_path):
    w = World(tmp_path)
    w.make_store(big_bytes=9 << 20)          # mario@example.it's first message spans three blocks
    w.write_config()
    w.ok("init", "local")
    valid_uidlists(w.store)
    w.ok("backup", "--target", "local")
    snap, path = plant_defect(w, "mario@example.it", big=True)
    r, d = drill(w, "--mailbox", "mario@example.it")
    assert r.code == 4, r.err
    # exactly that message, nothing else of the mailbox: every other file was restored and checked
    assert d["result"] == "damage" and d["damaged_files"] == [path]
    assert len(d["problems"]) == 1 and snap in d["problems"][0] and "failed authentication" in d["problems"][0]
    assert d["files"] == mailbox_files(w.store, "mario@example.it")[0]
    assert d["scratch_removed"] is True and scratch_dirs(w) == []
    # without --json: one line that says what, where and what to do
    r = w.run("--quiet", "verify", "--restore-drill", "--mailbox", "mario@example.it")
    assert r.code == 4 and "Traceback" not in r.err
    assert r.err.strip().splitlines() == [r.err.strip()]
    line = r.err.strip()
    assert line.startswith("dmbackup: restore drill of mario@example.it from snapshot " + snap)
    assert "found damage" in line and path in line and "dmbackup verify --read-data" in line
    t = {t["name"]: t for t in status_json(w)["targets"]}["local"]["last_drill"]
    assert (t["result"], t["exit_code"], t["mailbox"], t["snapshot"]) == ("damage", 4, "mario@example.it", snap)
    assert len(t["problems"]) == 1 and path in t["problems"][0]
    # a mailbox whose blocks were not hit still passes
    r, d = drill(w, "--mailbox", "anna@dom1.example.it")
    assert r.code == 0, r.err
    assert scratch_dirs(w) == []


def test_damaged_shared_block_names_every_file_it_held(healthy):
    w = healthy
    snap, path = plant_defect(w, "anna@dom1.example.it")
    r, d = drill(w, "--mailbox", "anna@dom1.example.it")
    assert r.code == 4, r.err
    assert d["result"] == "damage" and path in d["damaged_files"]
    assert len(d["damaged_files"]) == len(d["problems"]) > 1
    assert all(p.startswith(snap + ": dom1.example.it/anna/") for p in d["problems"])
    assert d["dovecot"].startswith("not asked") or d["folders"] is not None
    assert scratch_dirs(w) == []


@needs_dovecot
def test_folder_dovecot_cannot_open_is_damage(ready):
    w = ready
    valid_uidlists(w.store)
    # root-owned cur/: the files are all there, but Dovecot (as the vmail uid) cannot list them
    cur = os.path.join(w.store, "example.it", "anna", "Maildir", ".Sent", "cur")
    os.chown(cur, 0, 0)
    w.ok("backup", "--target", "local")
    r, d = drill(w, "--mailbox", "anna@example.it")
    assert r.code == 4, r.err
    assert d["dovecot"] == "checked" and d["folders"] == 7
    assert [p for p in d["problems"] if "Dovecot cannot open folder 'Sent'" in p]
    assert "example.it/anna/Maildir/.Sent" in d["damaged_files"]
    assert scratch_dirs(w) == []


@needs_dovecot
def test_rejected_uidlist_is_a_warning(ready):
    """dovecot-uidlist files with a 64-bit mailbox GUID (as the sample generator once wrote them):
    Dovecot rejects them and gives the folder a new UIDVALIDITY, which the drill reports."""
    w = ready
    for dp, _, fns in os.walk(w.store):
        if "dovecot-uidlist" in fns:
            p = os.path.join(dp, "dovecot-uidlist")
            with open(p, "rb") as f:
                head, sep, rest = f.read().partition(b"\n")
            with open(p, "wb") as f:
                f.write(re.sub(rb" G([0-9a-f]{16})[0-9a-f]{16}$", rb" G\1", head) + sep + rest)
    w.ok("backup", "--target", "local")
    r, d = drill(w, "--mailbox", "anna@example.it")
    assert r.code == 1, r.err
    assert d["result"] == "ok" and d["problems"] == []
    assert any("dovecot-uidlist of folder 'INBOX'" in x and "new UIDVALIDITY" in x and "Invalid mailbox GUID" in x
               for x in d["warnings"])
    assert scratch_dirs(w) == []


def test_drill_after_in_a_job_and_its_result_in_status(ready, smtp_factory):
    w = ready
    valid_uidlists(w.store)
    server = smtp_factory()
    pw = os.path.join(w.tmp, "smtp.pw")
    with open(pw, "w") as f:
        f.write(server.password + "\n")
    os.chmod(pw, 0o600)
    w.write_config(textwrap.dedent(f"""
        [jobs.nightly]
        target = "local"
        schedule = "daily at 02:30"
        verify_after = "quick"
        drill_after = true
        [notify]
        to = ["admin@example.test"]
        from = "dmbackup@mx.test"
        smtp_host = "127.0.0.1"
        smtp_port = {server.port}
        username = "{server.username}"
        password_file = "{pw}"
        ca_file = "{server.cert_file}"
    """))
    r = w.run("backup", "nightly", "--json")
    assert r.code == 0, r.err
    job = json.loads(r.out)
    first = job["drill"]
    assert first["result"] == "ok" and first["snapshot"] == job["snapshot_id"] and first["job"] == "nightly"
    report = status_json(w)
    j = {j["name"]: j for j in report["jobs"]}["nightly"]
    assert j["drill_after"] is True and j["result"] == "ok"
    assert j["last_drill"]["result"] == "ok" and j["last_drill"]["snapshot"] == job["snapshot_id"]
    assert j["last_drill"]["mailbox"] == first["mailbox"] and j["last_drill"]["files"] == first["files"] > 0
    t = {t["name"]: t for t in report["targets"]}["local"]
    assert t["last_drill"] == j["last_drill"]
    assert server.messages == []                          # a good run is not mailed

    # the next run drills the next mailbox; its stored data took a hit on the disk. The
    # incremental stores nothing new, the quick verify only checks sizes: the drill finds it.
    nxt = SAMPLE_MAILBOXES[(SAMPLE_MAILBOXES.index(first["mailbox"]) + 1) % len(SAMPLE_MAILBOXES)]
    _, path = plant_defect(w, nxt)
    r = w.run("backup", "nightly", "--json")
    assert r.code == 4, r.err
    job = json.loads(r.out)
    assert job["status"] == "failed" and job["exit_code"] == 4
    assert "restore drill of " + nxt in job["error"] and "found damage" in job["error"]
    assert job["drill"]["mailbox"] == nxt and job["drill"]["snapshot"] == job["snapshot_id"]
    assert path in job["drill"]["damaged_files"]
    j = {j["name"]: j for j in status_json(w)["jobs"]}["nightly"]
    assert j["failed"] and j["last_run"]["exit_code"] == 4
    assert j["last_drill"]["result"] == "damage" and j["last_drill"]["mailbox"] == nxt
    user, domain = nxt.split("@")
    assert j["last_drill"]["problems"] and all(f"{domain}/{user}/" in p for p in j["last_drill"]["problems"])
    assert len(server.messages) == 1                       # the normal failure path: one mail
    body = server.messages[0].data.decode("utf-8", "replace")
    assert "nightly" in body and "restore drill of " + nxt in body
    assert scratch_dirs(w) == []


def test_drill_that_cannot_run_is_recorded_as_error(healthy):
    w = healthy
    os.rename(w.repo_dir, w.repo_dir + ".unplugged")
    r = w.run("--quiet", "verify", "--restore-drill")
    assert r.code == 7 and len(r.err.strip().splitlines()) == 1 and r.err.startswith("dmbackup: ")
    t = {t["name"]: t for t in status_json(w)["targets"]}["local"]
    assert t["available"] is False
    assert t["last_drill"]["result"] == "error" and t["last_drill"]["exit_code"] == 7
    assert t["last_drill"]["problems"] and t["last_drill"]["mailbox"] is None
    assert scratch_dirs(w) == []


def test_what_the_restore_leaves_out_on_purpose_is_not_damage(healthy):
    """A snapshot as older releases wrote some: a Dovecot lock file captured, and a message
    stored under two names (new/ and cur/). The restore leaves the lock file out and restores
    the message once, with a warning; the drill holds it to exactly that."""
    w = healthy
    real = some_file_entry(w)
    ids = 5000 if AS_ROOT else os.geteuid()

    def fe(name):
        return [name, "f", 0o600, ids, ids, real[5], real[6], 0, real[8], real[9]]

    def de(name):
        return [name, "d", 0o700, ids, ids, real[5], 0, 0, None, None]

    md = "example.it/anna/Maildir"
    snap = forge(w, {
        "": [de("example.it")], "example.it": [de("anna")], "example.it/anna": [de("Maildir")],
        md: [de("cur"), de("new"), de("tmp"), fe("dovecot-uidlist.lock")],
        f"{md}/cur": [fe("1793000000.M1P1.mail:2,S")],
        f"{md}/new": [fe("1793000000.M1P1.mail")],
    })
    r, d = drill(w, snap, "--mailbox", "anna@example.it")
    assert r.code == 1, r.err
    assert d["snapshot"] == snap and d["result"] == "ok" and d["problems"] == []
    assert d["files"] == 1 and d["bytes"] == real[6]
    assert any("two names" in x for x in d["warnings"])
    if DOVEADM and AS_ROOT:
        assert d["folders"] == 1
    assert scratch_dirs(w) == []


@pytest.mark.skipif(not AS_ROOT, reason="mounts a small tmpfs")
def test_no_room_for_the_copy_is_refused_before_writing(healthy):
    w = healthy
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", w.state], check=True)
    try:
        r = w.run("--quiet", "verify", "--restore-drill", "--mailbox", "anna@example.it")
        assert r.code == 3 and len(r.err.strip().splitlines()) == 1
        assert "needs about" in r.err and w.state in r.err and "nothing was written" in r.err
        assert scratch_dirs(w) == []
        t = {t["name"]: t for t in status_json(w)["targets"]}["local"]["last_drill"]
        assert t["result"] == "error" and t["exit_code"] == 3 and t["mailbox"] == "anna@example.it"
    finally:
        subprocess.run(["umount", w.state], check=True)


def test_usage_errors(healthy):
    w = healthy
    r = w.run("verify", "--mailbox", "anna@example.it")
    assert r.code == 2 and "--restore-drill" in r.err
    r = w.run("verify", "--restore-drill", "--mailbox", "nobody@example.it")
    assert r.code == 2 and "nobody@example.it is not in snapshot" in r.err and "anna@example.it" in r.err
    r = w.run("verify", "--restore-drill", "--mailbox", "not-an-address")
    assert r.code == 2 and "USER@DOMAIN" in r.err
    r = w.run("verify", "--restore-drill", "--read-data")
    assert r.code == 2
    r = w.run("--quiet", "verify", "--mailbox", "x@y")
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    assert scratch_dirs(w) == []


@pytest.mark.parametrize("value, what, expect", [
    ('"yes"', "mail", "expected true or false"),
    ("1", "mail", "expected true or false"),
    ("true", "config", "needs what = \"mail\""),
])
def test_bad_drill_after_is_a_config_error(world, value, what, expect):
    w = world
    w.write_config(f'[jobs.nightly]\nwhat = "{what}"\ntarget = "local"\ndrill_after = {value}\n')
    r = w.run("--quiet", "check-config")
    assert r.code == 2
    assert r.err.startswith(f"dmbackup: {w.config}: jobs.nightly.drill_after: ") and expect in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
