"""dmbackup.engine.msgscan: message directories, and the walker's shortcuts (wanted entries
picked out of a page without parsing it whole; deltas applied to reduced pages) against the
plain way (``decode_page_list`` + ``apply_delta``), on hostile names."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmbackup.archive import layout
from dmbackup.archive.catalog import (
    Delta,
    Entry,
    PageRow,
    apply_delta,
    compress,
    decode_delta,
    decode_page_list,
    encode_page,
)
from dmbackup.archive.crypto import PlainSealer
from dmbackup.archive.tablecache import _pack_delta
from dmbackup.engine import msgscan
from dmbackup.engine.msgscan import MessageWalker, Scope, message_dir
from dmbackup.engine.pagekeys import PageKeys
from dmbackup.errors import CorruptObject, UsageError

RID = "0123456789abcdef0123456789abcdef"
CHAIN = "0001-20261128T023000Z"
OWNER = "20261128T023000Z-full"
VOL = f"{OWNER}.v0001"
SETTINGS = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def h(i) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def f(name: str, i, size: int = 10) -> Entry:
    return Entry(name, "f", 0o600, 5000, 5000, 1_700_000_000_000_000_000 + 7 * len(name), size, 7, h(i),
                 [[VOL, 4, 100, 0, size]] if size else [])


class FakeRepo:
    """Just what MessageWalker reads: sealed pages by (owner, offset)."""

    def __init__(self):
        self.id = RID
        self.keys = type("K", (), {"catalog": PlainSealer()})()
        self.objects: dict[tuple[str, int], bytes] = {}
        self.full_reads = 0
        self.reads = 0

    def add_page(self, entries: list[Entry], offset: int = 0) -> PageRow:
        plain = encode_page(sorted(entries, key=lambda e: e.name))
        sealed = self.keys.catalog.seal(compress(plain), layout.page_aad(RID, CHAIN, OWNER, offset))
        self.objects[(OWNER, offset)] = sealed
        return PageRow("example.it/anna/Maildir/cur", OWNER, offset, len(sealed),
                       hashlib.sha256(plain).hexdigest()[:32], len(entries))

    def read_object(self, chain, name, offset, length):
        self.reads += 1
        return self.objects[(layout.object_owner(name), offset)][:length]

    def page_at(self, chain, owner, offset, length, d=""):
        self.full_reads += 1
        from dmbackup.archive.catalog import decompress, MAX_PAGE_PLAIN

        return decode_page_list(decompress(self.keys.catalog.open(self.objects[(owner, offset)],
                                                                  layout.page_aad(RID, chain, owner, offset)),
                                           "p", MAX_PAGE_PLAIN), "p")


def test_message_dirs():
    assert message_dir("example.it/anna/Maildir/cur") == msgscan.MsgDir("anna@example.it", "", "cur")
    md = message_dir("example.it/anna/Maildir/.Posta invi&AOA-ta/new")
    assert md.folder == "Posta inviàta" and md.sub == "new" and md.folder_rel == "example.it/anna/Maildir/.Posta invi&AOA-ta"
    assert message_dir("example.it/anna/Maildir/.Archivio.2024/cur").folder == "Archivio/2024"
    for d in ("example.it/anna/Maildir/tmp", "example.it/anna/Maildir", "example.it/anna/Maildir/x/cur",
              "example.it/anna/Maildir/./cur", "example.it/anna/Other/cur", "example.it/a@b/Maildir/cur",
              "x/example.it/anna/Maildir/cur", "example.it/anna/Maildir/.A/cur/cur"):
        assert message_dir(d) is None, d
    assert msgscan.imap_folder(".bad&-name&") == ".bad&-name&"          # not modified UTF-7: shown raw
    assert msgscan.maildir_flags("1.M2P3.mx,S=4:2,FSa") == "FSa" and msgscan.maildir_flags("1.M2P3.mx") == ""
    assert msgscan.flag_names("TSaRFD") == ["\\Draft", "\\Flagged", "\\Answered", "\\Seen", "\\Deleted"]
    with pytest.raises(UsageError):
        Scope("anna")
    with pytest.raises(UsageError):
        Scope("anna@example.it", "../x")
    assert Scope("Anna@Example.it", "INBOX").wants(message_dir("example.it/anna/Maildir/new"))


HOSTILE = [
    'plain.M1P2.mx,S=10:2,S', 'quote".M1', 'back\\slash', 'back\\\\', 'ends\\', '","f",1,2,3,4,5,6,"',
    '["x","f",1,2,3,4,5,6,"' + h(1) + '",[]]', h(2), 'tab\tand\nnewline', 'ctl\x01\x7f', 'àccénts ✓',
    'surrogate-\udcff', '[', ']', ',"', '\\"', '"' * 5,
]


def check(entries: list[Entry], want: set[str]):
    repo = FakeRepo()
    row = repo.add_page(entries)
    w = MessageWalker(repo, want=want)
    got = w.entries(CHAIN, row)
    full = {e.name: e for e in entries if e.type == "f" and e.hash and e.hash[:32] in want}
    assert {n: e.encode() for n, e in got.items()} == {n: e.encode() for n, e in full.items()}
    return repo


def test_picked_entries_equal_the_parsed_ones_with_hostile_names():
    entries = [f(n, i, size=i % 3 * 10) for i, n in enumerate(HOSTILE)]
    entries.append(Entry("link", "l", 0o777, 0, 0, 1, 5, 0, None, None, h(3)))          # a hex link target
    entries.append(Entry(h(4), "d", 0o700, 0, 0, 1, 0, 0))                            # a hex directory name
    keys = [e.hash[:32] for e in entries if e.type == "f"]
    for k in range(len(keys)):
        repo = check(entries, {keys[k]})
        assert repo.full_reads == 0
    check(entries, set(keys))
    check(entries, {h(1)[:32], h(2)[:32], h(3)[:32], h(4)[:32]})        # hashes that are only in names
    check(entries, {"0" * 32})


def test_picked_entries_of_an_ascii_page_equal_the_parsed_ones():
    """A page of ASCII names is turned into text once and each entry decoded where it starts."""
    names = [n for n in HOSTILE if n.isascii()] + [f"17644{i:05d}.M{i}P1.h,S={i}:2,S" for i in range(300)]
    entries = [f(n, i, size=i % 3 * 10) for i, n in enumerate(names)]
    assert len(names) > 300 and any('"' in n or "\\" in n for n in names)
    keys = [e.hash[:32] for e in entries]
    for want in ({keys[0]}, {keys[-1]}, set(keys[::7]), set(keys)):
        repo = check(entries, want)
        assert repo.full_reads == 0


def test_an_entry_repeated_in_later_pages_is_decoded_once(monkeypatch):
    """The same message in every page its directory is stored in again: a walker decodes an
    entry text it decoded before once (the same ``Entry``), and an entry that differs in any
    byte (flags in the name, mtime, extents) is decoded on its own; the memo is bounded."""
    repo = FakeRepo()
    base = [f(f"17644{i:05d}.M{i}P1.h,S={i}:2,S", i) for i in range(40)]
    changed = [Entry(e.name.replace(":2,S", ":2,FS"), *e.encode()[1:9], e.extents) for e in base[:5]]
    moved = [Entry(e.name, e.type, e.mode, e.uid, e.gid, e.mtime_ns, e.size, e.ino, e.hash,
                   [[f"{OWNER}.v0002", 8, 100, 0, e.size]]) for e in base[5:10]]
    pages = [base, changed + base[5:], base[:5] + moved + base[10:], base]
    rows = [repo.add_page(p, offset=1000 * i) for i, p in enumerate(pages)]
    want = {e.hash[:32] for e in base[::2]}
    w = MessageWalker(repo, want=want)
    decoded = []
    real = msgscan.decode_entry
    monkeypatch.setattr(msgscan, "decode_entry", lambda raw, what: decoded.append(raw[0]) or real(raw, what))
    got = [w.entries(CHAIN, r) for r in rows]
    for page, g in zip(pages, got):
        assert {n: e.encode() for n, e in g.items()} == {e.name: e.encode() for e in page if e.hash[:32] in want}
    assert len(decoded) == len(want) + 3 + 2          # the 20 once, the 3 renamed and 2 moved wanted ones
    assert all(got[3][n] is got[0][n] for n in got[0])
    assert got[2][base[6].name] is not got[0][base[6].name] and got[2][base[6].name].extents != base[6].extents
    monkeypatch.setattr(msgscan, "ENTRY_MEMO", 3)
    w = MessageWalker(repo, want=want)
    assert [w.entries(CHAIN, r) for r in rows] == got and len(w._entry_memo) <= 3


def test_a_walker_without_extents_validates_them_and_keeps_none():
    """``find`` reads no volume: its walker (``extents=False``) keeps no extents for the entries
    it reads from pages (a third of what each costs to hold), yet validates them as before;
    the entries a delta adds keep theirs (the catalog holds them anyway)."""
    entries = [f(n, i, size=i % 3 * 10) for i, n in enumerate(HOSTILE)]
    entries += [f(f"17644{i:05d}.M{i}P1.h,S={i}:2,S", 100 + i) for i in range(60)]
    repo = FakeRepo()
    row = repo.add_page(entries)
    keys = [e.hash[:32] for e in entries]
    for want in ({keys[0]}, set(keys[::3]), set(keys)):
        full = MessageWalker(repo, want=want).entries(CHAIN, row)
        slim = MessageWalker(repo, want=want, extents=False).entries(CHAIN, row)
        assert list(slim) == list(full) and full
        assert all(e.extents is None and e.encode()[:9] == full[n].encode()[:9] for n, e in slim.items())
        assert all(e.extents is not None for e in full.values())
    put = f("new-one:2,S", 999)
    row.delta = Delta([], [], [put])
    got = MessageWalker(repo, want={put.hash[:32], keys[1]}, extents=False).entries(CHAIN, row)
    assert got[put.name].extents == put.extents and got[entries[1].name].extents is None
    # an entry whose extents do not add up is refused with or without them kept
    bad = Entry("bad:2,S", "f", 0o600, 0, 0, 1, 10, 7, h("bad"), [[VOL, 4, 100, 0, 5]])
    row = FakeRepo.add_page(repo, [f("good", 1), bad], offset=5000)
    for extents in (True, False):
        with pytest.raises(CorruptObject, match="do not add up"):
            MessageWalker(repo, want={h("bad")[:32]}, extents=extents).entries(CHAIN, row)
    # a page parsed whole (not laid out as dmbackup writes pages) keeps none either
    import json

    plain = json.dumps([e.encode() for e in entries[:5]], indent=1).encode()
    repo.objects[(OWNER, 9000)] = repo.keys.catalog.seal(compress(plain), layout.page_aad(RID, CHAIN, OWNER, 9000))
    row = PageRow("d/u/Maildir/cur", OWNER, 9000, len(repo.objects[(OWNER, 9000)]), "0" * 32, 5)
    got = MessageWalker(repo, want=set(keys[:5]), extents=False).entries(CHAIN, row)
    assert len(got) == 5 and all(e.extents is None for e in got.values())


def test_a_page_without_wanted_content_is_not_parsed():
    repo = FakeRepo()
    row = repo.add_page([f(f"m{i}", i) for i in range(50)])
    w = MessageWalker(repo, want={"f" * 32})
    assert w.entries(CHAIN, row) == {} and repo.full_reads == 0


def test_a_page_not_laid_out_canonically_is_parsed_whole():
    import json

    repo = FakeRepo()
    entries = [f("a", 1), f("b", 2)]
    plain = json.dumps([e.encode() for e in entries], indent=1).encode()          # other spacing
    repo.objects[(OWNER, 0)] = repo.keys.catalog.seal(compress(plain), layout.page_aad(RID, CHAIN, OWNER, 0))
    row = PageRow("d/u/Maildir/cur", OWNER, 0, len(repo.objects[(OWNER, 0)]), "0" * 32, 2)
    got = MessageWalker(repo, want={h(2)[:32]}).entries(CHAIN, row)
    assert list(got) == ["b"] and got["b"].encode() == entries[1].encode()


def test_damaged_pages_raise_corrupt_object():
    repo = FakeRepo()
    row = repo.add_page([f("a", 1)])
    sealed = bytearray(repo.objects[(OWNER, 0)])
    sealed[40] ^= 1
    repo.objects[(OWNER, 0)] = bytes(sealed)
    with pytest.raises(CorruptObject):
        MessageWalker(repo, want={h(1)[:32]}).entries(CHAIN, row)
    bad = PageRow(row.dir, "../x", 0, row.length, row.sha256, 1)
    with pytest.raises(CorruptObject):
        MessageWalker(repo, want={h(1)[:32]}).entries(CHAIN, bad)


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40) | st.sampled_from(HOSTILE)


@SETTINGS
@given(st.lists(st.tuples(names, st.integers(0, 30)), min_size=1, max_size=25, unique_by=lambda t: t[0]),
       st.sets(st.integers(0, 30), max_size=8), st.data())
def test_walker_matches_decode_and_apply_delta(files, wanted, data):
    entries = [f(n, i) for n, i in files]
    repo = FakeRepo()
    row = repo.add_page(entries)
    base = sorted(entries, key=lambda e: e.name)
    # a random delta: deletions, flag renames, puts
    dels = data.draw(st.lists(st.sampled_from([e.name for e in base]), max_size=5, unique=True))
    left = [e for e in base if e.name not in dels]
    rens = []
    for e in data.draw(st.lists(st.sampled_from(left), max_size=4, unique_by=lambda e: e.name)) if left else []:
        rens.append([e.name, ":2," + data.draw(st.sampled_from(["S", "FS", "RSa", ""])),
                     data.draw(st.none() | st.integers(0, 10 ** 18))])
    puts = [f(n, i) for n, i in data.draw(st.lists(st.tuples(names, st.integers(0, 30)), max_size=4,
                                                           unique_by=lambda t: t[0]))]
    delta = Delta(dels, rens, puts)
    try:
        want_entries = apply_delta(base, delta, "t")
    except CorruptObject:
        return
    row.delta = delta
    want = {h(i)[:32] for i in wanted}
    got = MessageWalker(repo, want=want).entries(CHAIN, row)
    exp = {e.name: e.encode() for e in want_entries if e.type == "f" and e.hash[:32] in want}
    assert {n: e.encode() for n, e in got.items()} == exp
    # the same delta as the local cache of catalogs keeps it (packed): the same entries, and a
    # search leaves it packed (it unpacks a twin of it for the one read)
    row.delta = packed = decode_delta(_pack_delta(delta.encode()), "t")
    got = MessageWalker(repo, want=want).entries(CHAIN, row)
    assert {n: e.encode() for n, e in got.items()} == exp and packed._packed is not None
    assert packed == delta and packed._packed is None           # (comparing unpacks it)
    every = MessageWalker(repo).entries(CHAIN, row)
    assert {n: e.encode() for n, e in every.items()} == {e.name: e.encode() for e in want_entries}
    # with the local page-key cache: the same entries when it is cold (it learns the page) and
    # when it is warm (the page is read only if it lists a wanted content, and then only the
    # candidates the cache names are looked for)
    pk = PageKeys("/nonexistent-state", RID)        # never saved: the in-memory cache only
    for _ in ("cold", "warm"):
        repo.reads = 0
        cached = MessageWalker(repo, want=want, pagekeys=pk).entries(CHAIN, row)
        assert {n: e.encode() for n, e in cached.items()} == exp
    listed = {e.hash[:8] for e in base if e.type == "f"}
    if any(k[:8] in listed for k in want):
        assert repo.reads == 1
    else:       # a hostile name that is 64 hex digits may make the page a candidate: a read, no result
        assert repo.reads <= 1


def test_the_page_key_cache_skips_pages_without_wanted_content(tmp_path):
    """Fifty pages, one wanted message: with the cache warm (as a backup leaves it) one page is
    read; the cache survives the process (a file in state_dir) and a new walker uses it."""
    repo = FakeRepo()
    rows = [repo.add_page([f(f"m{p}-{i}", p * 100 + i) for i in range(20)], offset=p * 10_000) for p in range(50)]
    want = {h(3 * 100 + 7)[:32]}
    pk = PageKeys(str(tmp_path), RID)
    w = MessageWalker(repo, want=want, pagekeys=pk)
    cold = {n: e.encode() for r in rows for n, e in w.entries(CHAIN, r).items()}
    assert repo.reads == 50 and w.pages_skipped == 0 and list(cold) == ["m3-7"]
    pk.save()
    repo.reads = 0
    w = MessageWalker(repo, want=want, pagekeys=PageKeys(str(tmp_path), RID))
    warm = {n: e.encode() for r in rows for n, e in w.entries(CHAIN, r).items()}
    assert warm == cold and repo.reads == 1 and w.pages_skipped == 49
    # without a wanted set (ls, diff, reindex) the cache is not consulted
    assert MessageWalker(repo, pagekeys=pk).pagekeys is None
