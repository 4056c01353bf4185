"""Incremental chains: every snapshot restores its own moment; incrementals store little;
restoring one mailbox reads little; prune keeps what it must."""

import json
import os
import shutil

import pytest
import zstandard

from tests.engine import mailsim
from tests.world import diff_trees, tree


@pytest.fixture
def sim_world(ready):
    shutil.rmtree(ready.store)
    os.makedirs(ready.store)
    sim = mailsim.build(ready.store)
    return ready, sim


def snaps(w):
    return [r for r in json.loads(w.ok("snapshots", "--json").out) if r["kind"] != "config"]


def test_every_snapshot_restores_exactly_its_moment(sim_world):
    w, sim = sim_world
    moments = []
    for d in range(5):
        if d:
            mailsim.day(sim)
        moments.append(tree(w.store))
        w.ok("backup", "--target", "local")
    rows = snaps(w)
    assert [r["kind"] for r in rows] == ["full"] + ["incremental"] * 4
    for i, (r, want) in enumerate(zip(rows, moments)):
        by_id = os.path.join(w.tmp, f"by-id-{i}")
        w.ok("restore", r["id"], "--to", by_id)
        assert diff_trees(want, tree(by_id)) == [], r["id"]
        by_time = os.path.join(w.tmp, f"by-time-{i}")
        w.ok("restore", "--at", r["time"], "--to", by_time)
        assert diff_trees(want, tree(by_time)) == [], r["time"]
    # one file per base name: no message appears twice under two names
    for i in range(5):
        bases = {}
        for dp, _, fns in os.walk(os.path.join(w.tmp, f"by-id-{i}")):
            if os.path.basename(dp) in ("cur", "new"):
                for n in fns:
                    key = (os.path.dirname(dp), n.split(":")[0])
                    assert key not in bases, key
                    bases[key] = n
    w.ok("verify", "--read-data")


def test_flag_renames_and_moves_store_under_one_percent(ready):
    """A day of renames on a store of 1,440 messages (a snapshot's fixed cost is ~1.5 KB)."""
    w = ready
    shutil.rmtree(w.store)
    os.makedirs(w.store)
    sim = mailsim.build(w.store, per_folder=120)
    w.ok("backup", "--target", "local")
    renamed = mailsim.flag_renames(sim, 0.05) + mailsim.moves(sim, 0.005)
    r = json.loads(w.ok("backup", "--target", "local", "--json").out)
    assert r["kind"] == "incremental"
    ratio = r["stored_bytes"] / renamed
    print(f"renamed/moved {renamed} bytes; incremental stored {r['stored_bytes']} bytes ({ratio:.2%})")
    assert ratio < 0.01


def test_new_mail_stored_within_ten_percent_of_its_compressed_size(sim_world):
    w, sim = sim_world
    w.ok("backup", "--target", "local")
    new = mailsim.new_mail(sim, 0.05)
    compressed = len(zstandard.ZstdCompressor(level=3).compress(b"".join(new)))
    r = json.loads(w.ok("backup", "--target", "local", "--json").out)
    ratio = r["stored_bytes"] / compressed
    print(f"{len(new)} new messages, {compressed} bytes compressed together; stored {r['stored_bytes']} ({ratio:.3f}x)")
    assert ratio < 1.10


def _mailbox_stored_bytes(w, user_rel: str) -> int:
    """Distinct sealed block bytes that the mailbox's files use in the newest snapshot."""
    from tests.engine.forge import open_repo
    repo = open_repo(w)
    ref = repo.snapshots()[-1]
    rows, _ = repo.catalog_body(ref)
    blocks = {}
    for row in rows:
        if row.dir == user_rel or row.dir.startswith(user_rel + "/"):
            for e in repo.page(ref.chain, row):
                for vol, voff, vlen, _, _ in (e.extents or []) if e.type == "f" else []:
                    blocks[(vol, voff)] = vlen
    return sum(blocks.values())


