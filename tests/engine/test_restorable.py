"""Every snapshot that verify accepts restores, and a restore never gives up on the whole tree.

- A catalog with a name twice in a directory, or one message under two names in a Maildir
  folder (what releases before the capture fix could write under load), is damage to verify
  (exit 4, naming the paths); restore restores one copy, warns (exit 1), and everything else
  is byte-identical.
- A damaged block costs only the files in it: the rest is restored, --json lists what was not,
  exit 4.
- A restore killed half way (SIGKILL) and run again with --resume gives the same tree as an
  uninterrupted one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

from tests.engine import mailsim
from tests.engine.forge import forge, open_repo
from tests.world import diff_trees, tree

INBOX = "example.it/anna/Maildir"


def _parent_pages(world) -> dict[str, list[list]]:
    repo = open_repo(world)
    ref = repo.snapshots()[-1]
    rows, _ = repo.catalog_body(ref)
    return {row.dir: [e.encode() for e in repo.page(ref.chain, row)] for row in rows}


def _forge_duplicates(world) -> tuple[str, str, str]:
    pages = _parent_pages(world)
    cur = pages[f"{INBOX}/cur"]
    twice = next(e for e in cur if e[1] == "f")
    cur.append(list(twice))                              # one name twice in cur/
    arch_cur = pages[f"{INBOX}/.Archivio/cur"]
    msg = next(e for e in arch_cur if e[1] == "f")
    other = list(msg)
    other[0] = msg[0].split(":", 1)[0]                   # the same message in new/, without flags
    pages[f"{INBOX}/.Archivio/new"].append(other)
    return forge(world, pages), f"{INBOX}/cur/{twice[0]}", msg[0].split(":", 1)[0]


def test_verify_reports_duplicate_names_and_restore_still_restores_everything(ready, tmp_path):
    ready.ok("backup", "--target", "local")
    want = tree(ready.store)
    snap, dup_path, base = _forge_duplicates(ready)

    r = ready.run("verify", "--json")
    assert r.code == 4, r.err
    rep = json.loads(r.out)
    assert snap in rep["damaged_snapshots"]
    text = " ".join(rep["problems"])
    assert "name listed twice in one directory" in text and dup_path in text
    assert "message under two names in one Maildir folder" in text and base in text
    # the snapshot before the forged one is fine and still verifies alone
    assert len(rep["damaged_snapshots"]) == 1

    out = tmp_path / "out"
    r = ready.run("restore", snap, "--to", str(out), "--json")
    assert r.code == 1, r.err
    res = json.loads(r.out)
    assert res["failed"] == [] and len(res["warnings"]) == 2
    assert diff_trees(want, tree(str(out))) == []


def test_damaged_block_costs_only_its_files(ready, tmp_path):
    ready.ok("backup", "--target", "local")
    want = tree(ready.store)
    vols = [v for v in ready.chain_files() if re.search(r"\.v\d{4}$", v)]
    # flip a byte in the middle of the last volume: some blocks fail their tag
    with open(vols[-1], "r+b") as f:
        f.seek(os.path.getsize(vols[-1]) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    out = tmp_path / "out"
    r = ready.run("restore", "--to", str(out), "--json")
    assert r.code == 4, r.err
    res = json.loads(r.out)
    lost = {os.fsencode(f["path"]) for f in res["failed"]}
    assert lost and all(f["damage"] for f in res["failed"])
    assert res["failed_count"] == len(res["failed"])
    got = tree(str(out))
    # everything not listed is there and identical (directory mtimes aside: files are missing)
    for k, v in want.items():
        if k in lost or v[0][0] == "d":
            continue
        assert got.get(k) == v, k
    assert not any(k in got for k in lost)
    assert "restore incomplete" in r.err and "dmbackup:" in r.err


def test_resume_after_sigkill_at_half_gives_the_same_tree(world, tmp_path):
    sim = mailsim.build(world.store, users=4, per_folder=300)
    assert sim
    world.write_config()
    world.ok("init", "local")
    world.ok("backup", "--target", "local")
    want = tree(world.store)
    total = sum(1 for v in want.values() if v[0][0] == "f")

    out = str(tmp_path / "out")
    p = world.spawn("--quiet", "restore", "--target", "local", "--to", out, "--uid-gap", "0")
    killed_at = None
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline:
        n = sum(len(fns) for _, _, fns in os.walk(out)) if os.path.isdir(out) else 0
        if n >= total // 2:
            p.send_signal(signal.SIGKILL)
            killed_at = n
            break
        time.sleep(0.002)
    _, err = p.communicate(timeout=60)
    assert killed_at is not None and p.returncode == -9, f"the restore was not killed half way: {p.returncode} {err}"
    assert killed_at < total

    r = world.run("restore", "--target", "local", "--to", out, "--uid-gap", "0")    # not empty: refused
    assert r.code == 3 and "--resume" in r.err
    r = world.run("restore", "--target", "local", "--to", out, "--resume", "--uid-gap", "0", "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    links = sum(1 for v in want.values() if v[0][0] == "l")     # counted above, never "skipped"
    assert res["skipped_complete"] >= killed_at - links - 2     # at most a file or two in flight
    assert diff_trees(want, tree(out)) == []

    uninterrupted = str(tmp_path / "again")
    world.ok("restore", "--target", "local", "--to", uninterrupted, "--uid-gap", "0")
    assert tree(uninterrupted) == tree(out)


def test_a_folder_with_mail_that_has_no_uid_gets_its_next_uid_raised(ready, tmp_path):
    """Mail in new/ that the uidlist gives no UID (Postfix delivered it, or LDA found the
    uidlist locked): a Dovecot serving the restored folder would number it in its own order,
    reusing UIDs the live server gave other messages. Only that folder's next UID is raised;
    every other uidlist is restored byte for byte."""
    folder = os.path.join(ready.store, "example.it/anna/Maildir/.Archivio")
    with open(os.path.join(folder, "new", "1799999999.M1P1.postfix,S=42"), "wb") as f:
        f.write(b"Subject: delivered by postfix\r\nMessage-ID: <pf@x>\r\n\r\nhello\r\n")
    want = tree(ready.store)
    ready.ok("backup", "--target", "local")
    out = tmp_path / "out"
    res = json.loads(ready.ok("restore", "--to", str(out), "--json").out)
    assert res["uid_gap"] == "auto" and res["uid_gap_folders"] == 1
    got = tree(str(out))
    changed = [k for k in want if want[k] != got.get(k)]
    assert changed == [b"example.it/anna/Maildir/.Archivio/dovecot-uidlist"], changed
    with open(os.path.join(folder, "dovecot-uidlist"), "rb") as f:
        n_live = int(f.readline().split(b" N")[1].split()[0])
    with open(out / "example.it/anna/Maildir/.Archivio/dovecot-uidlist", "rb") as f:
        assert int(f.readline().split(b" N")[1].split()[0]) == n_live + 1000
    # --uid-gap 0: an exact copy
    exact = tmp_path / "exact"
    ready.ok("restore", "--to", str(exact), "--uid-gap", "0")
    assert diff_trees(want, tree(str(exact))) == []
