"""dmbackup.archive.tablecache: parsed catalog bodies kept in state_dir.

The cache may only ever save a parse: it is used only for the very sealed bytes it was made
from, a file that is torn, flipped, of another marshal format or a link is ignored (and
written again), and every reader answers with it exactly what it answers without it."""

from __future__ import annotations

import json
import marshal
import os
import shutil
import stat

import pytest

from dmbackup.archive import reader
from dmbackup.archive import catalog
from dmbackup.archive.tablecache import MAGIC, TableCache, _packed, body_digest, decode, encode
from dmbackup.errors import CorruptObject
from tests.engine import mailsim
from tests.engine.forge import open_repo

RID = "0123456789abcdef0123456789abcdef"
CHAIN = "0001-20261128T023000Z"
SNAP = "20261128T023000Z-full"
BODY = {"base": "20261127T023000Z-full", "depth": 2, "removed": ["a/b"], "warnings": [],
        "changed": [["d/cur", SNAP, 10, 20, "ab" * 16, 3, {"del": ["x"], "ren": [["y", ":2,S", None]], "put": []}]]}


PACKED = _packed(BODY)
H1, H2 = "0a1b2c3d" + "e" * 56, "ffeeddcc" + "1" * 56
BUSY = {"base": SNAP, "depth": 1, "removed": [], "warnings": [], "changed": [
    ["u/Maildir/cur", SNAP, 0, 9, "cd" * 16, 2, {
        "del": ["1700000001.M1P1.h:2,S"], "ren": [["1700000002.M2P2.h:2,", ":2,S", None]],
        "put": [["1700000003.M3P3.h:2,", "f", 384, 0, 0, 5, 3, 7, H1, [["%s.v0001" % SNAP, 0, 3, 0, 3]]],
                ["1700000004.M4P4.h:2,F", "f", 384, 0, 0, 5, 3, 8, H2, [["%s.v0001" % SNAP, 3, 3, 0, 3]]],
                ["sub", "d", 448, 0, 0, 5, 0, 0, None, None]]}],
    ["u/Maildir/new", SNAP, 9, 9, "ef" * 16, 0, None]]}


def _ints(*hexes):
    import sys
    return {int.from_bytes(bytes.fromhex(h[:8]), sys.byteorder) for h in hexes}


def test_packed_deltas_read_as_the_parsed_ones_and_know_what_they_add():
    """The cache keeps each row's delta as marshal bytes with its size and the key prefixes of
    the files it adds: it decodes to the very table the parsed body gives, and answers
    ``may_put``/``may_touch`` without being unpacked."""
    packed = decode(encode(body_digest(b"s"), BUSY), body_digest(b"s"))
    assert type(packed["changed"][0][6]) is tuple and packed["changed"][1][6] is None
    want, got = catalog.table_of_body(BUSY, "t")[0], catalog.table_of_body(packed, "t")[0]
    d = got.changed[0].delta
    assert d.size == 5 and d._packed is not None                # known without unpacking
    assert not d.may_put(_ints("12345678")) and d.may_put(_ints(H2)) and d.may_put(_ints("12345678", H1))
    assert d._packed is not None
    assert not d.may_touch(["1700000009.M9P9.h:2,S", "1700000099.M1P1.h"])
    for name in ("1700000001.M1P1.h:2,S", "1700000002.M2P2.h:2,S", "1700000002.M2P2.h:2,F",   # deleted, renamed
                 "1700000003.M3P3.h:2,", "1700000004.M4P4.h:2,"):                             # replaced
        assert d.may_touch([name]), name
    assert d._packed is not None
    twin = d.read_once()                                        # for one read: d stays packed
    assert twin is not d and twin.dels == ["1700000001.M1P1.h:2,S"] and d._packed is not None
    assert twin.wanted_puts({H2[:32]})[0][0].name == "1700000004.M4P4.h:2,F" and d._packed is not None
    assert got == want                                          # unpacks: every field the same
    assert d.read_once() is d                                   # an unpacked delta is itself
    assert d.dels == ["1700000001.M1P1.h:2,S"] and [e.hash for e in d.puts if e.hash] == [H1, H2]
    assert d.wanted_puts({H2[:32]})[0][0].name == "1700000004.M4P4.h:2,F"
    unpacked = catalog.table_of_body(BUSY, "t")[0].changed[0].delta
    assert unpacked.may_put(set()) and unpacked.may_touch([])   # a parsed delta always says maybe