def test_one_mailbox_restore_reads_less_than_twice_its_stored_size(sim_world):
    w, sim = sim_world
    w.ok("backup", "--target", "local")
    for _ in range(6):
        mailsim.day(sim)
        w.ok("backup", "--target", "local")
    assert [r["kind"] for r in snaps(w)] == ["full"] + ["incremental"] * 6
    user = sim.users[1]
    local, dom = user.split("@")
    stored = _mailbox_stored_bytes(w, f"{dom}/{local}")
    out = os.path.join(w.tmp, "one")
    res = json.loads(w.ok("restore", "--mailbox", user, "--to", out, "--json").out)
    print(f"mailbox stored {stored} bytes; restore fetched {res['bytes_fetched']} bytes "
          f"({res['bytes_fetched'] / stored:.2f}x)")
    assert res["bytes_fetched"] < 2 * stored
    want = {k: v for k, v in tree(w.store).items() if k.startswith(f"{dom}/{local}".encode())}
    got = {k: v for k, v in tree(out).items() if k.startswith(f"{dom}/{local}".encode())}
    assert diff_trees(want, got) == []
    assert sorted(os.listdir(out)) == [dom]


def test_folder_restore_by_imap_name(sim_world):
    w, sim = sim_world
    w.ok("backup", "--target", "local")
    user = sim.users[0]
    local, dom = user.split("@")
    out = os.path.join(w.tmp, "folder")
    w.ok("restore", "--mailbox", user, "--folder", "Posta inviàta", "--to", out)
    folder = os.path.join(out, dom, local, "Maildir", ".Posta invi&AOA-ta")
    src = os.path.join(w.store, dom, local, "Maildir", ".Posta invi&AOA-ta")
    assert diff_trees(tree(src), tree(folder)) == []
    assert sorted(os.listdir(os.path.join(out, dom, local, "Maildir"))) == [".Posta invi&AOA-ta"]
    out2 = os.path.join(w.tmp, "archivio")
    w.ok("restore", "--mailbox", user, "--folder", "Archivio/2024", "--to", out2)
    assert os.path.isdir(os.path.join(out2, dom, local, "Maildir", ".Archivio.2024", "cur"))
    out3 = os.path.join(w.tmp, "inbox")
    w.ok("restore", "--mailbox", user, "--folder", "INBOX", "--to", out3)
    md = os.path.join(out3, dom, local, "Maildir")
    assert set(os.listdir(md)) >= {"cur", "new", "tmp"} and not [n for n in os.listdir(md) if n.startswith(".")]
    r = w.run("restore", "--mailbox", "nobody@nowhere.it", "--to", os.path.join(w.tmp, "x"))
    assert r.code == 2 and "not in snapshot" in r.err


def test_full_every_starts_new_chains_and_prune_keeps_newest(sim_world):
    w, sim = sim_world
    with open(w.config, "a") as f:
        f.write('[jobs.nightly]\nwhat = "mail"\ntarget = "local"\nfull_every = 1\nkeep_chains = 2\nprune_after = false\n')
    for _ in range(6):
        mailsim.day(sim)
        w.ok("backup", "nightly")
    rows = snaps(w)
    assert [r["kind"] for r in rows] == ["full", "incremental"] * 3
    chains = sorted({r["chain"] for r in rows})
    assert len(chains) == 3
    before = sorted(os.listdir(os.path.join(w.repo_root, "chains")))
    dry = json.loads(w.ok("prune", "--dry-run", "--json").out)
    assert dry["deleted"] == [chains[0]] and dry["dry_run"]
    assert sorted(os.listdir(os.path.join(w.repo_root, "chains"))) == before
    res = json.loads(w.ok("prune", "--json").out)
    assert res["deleted"] == [chains[0]]
    assert {r["chain"] for r in snaps(w)} == set(chains[1:])
    w.ok("verify", "--read-data")
    # never the chain of the newest snapshot, even with keep 1
    res = json.loads(w.ok("prune", "--keep-chains", "1", "--json").out)
    assert res["kept"] == [chains[2]]


