"""Damage every kind of object in a repository, four ways (flip a byte, truncate, delete, swap
two objects of the same kind), and check what the administrator gets:

  * ``verify --read-data`` exits 4 and names the damaged object and the snapshots (and, for
    data, the files) it affects; a damaged key or repo.json gives one line naming it;
  * restoring what the damage does not touch still works and is exact (another chain, another
    mailbox of the same snapshot, a snapshot whose only damage is its index or config bundle);
  * never a traceback.

The repository (built once per module, copied for each case) has two chains: F1 (full) and
F2 (full) + I2 (incremental with new mail in two mailboxes), a config bundle in each mail
snapshot, and one config-only bundle; volumes are capped at 1 MiB so there are several.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.faults.conftest import (
    FaultWorld,
    add_random_message,
    copy_tree,
    mail_snaps,
    no_traceback,
    one_line,
)
from tests.world import diff_trees, tree


class Repo:
    def __init__(self, base: str):
        w = FaultWorld(os.path.join(base, "t"))
        w.make_store()
        add_random_message(w.store, "example.it/anna", 300_000, seed=1)
        w.write_config()
        assert w.run("init", "local").code == 0
        assert w.run("backup", "--target", "local").code == 0
        assert w.run("backup", "--target", "local", "--full").code == 0
        self.s0 = tree(w.store)
        add_random_message(w.store, "example.it/anna", 700_000, seed=2, sub="new")
        add_random_message(w.store, "dom1.example.it/anna", 700_000, seed=3, sub="new")
        self.s1 = tree(w.store)
        assert w.run("backup", "--target", "local").code == 0
        assert w.run("backup", "--target", "local", "--what", "config").code == 0
        self.base, self.store, self.world = base, w.store, w
        snaps = mail_snaps(w)
        assert [s["kind"] for s in snaps] == ["full", "full", "incremental"]
        self.f1, self.f2, self.i2 = snaps
        self.config_only = [n for n in os.listdir(os.path.join(w.repo_root, "config")) if n.endswith("-config.bundle")][0]
        # a second repository (same passphrase) to take a foreign key file / repo.json from
        other = FaultWorld(os.path.join(base, "other"))
        other.store = w.store
        other.write_config()
        assert other.run("init", "local").code == 0
        self.other_root = other.repo_root

    def path(self, root: str, snap: dict, suffix: str) -> str:
        return os.path.join(root, "chains", snap["chain"], snap["id"] + suffix)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return Repo(str(tmp_path_factory.mktemp("corrupt-template")))


@pytest.fixture
def case(repo, tmp_path):
    """A fresh copy of the repository, with a world whose target and state point at it."""
    w = FaultWorld(str(tmp_path / "w"), store=repo.store)
    shutil.rmtree(w.repo_dir)
    copy_tree(repo.world.repo_dir, w.repo_dir)
    w.write_config()
    assert w.run("init", "local").code == 0       # enrol the copy
    return w


def flip(path: str, offset: int, mask: int = 0x40) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def swap(a: str, b: str) -> None:
    tmp = a + ".swap"
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


def damage(op: str, a: str, b: str | None) -> None:
    if op == "flip":
        flip(a, os.path.getsize(a) // 2)
    elif op == "truncate":
        truncate(a)
    elif op == "delete":
        os.unlink(a)
    elif op == "swap":
        swap(a, b)


# kind -> (object, its swap partner, snapshots the damage affects, words a problem must contain)
def objects(repo: Repo, root: str) -> dict:
    f1, f2, i2 = repo.f1, repo.f2, repo.i2
    return {
        "volume": (repo.path(root, i2, ".v0001"), repo.path(root, i2, ".v0002"), [i2], [f"{i2['id']}.v000"]),
        # (an incremental of a few new messages stores no page of its own: its changes are
        # inline deltas on F2's pages, so F2's pages serve both)
        "pages": (repo.path(root, f2, ".pages"), repo.path(root, f1, ".pages"), [f2, i2], [".pages", "page"]),
        "index": (repo.path(root, i2, ".index"), repo.path(root, f2, ".index"), [i2], [".index"]),
        "catalog": (repo.path(root, i2, ".catalog"), repo.path(root, f2, ".catalog"), [i2], [i2["id"]]),
        "bundle": (os.path.join(root, "config", i2["id"] + ".bundle"),
                   os.path.join(root, "config", f2["id"] + ".bundle"), [i2], [f"{i2['id']}.bundle"]),
    }


OPS = ["flip", "truncate", "delete", "swap"]
DATA_KINDS = ["volume", "pages", "index", "catalog", "bundle"]

# damage verify cannot see. Once, deleting the newest catalog was one (the snapshot was simply
# gone); since state_dir remembers the newest snapshot seen, it is reported as a rollback.
UNDETECTABLE: set = set()


@pytest.mark.parametrize("kind", DATA_KINDS)
@pytest.mark.parametrize("op", OPS)
def test_damaged_object_is_named_and_the_rest_restores(repo, case, kind, op):
    w = case
    obj, partner, affected, words = objects(repo, w.repo_root)[kind]
    damage(op, obj, partner)
    if op == "swap" and kind in ("index", "bundle"):
        affected = affected + [repo.f2]
    if op == "swap" and kind == "pages":
        affected = affected + [repo.f1]
    if op == "swap" and kind == "catalog":
        affected = [repo.f2, repo.i2]
    f1_intact = repo.f1 not in affected

    r = w.run("verify", "--read-data", "--json")
    no_traceback(r)
    if (kind, op) in UNDETECTABLE:
        assert r.code == 0, r.out
        assert [s["id"] for s in mail_snaps(w)] == [repo.f1["id"], repo.f2["id"]]
    else:
        assert r.code == 4, (r.code, r.out, r.err)
        rep = json.loads(r.out)
        text = " ".join(rep["problems"])
        assert any(word in text for word in words), rep["problems"]
        for s in affected:
            assert s["id"] in rep["damaged_snapshots"], (s["id"], rep)
        if f1_intact:
            assert repo.f1["id"] not in rep["damaged_snapshots"]
        files = []
        if kind == "volume":
            files = rep["damaged_files"].get(repo.i2["id"], [])
            assert files and all(f.startswith(("example.it/anna/", "dom1.example.it/anna/")) for f in files), files
        # the same in words, for a person: first line says damage, then the details
        r = w.run("verify", "--read-data")
        no_traceback(r)
        assert r.code == 4
        first = r.err.strip().splitlines()[0]
        assert "damage" in first and any(s["id"] in first for s in affected), r.err

    if f1_intact and not (kind == "catalog" and op != "delete"):
        # another chain is untouched (a damaged catalog: see the xfail test below)
        out = os.path.join(w.tmp, "f1")
        r = w.run("restore", repo.f1["id"], "--to", out)
        no_traceback(r)
        assert r.code == 0, r.err
        assert diff_trees(repo.s0, tree(out)) == []

    if kind in ("index", "bundle"):
        # restore never reads the content index; the mail does not need the bundle
        out = os.path.join(w.tmp, "i2")
        r = w.run("restore", repo.i2["id"], "--to", out)
        no_traceback(r)
        assert r.code == 0, r.err
        assert diff_trees(repo.s1, tree(out)) == []
    if kind == "volume":
        # a mailbox whose data is not in the damaged volume restores from the same snapshot
        out = os.path.join(w.tmp, "mario")
        r = w.run("restore", repo.i2["id"], "--mailbox", "mario@example.it", "--to", out)
        no_traceback(r)
        assert r.code == 0, r.err
        want = {k: v for k, v in repo.s1.items() if k.startswith(b"example.it/mario")}
        got = {k: v for k, v in tree(out).items() if k.startswith(b"example.it/mario")}
        assert diff_trees(want, got) == []
        # and the damaged one fails with one line (exit 4; a deleted volume: see below)
        dom, user = files[0].split("/")[:2]
        out = os.path.join(w.tmp, "damaged")
        r = w.run("restore", repo.i2["id"], "--mailbox", f"{user}@{dom}", "--to", out)
        assert "dmbackup:" in one_line(r)
        assert r.code == 4, r.err       # a missing volume is damage: the target itself is there


def test_restore_with_a_deleted_volume_exits_4(repo, case):
    w = case
    obj, _, _, _ = objects(repo, w.repo_root)["volume"]
    os.unlink(obj)
    r = w.run("restore", repo.i2["id"], "--to", os.path.join(w.tmp, "out"))
    one_line(r)
    assert r.code == 4


@pytest.mark.parametrize("op", ["flip", "truncate", "swap"])
def test_damaged_catalog_leaves_other_snapshots_usable(repo, case, op):
    w = case
    obj, partner, _, _ = objects(repo, w.repo_root)["catalog"]
    damage(op, obj, partner)
    r = w.run("snapshots", "--json")
    no_traceback(r)
    assert r.code == 0, r.err
    assert repo.f1["id"] in [s["id"] for s in json.loads(r.out)]
    out = os.path.join(w.tmp, "f1")
    r = w.run("restore", repo.f1["id"], "--to", out)
    no_traceback(r)
    assert r.code == 0, r.err
    assert diff_trees(repo.s0, tree(out)) == []


def test_damaged_newest_catalog_does_not_stop_the_next_backup(repo, case):
    w = case
    cat = repo.path(w.repo_root, repo.i2, ".catalog")
    flip(cat, os.path.getsize(cat) - 10)          # the body: the header (listing) still opens
    assert w.run("verify").code == 4
    r = w.run("backup", "--target", "local")
    no_traceback(r)
    assert r.code in (0, 1), r.err
    out = os.path.join(w.tmp, "new")
    assert w.run("restore", "--to", out).code == 0
    assert diff_trees(repo.s1, tree(out)) == []


@pytest.mark.parametrize("op", ["flip", "truncate"])
def test_damaged_config_only_bundle_found_by_verify(repo, case, op):
    w = case
    damage(op, os.path.join(w.repo_root, "config", repo.config_only), None)
    r = w.run("verify", "--read-data", "--json")
    no_traceback(r)
    assert r.code == 4
    assert repo.config_only in " ".join(json.loads(r.out)["problems"])


def test_damaged_config_only_bundle_does_not_hide_the_snapshot_list(repo, case):
    w = case
    flip(os.path.join(w.repo_root, "config", repo.config_only), 200)
    r = w.run("snapshots", "--target", "local", "--json")
    no_traceback(r)
    assert r.code == 0, r.err
    assert len([s for s in json.loads(r.out) if s["kind"] != "config"]) == 3


# --- the key file and repo.json ------------------------------------------------------------------
def _key_doc(root: str) -> dict:
    with open(os.path.join(root, "keys", "master.json")) as f:
        return json.load(f)


def _write_key_doc(root: str, doc: dict) -> None:
    with open(os.path.join(root, "keys", "master.json"), "w") as f:
        json.dump(doc, f)


def _change_b64(value: str) -> str:
    mid = len(value) // 2
    c = value[mid]
    return value[:mid] + ("B" if c != "B" else "C") + value[mid + 1:]


def key_damage(repo: Repo, root: str, how: str) -> None:
    key = os.path.join(root, "keys", "master.json")
    if how == "flip-structure":
        flip(key, 0)                                   # '{' -> ';': not JSON
    elif how == "truncate":
        truncate(key)
    elif how == "delete":
        os.unlink(key)
    elif how == "foreign":
        shutil.copy(os.path.join(repo.other_root, "keys", "master.json"), key)
    else:
        doc = _key_doc(root)
        field = how.split("-", 1)[1]
        doc[field] = _change_b64(doc[field])
        _write_key_doc(root, doc)


# (exit code, words one of which the line must contain). A flipped salt, nonce or wrapped key
# cannot be told from a wrong passphrase by AES-GCM alone: today that is exit 6 "wrong
# passphrase" (see docs/promises.md and the report: a checksum in the key file would make it 4).
KEY_CASES = {
    "flip-structure": ({4}, ["key file"]),
    "truncate": ({4}, ["key file"]),
    "delete": ({4}, ["keys/master.json"]),
    "foreign": ({6}, ["passphrase"]),
    "flip-wrapped": ({4, 6}, ["key file", "passphrase"]),
    "flip-salt": ({4, 6}, ["key file", "passphrase"]),
    "flip-nonce": ({4, 6}, ["key file", "passphrase"]),
}


@pytest.mark.parametrize("how", list(KEY_CASES))
def test_damaged_key_file_one_line_no_traceback(repo, case, how):
    w = case
    key_damage(repo, w.repo_root, how)
    codes, words = KEY_CASES[how]
    for argv in (["verify", "--read-data"], ["restore", "--to", os.path.join(w.tmp, "out")],
                 ["backup", "--target", "local"]):
        r = w.run(*argv)
        line = one_line(r)
        assert r.code in codes, (argv, r.code, line)
        assert any(word in line for word in words), line
    assert [o for o in os.listdir(os.path.join(w.repo_root, "chains"))] and not [
        n for c in os.listdir(os.path.join(w.repo_root, "chains"))
        for n in os.listdir(os.path.join(w.repo_root, "chains", c)) if ".tmp-" in n]


def test_key_file_with_bad_scrypt_cost_is_damage_not_traceback(repo, case):
    """n = 1025 is not a scrypt cost: the key file is damaged (was a traceback before 0fe82d9)."""
    w = case
    doc = _key_doc(w.repo_root)
    doc["n"] = doc["n"] + 1
    _write_key_doc(w.repo_root, doc)
    r = w.run("verify")
    assert r.code == 4 and "key file" in one_line(r)


def repo_json_damage(repo: Repo, root: str, how: str) -> None:
    p = os.path.join(root, "repo.json")
    if how == "flip":
        flip(p, 0)
    elif how == "truncate":
        truncate(p)
    elif how == "delete":
        os.unlink(p)
    elif how == "foreign":
        shutil.copy(os.path.join(repo.other_root, "repo.json"), p)


REPO_JSON_CASES = {
    "flip": ({4}, ["repo.json"]),
    "truncate": ({4}, ["repo.json"]),
    "delete": ({7}, ["no dmbackup repository"]),
    # another repository's id: the key does not open for it (6); backup refuses the id (7)
    "foreign": ({6, 7}, ["passphrase", "enrolled"]),
}


@pytest.mark.parametrize("how", list(REPO_JSON_CASES))
def test_damaged_repo_json_one_line_no_traceback(repo, case, how):
    w = case
    repo_json_damage(repo, w.repo_root, how)
    codes, words = REPO_JSON_CASES[how]
    for argv in (["verify", "--read-data"], ["snapshots", "--target", "local"], ["backup", "--target", "local"]):
        r = w.run(*argv)
        line = one_line(r)
        assert r.code in codes, (argv, r.code, line)
        assert any(word in line for word in words), line


def test_init_never_replaces_the_key_of_existing_data(repo, case):
    w = case
    os.unlink(os.path.join(w.repo_root, "repo.json"))
    with open(os.path.join(w.repo_root, "keys", "master.json"), "rb") as f:
        key_before = f.read()
    r = w.run("init", "local")
    no_traceback(r)
    with open(os.path.join(w.repo_root, "keys", "master.json"), "rb") as f:
        assert f.read() == key_before
    assert r.code != 0


def test_snapshots_of_all_targets_does_not_exit_0_on_error(repo, case):
    w = case
    repo_json_damage(repo, w.repo_root, "flip")
    r = w.run("snapshots", "--json")
    no_traceback(r)
    assert r.code == 4