def test_malformed_deltas_fail_as_they_do_unpacked():
    for bad in ({"del": "x", "ren": [], "put": []}, {"del": [], "ren": [], "put": [["short"]]},
                {"del": [3], "ren": [], "put": []}, {"del": [], "ren": [["a"]], "put": []}):
        body = json.loads(json.dumps(BUSY))
        body["changed"][0][6] = bad
        packed = decode(encode(body_digest(b"s"), body), body_digest(b"s"))
        for form in (body, packed):
            with pytest.raises(CorruptObject):
                t = catalog.table_of_body(form, "t")[0]
                dl = t.changed[0].delta
                dl.dels, dl.rens, dl.puts
    for bad in ((b"x", 1), (b"x", -1, b""), ("x", 1, b""), (b"x", 1, b"abc"), (b"\xff", 1, b"")):
        body = dict(PACKED, changed=[PACKED["changed"][0][:6] + [bad]])
        with pytest.raises(CorruptObject):
            t = catalog.table_of_body(body, "t")[0]
            t.changed[0].delta.dels


def test_encode_decode_and_every_damage_reads_as_missing():
    digest = body_digest(b"sealed body")
    data = encode(digest, BODY)
    assert data.startswith(MAGIC) and decode(data, digest) == PACKED
    assert decode(data, body_digest(b"other sealed bytes")) is None     # made from other bytes
    for i in range(len(data)):                      # any flipped byte
        bad = bytearray(data)
        bad[i] ^= 0x40
        assert decode(bytes(bad), digest) is None
    for n in range(len(data)):                      # any torn file (a crash without fsync)
        assert decode(data[:n], digest) is None
    assert decode(data + b"x", digest) is None
    other_python = bytearray(data)                  # another interpreter's marshal format
    other_python[len(MAGIC)] = (marshal.version + 1) & 0xFF
    assert decode(bytes(other_python), digest) is None


def test_put_get_forget_and_private_modes(tmp_path):
    os.umask(0o022)
    tc = TableCache(str(tmp_path / "state"), RID)
    digest = body_digest(b"x")
    assert tc.get(CHAIN, SNAP, digest) is None and tc.misses == 1
    tc.put(CHAIN, SNAP, digest, BODY)
    assert tc.get(CHAIN, SNAP, digest) == PACKED and tc.hits == 1
    path = tmp_path / "state" / "tables" / RID / CHAIN / SNAP
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for level in (tmp_path / "state", tmp_path / "state" / "tables", path.parent.parent, path.parent):
        assert stat.S_IMODE(level.stat().st_mode) == 0o700, level
    other = "20261129T023000Z-inc"
    tc.put(CHAIN, other, digest, BODY)
    tc.forget_others({(CHAIN, other)})
    assert not path.exists() and (path.parent / other).exists()
    tc.forget_others(set())
    assert not path.parent.exists()


def test_links_and_names_that_are_not_ids(tmp_path):
    state = tmp_path / "state"
    tc = TableCache(str(state), RID)
    digest = body_digest(b"x")
    secret = tmp_path / "elsewhere"
    secret.write_bytes(encode(digest, BODY))
    (state / "tables" / RID / CHAIN).mkdir(parents=True)
    os.symlink(secret, state / "tables" / RID / CHAIN / SNAP)
    assert tc.get(CHAIN, SNAP, digest) is None                  # never followed
    tc.put(CHAIN, SNAP, digest, {"pages": []})                  # replaces the link, not its target
    assert not os.path.islink(state / "tables" / RID / CHAIN / SNAP)
    assert decode(secret.read_bytes(), digest) == PACKED
    for chain, snap in (("../x", SNAP), (CHAIN, "../../x"), (CHAIN, SNAP + "/x")):
        tc.put(chain, snap, digest, BODY)
        assert tc.get(chain, snap, digest) is None
    assert TableCache(str(state), "../" + RID).root is None
    assert sorted(os.listdir(state / "tables")) == [RID]