def test_prune_killed_at_every_point_keeps_every_kept_snapshot(sim_world, monkeypatch):
    w, sim = sim_world
    for i in range(4):
        mailsim.day(sim)
        w.ok("backup", "--target", "local", *(["--full"] if i % 2 == 0 else []))
    chains = sorted({r["chain"] for r in snaps(w)})
    kept = [r for r in snaps(w) if r["chain"] == chains[-1]]
    n_objects = len(os.listdir(os.path.join(w.repo_root, "chains", chains[0])))
    from dmbackup.targets.dir import DirTarget
    real_delete = DirTarget.delete

    class Killed(BaseException):
        pass

    for k in range(n_objects + 1):
        calls = {"n": 0}

        def dying_delete(self, name, k=k, calls=calls):
            if "/chains/" in name:
                if calls["n"] == k:
                    raise Killed()
                calls["n"] += 1
            return real_delete(self, name)

        monkeypatch.setattr(DirTarget, "delete", dying_delete)
        try:
            w.run("prune", "--keep-chains", "1")
        except Killed:
            pass
        monkeypatch.setattr(DirTarget, "delete", real_delete)
        lock = os.path.join(w.repo_root, "locks", "lock")
        if os.path.exists(lock):
            os.unlink(lock)       # a killed process's lock; here the same PID lives on
        assert [r for r in snaps(w) if r["chain"] == chains[-1]] == kept
        w.ok("verify", "--read-data")


def _age_dirs(root: str, seconds: int = 3600) -> None:
    t = os.stat(root).st_mtime - seconds
    for dp, dns, _ in os.walk(root):
        for d in dns:
            os.utime(os.path.join(dp, d), (t, t))


def test_unchanged_message_dirs_are_taken_over_and_changed_ones_are_not(sim_world):
    """The directory-mtime fast path: exact trees whether or not it is taken."""
    w, sim = sim_world
    _age_dirs(w.store)
    w.ok("backup", "--target", "local")
    r = json.loads(w.ok("backup", "--target", "local", "--json").out)
    n_msg_dirs = sum(1 for dp, _, _ in os.walk(w.store) if os.path.basename(dp) in ("cur", "new"))
    assert r["unchanged_dirs"] == n_msg_dirs          # nothing changed: every cur/ and new/ reused
    moments = []
    for _ in range(3):
        mailsim.flag_renames(sim, 0.01)                # touched dirs get a new mtime
        mailsim.new_mail(sim, 0.005)
        mailsim.expunges(sim, 0.003)
        moments.append(tree(w.store))
        r = json.loads(w.ok("backup", "--target", "local", "--json").out)
        assert 0 < r["unchanged_dirs"] < n_msg_dirs
        _age_dirs(w.store)                             # let the next run trust them again
    rows = snaps(w)[-3:]
    for i, (row, want) in enumerate(zip(rows, moments)):
        out = os.path.join(w.tmp, f"fast-{i}")
        # mailsim delivers without giving UIDs: --uid-gap 0 keeps the restore an exact copy
        w.ok("restore", row["id"], "--to", out, "--uid-gap", "0")
        got = tree(out)
        # directory mtimes were aged after the backup; compare everything else
        assert diff_trees({k: v for k, v in want.items() if v[0][0] != "d"},
                          {k: v for k, v in got.items() if v[0][0] != "d"}) == []


def _msg_dirs(root: str) -> set[str]:
    return {os.path.relpath(dp, root) for dp, _, _ in os.walk(root) if os.path.basename(dp) in ("cur", "new")}


def _count_fills(monkeypatch) -> list[str]:
    from dmbackup.source import mailstore

    filled: list[str] = []
    real = mailstore.fill

    def fill(scan):
        filled.append(scan.rel)
        real(scan)

    monkeypatch.setattr(mailstore, "fill", fill)
    return filled


