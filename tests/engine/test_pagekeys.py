"""dmbackup.engine.pagekeys: the local cache of which contents each stored page lists.

It may only ever make ``find`` faster: a file that is torn, flipped, foreign or a link is
ignored (and rebuilt), and a search with it answers exactly what a search without it does
(tests/engine/test_msgscan.py, tests/engine/test_find.py)."""

from __future__ import annotations

import hashlib
import os

from dmbackup.engine.pagekeys import MAGIC, PageKeys, Wanted, decode, encode, prefix, prefixes_of_hex

RID = "0123456789abcdef0123456789abcdef"
CHAIN = "0001-20261128T023000Z"
OWNER = "20261128T023000Z-full"
OTHER = "20261129T023000Z-inc"


def h(i) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def keys(*ids) -> bytes:
    return prefixes_of_hex([h(i).encode() for i in ids])


def test_encode_decode_and_every_damage_reads_as_missing():
    pages = {(0, 100): keys(1, 2, 3), (100, 50): b"", (150, 70): keys(4)}
    data = encode(pages)
    assert data.startswith(MAGIC) and decode(data) == pages
    assert decode(encode({})) == {}
    for i in range(len(data)):                      # any flipped byte
        bad = bytearray(data)
        bad[i] ^= 0x40
        assert decode(bytes(bad)) is None
    for n in range(len(data)):                      # any torn file (a crash without fsync)
        assert decode(data[:n]) is None
    assert decode(data + b"x") is None


def test_wanted_finds_only_whole_aligned_prefixes():
    page = keys(*range(40))
    for many in (False, True):                      # the small set (find each) and the large one (set)
        ids = [5, 1000] + (list(range(2000, 2030)) if many else [])
        w = Wanted([h(i)[:32] for i in ids])
        assert w.present(page) == [h(5)[:32].encode()]
        assert Wanted([h(i)[:32] for i in range(1000, 1000 + (40 if many else 3))]).present(page) == []
    # a wanted prefix that only appears across two listed prefixes is no candidate
    p = prefix(h(7))
    straddling = b"\0\0" + p[:2] + p[2:] + b"\0\0"      # p at offset 2
    assert Wanted([h(7)[:32]]).present(straddling) == []
    assert Wanted([h(7)[:32]]).present(b"\0" * 4 + p) == [h(7)[:32].encode()]
    # two wanted contents sharing a prefix are both candidates
    w = Wanted([h(7)[:32], prefix(h(7)).hex() + "f" * 24])
    assert sorted(w.present(p)) == sorted([h(7)[:32].encode(), (prefix(h(7)).hex() + "f" * 24).encode()])


def test_saved_loaded_forgotten(tmp_path):
    pk = PageKeys(str(tmp_path), RID)
    pk.add(CHAIN, OWNER, 0, 10, keys(1))
    pk.add(CHAIN, OTHER, 0, 20, keys(2))
    pk.save()
    path = tmp_path / "pagekeys" / RID / CHAIN / OWNER
    assert path.is_file() and oct(path.stat().st_mode & 0o777) == "0o600"
    again = PageKeys(str(tmp_path), RID)
    assert again.get(CHAIN, OWNER, 0, 10) == keys(1) and again.get(CHAIN, OWNER, 0, 11) is None
    # the snapshot OTHER was pruned: its file goes, OWNER's stays
    again.forget_others({(CHAIN, OWNER)})
    assert sorted(os.listdir(tmp_path / "pagekeys" / RID / CHAIN)) == [OWNER]
    again.forget_others(set())
    assert not (tmp_path / "pagekeys" / RID / CHAIN).exists()


def test_a_damaged_or_linked_file_is_ignored_and_rebuilt(tmp_path):
    pk = PageKeys(str(tmp_path), RID)
    pk.add(CHAIN, OWNER, 0, 10, keys(1))
    pk.save()
    path = tmp_path / "pagekeys" / RID / CHAIN / OWNER
    data = bytearray(path.read_bytes())
    data[len(MAGIC) + 20] ^= 1                        # a key prefix flipped: the digest says so
    path.write_bytes(bytes(data))
    assert PageKeys(str(tmp_path), RID).get(CHAIN, OWNER, 0, 10) is None
    # a symbolic link in its place is never followed (O_NOFOLLOW), and saving replaces it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(encode({(0, 10): keys(9)}))
    path.unlink()
    path.symlink_to(elsewhere)
    pk = PageKeys(str(tmp_path), RID)
    assert pk.get(CHAIN, OWNER, 0, 10) is None
    pk.add(CHAIN, OWNER, 0, 10, keys(1))
    pk.save()
    assert not path.is_symlink() and decode(path.read_bytes()) == {(0, 10): keys(1)}
    assert decode(elsewhere.read_bytes()) == {(0, 10): keys(9)}


def test_names_that_are_not_ids_never_become_paths(tmp_path):
    assert PageKeys(str(tmp_path), "../../etc").root is None
    pk = PageKeys(str(tmp_path), RID)
    for chain, owner in ((CHAIN, "../x"), ("../../x", OWNER), (CHAIN, OWNER + "/..")):
        pk.add(chain, owner, 0, 1, keys(1))
    pk.save()
    assert not (tmp_path / "pagekeys").exists() or not any(
        f for _, _, fs in os.walk(tmp_path / "pagekeys") for f in fs)


def test_an_unwritable_state_dir_is_silent(tmp_path):
    (tmp_path / "pagekeys").write_bytes(b"a file where the directory goes")
    pk = PageKeys(str(tmp_path), RID)
    pk.add(CHAIN, OWNER, 0, 10, keys(1))
    pk.save()                                       # no exception: it only makes searches faster
    assert pk.get(CHAIN, OWNER, 0, 10) == keys(1)
