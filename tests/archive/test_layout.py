"""dmbackup.archive.layout spells the format: every name and AAD exactly as the prose in
dmbackup/archive/__init__.py (and layout's own docstring) says, and the patterns that accept
names read from a medium accept those and nothing else."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from dmbackup.archive import layout

RID = "0123456789abcdef0123456789abcdef"
# ``$`` matches before a final newline, so the patterns (re.match + "...$") accept a name read
# from a medium with a trailing "\n"; \Z or fullmatch would not. Reported with issue #16.
T = "20261128T023000Z"
CHAIN = "0003-20261128T023000Z"
FULL = f"{T}-full"
INC = "20261129T023000Z-inc"


def test_top_level_names():
    assert layout.REPO_JSON == "repo.json"
    assert layout.README == "README-RESTORE.txt"
    assert layout.KEY_FILE == "keys/master.json"
    assert layout.LOCK == "locks/lock"
    assert (layout.CHAINS, layout.BUNDLES, layout.KEYS, layout.LOCKS) == ("chains", "config", "keys", "locks")


def test_ids_and_times():
    t = datetime(2026, 11, 28, 2, 30, 0, tzinfo=timezone.utc)
    assert layout.snap_time(t) == T
    assert layout.snapshot_id(T, "full") == FULL
    assert layout.snapshot_id(T, "incremental") == f"{T}-inc"
    assert layout.snapshot_id(T, "inc") == f"{T}-inc"
    assert layout.chain_id(3, T) == CHAIN
    assert layout.chain_id(1234, T) == f"1234-{T}"
    assert layout.chain_number(CHAIN) == 3
    assert layout.config_only_id(T) == f"{T}-config"
    assert layout.is_config_only(f"{T}-config") and not layout.is_config_only(FULL)
    for snap in (FULL, INC, f"{T}-config"):
        assert layout.id_time(snap) == snap[:16]
    assert layout.parse_id_time(FULL) == t
    assert layout.parse_id_time(f"{T}-config") == t
    assert layout.parse_id_time("not-a-time") is None
    assert layout.parse_id_time("20261399T999999Z-full") is None


def test_object_names():
    assert layout.chain_dir(CHAIN) == f"chains/{CHAIN}"
    assert layout.chain_object(CHAIN, "x") == f"chains/{CHAIN}/x"
    assert layout.catalog(CHAIN, FULL) == f"chains/{CHAIN}/{FULL}.catalog"
    assert layout.pages(CHAIN, INC) == f"chains/{CHAIN}/{INC}.pages"
    assert layout.index(CHAIN, INC) == f"chains/{CHAIN}/{INC}.index"
    assert layout.catalog_name(FULL) == f"{FULL}.catalog"
    assert layout.pages_name(FULL) == f"{FULL}.pages"
    assert layout.index_name(FULL) == f"{FULL}.index"
    assert layout.volume_name(FULL, 1) == f"{FULL}.v0001"
    assert layout.volume_name(INC, 12) == f"{INC}.v0012"
    assert layout.bundle(FULL) == f"config/{FULL}.bundle"
    assert layout.bundle(f"{T}-config") == f"config/{T}-config.bundle"
    assert layout.bundle_name(FULL) == f"{FULL}.bundle"


def test_names_parse_back():
    assert layout.bundle_id(f"config/{FULL}.bundle") == FULL
    assert layout.bundle_id(f"{T}-config.bundle") == f"{T}-config"
    assert layout.bundle_id(f"config/{FULL}.bundle.tmp-1a2b") is None
    assert layout.bundle_id("config/README") is None
    assert layout.catalog_id(f"chains/{CHAIN}/{INC}.catalog") == INC
    assert layout.catalog_id(f"{INC}.catalog") == INC
    assert layout.catalog_id(f"{INC}.pages") is None
    for name in (f"{FULL}.v0001", f"{FULL}.pages", f"{FULL}.index", f"{FULL}.catalog"):
        assert layout.object_owner(name) == FULL
    assert layout.is_data_object(f"{FULL}.v0001")
    assert not any(layout.is_data_object(f"{FULL}.{x}") for x in ("pages", "index", "catalog"))


def test_aads_are_the_documented_strings():
    assert layout.block_aad(RID, CHAIN, f"{FULL}.v0001", 4096) == f"{RID}|blk|{CHAIN}|{FULL}.v0001|4096".encode()
    assert layout.page_aad(RID, CHAIN, FULL, 77) == f"{RID}|page|{CHAIN}|{FULL}|77".encode()
    assert layout.head_aad(RID, CHAIN, INC) == f"{RID}|cat-head|{CHAIN}|{INC}".encode()
    assert layout.body_aad(RID, CHAIN, INC) == f"{RID}|cat-body|{CHAIN}|{INC}".encode()
    assert layout.index_aad(RID, CHAIN, INC) == f"{RID}|index|{CHAIN}|{INC}".encode()
    assert layout.bundle_aad(RID, FULL) == f"{RID}|bundle|{FULL}".encode()


def test_every_aad_is_distinct_per_place():
    """Moving an object anywhere else changes its AAD: no two places share one."""
    places = {}                      # place -> AAD
    for rid in (RID, "f" * 32):
        for chain in (CHAIN, "0004-20261205T023000Z"):
            for snap in (FULL, INC):
                places[("head", rid, chain, snap)] = layout.head_aad(rid, chain, snap)
                places[("body", rid, chain, snap)] = layout.body_aad(rid, chain, snap)
                places[("index", rid, chain, snap)] = layout.index_aad(rid, chain, snap)
                places[("bundle", rid, snap)] = layout.bundle_aad(rid, snap)     # config/: no chain
                for off in (0, 1, 4096):
                    places[("page", rid, chain, snap, off)] = layout.page_aad(rid, chain, snap, off)
                    for n in (1, 2):
                        vol = layout.volume_name(snap, n)
                        places[("blk", rid, chain, vol, off)] = layout.block_aad(rid, chain, vol, off)
    assert len(set(places.values())) == len(places)


@pytest.mark.parametrize("name", [CHAIN, "0000-20000101T000000Z", "9999-20991231T235959Z"])
def test_chain_re_accepts(name):
    assert layout.CHAIN_RE.match(name)


@pytest.mark.parametrize("name", ["", "3-20261128T023000Z", "00003-20261128T023000Z", "0003-20261128T023000",
                                  "0003_20261128T023000Z", "0003-20261128T023000Z/", "../0003-20261128T023000Z",
                                  "0003-20261128T023000Z\n",
                                  "abcd-20261128T023000Z"])
def test_chain_re_rejects(name):
    assert not layout.CHAIN_RE.match(name)


@pytest.mark.parametrize("name", [FULL, INC])
def test_snap_re_accepts(name):
    assert layout.SNAP_RE.match(name)


@pytest.mark.parametrize("name", ["", f"{T}-config", f"{T}-Full", f"{T}-incremental", f"{T}-full.catalog",
                                  "2026112T023000Z-full", f"{T}-full\n",
                                  f"x{T}-full"])
def test_snap_re_rejects(name):
    assert not layout.SNAP_RE.match(name)


def test_volume_and_object_res():
    for ok in (f"{FULL}.v0000", f"{INC}.v9999"):
        assert layout.VOLUME_RE.match(ok) and layout.OBJECT_RE.match(ok)
    for ok in (f"{FULL}.pages", f"{INC}.index"):
        assert layout.OBJECT_RE.match(ok) and not layout.VOLUME_RE.match(ok)
    for bad in (f"{FULL}.v1", f"{FULL}.v00001", f"{FULL}.catalog", f"{FULL}.bundle", f"{FULL}.v0001.tmp-ab12",
                f"../{FULL}.v0001", f"{T}-config.v0001", f"{FULL}.V0001", ""):
        assert not layout.OBJECT_RE.match(bad), bad
        assert not layout.VOLUME_RE.match(bad), bad


def test_volume_and_object_res_reject_a_trailing_newline():
    assert not layout.OBJECT_RE.match(f"{FULL}.pages\n")
    assert not layout.VOLUME_RE.match(f"{FULL}.v0001\n")


def test_built_names_match_the_patterns():
    t = layout.snap_time(datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    for kind in ("full", "incremental"):
        snap = layout.snapshot_id(t, kind)
        assert layout.SNAP_RE.match(snap)
        for n in (0, 1, 9999):
            assert layout.VOLUME_RE.match(layout.volume_name(snap, n))
        assert layout.OBJECT_RE.match(layout.pages_name(snap)) and layout.OBJECT_RE.match(layout.index_name(snap))
        assert layout.catalog_id(layout.catalog(layout.chain_id(7, t), snap)) == snap
        assert layout.bundle_id(layout.bundle(snap)) == snap
    assert layout.CHAIN_RE.match(layout.chain_id(7, t))