def test_unchanged_message_dirs_are_listed_by_name_only(sim_world, monkeypatch):
    """A no-change incremental does not stat the messages of an unchanged cur/ or new/: it
    lists their names (the count must match the parent's page) and takes their bytes from
    state_dir's record of the parent snapshot. Files, bytes and the restore are exact."""
    w, sim = sim_world
    _age_dirs(w.store)
    full = json.loads(w.ok("backup", "--target", "local", "--json").out)
    msg_dirs = _msg_dirs(w.store)
    filled = _count_fills(monkeypatch)
    r = json.loads(w.ok("backup", "--target", "local", "--json").out)
    assert r["unchanged_dirs"] == len(msg_dirs)
    assert not msg_dirs & set(filled), sorted(msg_dirs & set(filled))[:5]
    assert (r["files"], r["bytes"]) == (full["files"], full["bytes"])
    # and again on top of the incremental (its record was written from the parent's)
    filled.clear()
    r2 = json.loads(w.ok("backup", "--target", "local", "--json").out)
    assert not msg_dirs & set(filled)
    assert (r2["files"], r2["bytes"]) == (full["files"], full["bytes"])
    want = tree(w.store)
    out = os.path.join(w.tmp, "names-only")
    w.ok("restore", r2["id"], "--to", out, "--uid-gap", "0")
    assert diff_trees({k: v for k, v in want.items() if v[0][0] != "d"},
                      {k: v for k, v in tree(out).items() if v[0][0] != "d"}) == []


@pytest.mark.parametrize("damage", ["missing", "other-snapshot", "other-page", "garbage"])
def test_message_dirs_are_stat_ed_when_the_local_record_does_not_fit(sim_world, monkeypatch, damage):
    """Without a record of the parent that fits its page table, every file is stat'ed again:
    the fast path never guesses a directory's bytes."""
    w, sim = sim_world
    _age_dirs(w.store)
    full = json.loads(w.ok("backup", "--target", "local", "--json").out)
    msg_dirs = _msg_dirs(w.store)
    [path] = [os.path.join(w.state, n) for n in os.listdir(w.state) if n.startswith("dirs-")]
    with open(path) as f:
        rec = json.load(f)
    if damage == "missing":
        os.unlink(path)
    else:
        if damage == "other-snapshot":
            rec["snapshot"] = "20200101T000000Z-full"
        elif damage == "other-page":
            for v in rec["dirs"].values():
                v[0] = "0" * 32
        with open(path, "w") as f:
            f.write("{not json" if damage == "garbage" else json.dumps(rec))
    filled = _count_fills(monkeypatch)
    r = json.loads(w.ok("backup", "--target", "local", "--json").out)
    assert msg_dirs <= set(filled)
    assert r["unchanged_dirs"] == len(msg_dirs)
    assert (r["files"], r["bytes"]) == (full["files"], full["bytes"])


def test_a_changed_message_dir_is_stat_ed_and_the_others_are_not(sim_world, monkeypatch):
    w, sim = sim_world
    _age_dirs(w.store)
    w.ok("backup", "--target", "local")
    msg_dirs = sorted(_msg_dirs(w.store))
    victim = next(d for d in msg_dirs if d.endswith("/cur") and os.listdir(os.path.join(w.store, d)))
    name = sorted(os.listdir(os.path.join(w.store, victim)))[0]
    os.rename(os.path.join(w.store, victim, name), os.path.join(w.store, victim, name.split(":")[0] + ":2,FS"))
    filled = _count_fills(monkeypatch)
    r = json.loads(w.ok("backup", "--target", "local", "--json").out)
    assert victim in filled and not (set(msg_dirs) - {victim}) & set(filled)
    assert r["unchanged_dirs"] == len(msg_dirs) - 1
    want = tree(w.store)
    out = os.path.join(w.tmp, "one-changed")
    w.ok("restore", r["id"], "--to", out, "--uid-gap", "0")
    assert diff_trees({k: v for k, v in want.items() if v[0][0] != "d"},
                      {k: v for k, v in tree(out).items() if v[0][0] != "d"}) == []