def test_an_unwritable_state_dir_is_silent(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    tc = TableCache(str(blocker), RID)
    tc.put(CHAIN, SNAP, body_digest(b"x"), BODY)
    assert tc.get(CHAIN, SNAP, body_digest(b"x")) is None
    tc.forget_others(set())


@pytest.fixture
def chain_world(ready):
    """A full and four incrementals of a changing store (tables of changes 1..4 deep)."""
    shutil.rmtree(ready.store)
    os.makedirs(ready.store)
    sim = mailsim.build(ready.store)
    ready.ok("backup", "--target", "local")
    for _ in range(4):
        mailsim.day(sim)
        ready.ok("backup", "--target", "local")
    return ready, sim


def _tables(repo) -> list:
    return [[r.encode() for r in repo.catalog_body(ref)[0]] for ref in repo.snapshots()
            if ref.header.kind != "config"]


def _cached(w, repo):
    from dmbackup.archive.tablecache import TableCache

    repo.use_table_cache(TableCache(w.state, repo.id))
    return repo


def test_a_reader_answers_the_same_cold_warm_and_damaged(chain_world, monkeypatch):
    w, _ = chain_world
    plain = _tables(open_repo(w))
    parsed = []
    real = reader.open_catalog_body
    monkeypatch.setattr(reader, "open_catalog_body", lambda *a, **k: parsed.append(a[-1]) or real(*a, **k))
    # the backups already left every catalog a later one read (all but the newest)
    repo = _cached(w, open_repo(w))
    assert _tables(repo) == plain
    newest = [r.id for r in repo.snapshots()][-1]
    assert parsed == [newest] and repo.table_cache.hits == 4
    parsed.clear()
    assert _tables(_cached(w, open_repo(w))) == plain and parsed == []   # warm: no JSON parsed
    root = os.path.join(w.state, "tables")
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    assert len(files) == 5
    for i, path in enumerate(files):                # every kind of damage: parsed again, same answer
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write([data[:len(data) // 2], data[:-1] + bytes([data[-1] ^ 1]), b"", json.dumps(plain).encode()][i % 4])
    parsed.clear()
    assert _tables(_cached(w, open_repo(w))) == plain and len(parsed) == 5
    parsed.clear()
    assert _tables(_cached(w, open_repo(w))) == plain and parsed == []   # and written again
    shutil.rmtree(root)
    assert _tables(_cached(w, open_repo(w))) == plain


def test_the_cache_never_vouches_for_bytes_the_medium_does_not_have(chain_world):
    """A catalog changed on the medium after it was cached is read from the medium, and its
    damage is reported as before: the cache stands only for the bytes it was parsed from."""
    w, _ = chain_world
    repo = _cached(w, open_repo(w))
    _tables(repo)
    ref = repo.snapshots()[-2]
    path = os.path.join(w.repo_dir, "dmbackup", "mx.test", "chains", ref.chain, f"{ref.id}.catalog")
    data = bytearray(open(path, "rb").read())
    data[-10] ^= 0x01                                # a flipped bit in the sealed body
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(CorruptObject):
        _cached(w, open_repo(w)).catalog_body(ref)
    r = w.run("verify", "--target", "local")
    assert r.code == 4 and ref.id in r.out + r.err


def test_backups_prune_and_find_forget_pruned_snapshots(chain_world):
    w, sim = chain_world
    ids = {r["id"] for r in json.loads(w.ok("snapshots", "--json").out) if r["kind"] != "config"}
    root = os.path.join(w.state, "tables")
    keys_root = os.path.join(w.state, "pagekeys")        # dmbackup.engine.pagekeys: backups write one a night

    def cached(top=root):
        return {f for _, _, fs in os.walk(top) for f in fs}

    assert cached() and cached() <= ids
    assert cached(keys_root) and cached(keys_root) <= ids
    w.ok("backup", "--target", "local", "--full")         # a second chain
    mailsim.day(sim)
    w.ok("backup", "--target", "local")
    w.ok("prune", "--target", "local", "--keep-chains", "1")
    left = {r["id"] for r in json.loads(w.ok("snapshots", "--json").out) if r["kind"] != "config"}
    assert not left & ids
    assert cached() <= left and cached()                # prune forgot the chain it deleted
    assert cached(keys_root) <= left and cached(keys_root)      # and its page keys, with no find run
    stale = os.path.join(root, open_repo(w).id, sorted(os.listdir(os.path.join(root, open_repo(w).id)))[0],
                         sorted(ids)[0])
    with open(stale, "wb") as f:                        # one left over (a prune run elsewhere)
        f.write(b"x")
    w.ok("find", "--target", "local", "--subject", "zzzz-nothing")
    assert cached() <= left
    keys_stale = os.path.join(keys_root, os.path.relpath(stale, root))
    for path in (stale, keys_stale):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"x")
    mailsim.day(sim)
    w.ok("backup", "--target", "local")
    now = {r["id"] for r in json.loads(w.ok("snapshots", "--json").out)}
    assert cached() <= left | now
    assert cached(keys_root) <= left | now