def test_a_no_change_incremental_reads_no_page_of_the_parent(sim_world, monkeypatch):
    """With the local record of the parent's directories, an unchanged store costs a listing:
    no page of the parent is read (message directories by mtime, the others by listing)."""
    from dmbackup.archive.repository import Repository

    w, sim = sim_world
    _age_dirs(w.store)
    full = json.loads(w.ok("backup", "--target", "local", "--json").out)
    read = []
    real = Repository.page
    monkeypatch.setattr(Repository, "page", lambda self, chain, row: (read.append(row.dir), real(self, chain, row))[1])
    r = json.loads(w.ok("backup", "--target", "local", "--json").out)
    assert read == []
    assert (r["files"], r["bytes"], r["unchanged_dirs"]) == (full["files"], full["bytes"], len(_msg_dirs(w.store)))
    assert r["stored_bytes"] < 20_000


def test_changed_dovecot_files_and_modes_are_captured_beside_recorded_dirs(sim_world):
    """Directories other than cur/ and new/ are taken over only when every entry's size, mtime,
    inode, mode and owner are those of the parent's page: a rewritten dovecot-uidlist, an
    appended index log, a chmod, a new file or a removed one are all captured."""
    w, sim = sim_world
    _age_dirs(w.store)
    w.ok("backup", "--target", "local")
    # folders without subfolders: a change in one never shows in the listing of another
    folders = sorted({os.path.dirname(d) for d in _msg_dirs(w.store)
                      if os.path.basename(os.path.dirname(d)).startswith(".")})
    assert len(folders) >= 4
    a, b, c, d = (os.path.join(w.store, f) for f in folders[:4])
    uidlist = os.path.join(a, "dovecot-uidlist")
    with open(uidlist, "rb") as f:
        data = f.read()
    st = os.stat(uidlist)
    with open(uidlist + ".new", "wb") as f:     # as Dovecot does: a new file renamed over
        f.write(data.replace(b"V", b"W", 1))
    os.rename(uidlist + ".new", uidlist)
    os.utime(uidlist, ns=(st.st_atime_ns, st.st_mtime_ns))     # same size and mtime, new inode
    with open(os.path.join(b, "dovecot.index.log"), "ab") as f:
        f.write(b"appended")
    os.chmod(os.path.join(c, "dovecot-uidlist"), 0o640)
    with open(os.path.join(d, "dovecot-keywords"), "w") as f:
        f.write("0 $Forwarded\n")
    os.unlink(os.path.join(d, "dovecot-uidlist"))
    want = tree(w.store)
    r = json.loads(w.ok("backup", "--target", "local", "--json").out)
    out = os.path.join(w.tmp, "recorded")
    w.ok("restore", r["id"], "--to", out, "--uid-gap", "0")
    got = tree(out)
    assert diff_trees({k: v for k, v in want.items() if v[0][0] != "d"},
                      {k: v for k, v in got.items() if v[0][0] != "d"}) == []


def test_disaster_restore_into_empty_live_store_raises_next_uid(ready):
    w = ready
    w.ok("backup", "--target", "local")
    want = tree(w.store)
    old = w.store + ".broken"
    os.rename(w.store, old)
    os.makedirs(w.store)
    r = w.run("restore", "--target", "local", "--overwrite")
    # no Dovecot serves this store: the restore is complete, and says what is left to do
    assert r.code == 1 and "dmbackup restore --resync" in r.err, r.err
    got = tree(w.store)
    uidlists = [k for k in want if k.endswith(b"dovecot-uidlist")]
    assert uidlists
    assert diff_trees({k: v for k, v in want.items() if k not in uidlists},
                      {k: v for k, v in got.items() if k not in uidlists}) == []
    for k in uidlists:
        with open(os.path.join(old, os.fsdecode(k)), "rb") as f:
            n_old = int(f.readline().split(b" N")[1].split()[0])
        with open(os.path.join(w.store, os.fsdecode(k)), "rb") as f:
            n_new = int(f.readline().split(b" N")[1].split()[0])
        with open(os.path.join(old, os.fsdecode(k)), "rb") as f:
            top = max([int(ln.split()[0]) for ln in f.read().splitlines()[1:] if ln[:1].isdigit()], default=0)
        assert n_new == max(n_old, top + 1) + 1000
    # a store that is not empty is refused, and left alone
    r = w.run("restore", "--target", "local", "--overwrite")
    assert r.code == 3 and "not empty" in r.err
    assert tree(w.store) == got


def test_catalog_tables_are_decoded_without_the_collector_and_it_comes_back(sim_world, monkeypatch):
    """A month of busy tables is tens of MB of JSON: the reader decodes a table with cyclic
    collection paused (it holds no cycles), and collection is on again afterwards, also when
    the table does not decode."""
    import gc

    from dmbackup.archive import reader
    from dmbackup.errors import CorruptObject
    from tests.engine.forge import open_repo

    w, sim = sim_world
    w.ok("backup", "--target", "local")
    mailsim.new_mail(sim, 0.05)
    w.ok("backup", "--target", "local")
    seen = []
    real = reader.open_catalog_body

    def spy(*a, **k):
        seen.append(gc.isenabled())
        return real(*a, **k)

    monkeypatch.setattr(reader, "open_catalog_body", spy)
    assert gc.isenabled()
    repo = open_repo(w)
    rows, _ = repo.catalog_body(repo.snapshots()[-1])
    assert rows and seen and not any(seen) and gc.isenabled()

    def broken(*a, **k):
        raise CorruptObject("catalog: damaged")

    monkeypatch.setattr(reader, "open_catalog_body", broken)
    repo = open_repo(w)
    with pytest.raises(CorruptObject):
        repo.catalog_body(repo.snapshots()[-1])
    assert gc.isenabled()


def _depths(w) -> list[int]:
    from tests.engine.forge import open_repo

    repo = open_repo(w)
    return [repo.table_depth(ref) for ref in repo.snapshots() if ref.header.kind != "config"]


def test_tables_of_changes_are_resolved_through_at_most_a_week_of_parents(sim_world, monkeypatch):
    """A snapshot's page table lists only the rows that changed since its parent, on top of the
    parent's table; every reader (the next backup, a restore, verify) resolves the tables back
    to the last whole one. On a busy server nearly every folder's row (its inline delta) changes
    every night: at a depth of 30 a day-30 incremental of the find bench parsed 30 tables, 73 MB
    of JSON. A whole table comes again after TABLE_MAX_DEPTH (7) tables of changes, and every
    snapshot still restores exactly its moment."""
    from dmbackup.archive import reader
    from dmbackup.engine.pages import TABLE_MAX_DEPTH

    assert TABLE_MAX_DEPTH == 7
    w, sim = sim_world
    moments = [tree(w.store)]
    w.ok("backup", "--target", "local")
    for _ in range(9):                  # one message in twenty changes flags every night
        mailsim.flag_renames(sim, 0.05)
        moments.append(tree(w.store))
        w.ok("backup", "--target", "local")
    assert _depths(w) == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    parsed = []
    real = reader.table_of_body         # a parsed body, from the catalog or the local cache
    monkeypatch.setattr(reader, "table_of_body", lambda *a, **k: parsed.append(a[-1]) or real(*a, **k))
    mailsim.flag_renames(sim, 0.05)
    w.ok("backup", "--target", "local")
    assert len(parsed) == 2             # the parent's table and the whole one it builds on
    for i, (r, want) in enumerate(zip(snaps(w), moments)):
        out = os.path.join(w.tmp, f"out-{i}")
        w.ok("restore", r["id"], "--to", out)
        assert diff_trees(want, tree(out)) == [], r["id"]
