"""dmbackup.archive.catalog: what is encoded decodes to the same thing, and whatever else is
read (truncated, garbage, moved, bombs) is ``CorruptObject`` at once.

tests/faults/test_parsers_fuzz.py throws random bytes at the same parsers; this module
checks the round trips and a named case for each refusal.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import zstandard

from dmbackup.archive import CATALOG_MAGIC, catalog, crypto, layout
from dmbackup.archive.catalog import Delta, Entry, Header, PageRow
from dmbackup.errors import CorruptObject

RID = "0123456789abcdef0123456789abcdef"
CHAIN = "0001-20261128T023000Z"
FULL = "20261128T023000Z-full"
INC = "20261129T023000Z-inc"
VOL = f"{FULL}.v0001"


@pytest.fixture(params=["encrypted", "plain"])
def sealer(request):
    return crypto.Keys(os.urandom(64) if request.param == "encrypted" else None).catalog


def file_entry(name: str, size: int = 10, **kw) -> Entry:
    return Entry(name, "f", 0o600, 5000, 5000, 1_793_000_000_123_456_789, size, ino=42,
                 hash=hashlib.sha256(os.fsencode(name)).hexdigest(), extents=[[VOL, 0, 100, 0, size]], **kw)


ENTRIES = [
    Entry("cur", "d", 0o700, 5000, 5000, 1_793_000_000_000_000_000, 0, ino=7),
    file_entry("1793000000.M1P1.mail,S=10,W=12:2,S"),
    file_entry("raw-\udcff-name"),                           # a non-UTF-8 name (surrogateescape)
    file_entry("empty", 0),
    Entry("subscriptions.link", "l", 0o777, 0, 0, -5, 13, link="subscriptions"),
]
ENTRIES[3].extents = []


def header(snap: str = FULL, **kw) -> Header:
    base = dict(id=snap, chain=CHAIN, seq=0, parent=None, kind="full", what="mail", time="2026-11-28T02:30:00Z",
                hostname="mx.test", files=3, dirs=2, bytes=30, stored_bytes=400, root=[0o755, 0, 0, 1],
                volumes=[{"name": VOL, "size": 100, "sha256": "ab" * 32}],
                pages={"name": f"{FULL}.pages", "size": 50, "sha256": "cd" * 32}, index=None,
                config_bundle=f"{FULL}.bundle", warnings=1, job="nightly")
    base.update(kw)
    return Header(**base)


ROWS = [PageRow("", FULL, 0, 120, "0" * 32, 2),
        PageRow("example.it/mario/Maildir/cur", FULL, 120, 300, "1" * 32, 40,
                Delta(["gone:2,S"], [["1793000000.M1P1.mail,S=10,W=12:2,", "RS", None]], [file_entry("new")]))]


def _round_trip_rows(rows):
    return [r.encode() for r in rows]


# --- pages and entries ------------------------------------------------------------------------
def test_page_round_trip():
    plain = catalog.encode_page(ENTRIES)
    back = catalog.decode_page_list(plain, "page")
    assert [e.encode() for e in back] == [e.encode() for e in ENTRIES]
    assert back[2].name == "raw-\udcff-name" and back[4].link == "subscriptions"


def test_entries_pickle_as_their_fields():
    """A forked ``find`` sends its half of the answer back pickled: every kind of entry comes
    back equal, and as a call with its fields (no per-entry dict of slots)."""
    import pickle

    entries = [Entry("1764.M1P2.h,S=10:2,S", "f", 0o600, 5000, 5000, -1, 10, 7, "ab" * 32,
                     [[f"{'0' * 8}.v0001", 4, 9, 0, 10]]),
               Entry("cur", "d", 0o700, 0, 0, 1 << 62, 0),
               Entry("link", "l", 0o777, 0, 0, 1, 4, 3, None, None, "../x\udcff"),
               Entry("slim", "f", 0o600, 1, 2, 3, 4, 5, "cd" * 32, None)]
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(entries, protocol=proto)
        assert pickle.loads(data) == entries and b"mtime_ns" not in data


def test_sealed_page_round_trip(sealer):
    aad = layout.page_aad(RID, CHAIN, FULL, 0)
    sealed = sealer.seal(catalog.compress(catalog.encode_page(ENTRIES)), aad)
    plain = catalog.decompress(sealer.open(sealed, aad, "page"), "page", catalog.MAX_PAGE_PLAIN)
    assert [e.encode() for e in catalog.decode_page_list(plain, "page")] == [e.encode() for e in ENTRIES]
    with pytest.raises(CorruptObject):
        sealer.open(sealed, layout.page_aad(RID, CHAIN, FULL, 120), "page")


@pytest.mark.parametrize("raw", [
    None, {}, [], ["x"] * 9, ["x", "f", 0o600, 0, 0, 0, 10, 0, None, []],              # file without hash
    ["x", "q", 0o600, 0, 0, 0, 0, 0, None, None],                                      # unknown type
    ["x", "f", 0o600, 0, 0, 0, 10, 0, "a" * 64, [[VOL, 0, 100, 0, 9]]],                 # extents != size
    ["x", "f", 0o600, 0, 0, 0, 10, 0, "a" * 64, [["../etc/passwd", 0, 100, 0, 10]]],    # not a volume
    ["x", "f", 0o600, 0, 0, 0, 10, 0, "a" * 64, [[VOL, 0, 1 << 30, 0, 10]]],            # bigger than a block
    ["x", "d", 0o10000, 0, 0, 0, 0, 0, None, None],                                    # mode out of range
    ["x", "d", 0o755, -1, 0, 0, 0, 0, None, None],                                     # negative uid
    ["x", "d", 0o755, 1 << 32, 0, 0, 0, 0, None, None],                                # uid beyond uid_t
    ["x", "d", 0o755, 0, 0, 0, True, 0, None, None],                                   # bool is no number
    ["x", "l", 0o777, 0, 0, 0, 0, 0, None, ""],                                        # link without target
    ["x", "l", 0o777, 0, 0, 0, 0, 0, None, "a\0b"],
])
def test_malformed_entries_are_corrupt(raw):
    with pytest.raises(CorruptObject):
        catalog.decode_entry(raw, "page")


def test_delta_round_trip_and_maildir_renames():
    old = [file_entry("a:2,S"), file_entry("b:2,S"), file_entry("c")]
    a = old[0]                                   # a flag change: same file, new name and mtime
    renamed = Entry("a:2,RS", a.type, a.mode, a.uid, a.gid, a.mtime_ns + 1, a.size, a.ino, a.hash, a.extents)
    new = [renamed, file_entry("c"), file_entry("d")]
    delta = catalog.make_delta(old, new, maildir=True)
    assert delta.dels == ["b:2,S"] and delta.rens == [["a:2,S", ":2,RS", renamed.mtime_ns]]
    assert [e.name for e in delta.puts] == ["d"]
    back = catalog.decode_delta(delta.encode(), "delta")
    assert [e.encode() for e in catalog.apply_delta(old, back, "delta")] == [e.encode() for e in new]
    # outside Maildir a rename is a delete and a put
    plain = catalog.make_delta(old, new, maildir=False)
    assert plain.rens == [] and "a:2,S" in plain.dels
    assert catalog.decode_delta(None, "delta") is None


def test_a_delta_validates_its_entries_when_they_are_used():
    good, other = file_entry("good"), file_entry("other")
    bad = other.encode()
    bad[9] = [["not a volume", 0, 1, 0, other.size]]            # a malformed extent
    raw = {"del": [], "ren": [], "put": [good.encode(), bad]}
    delta = catalog.decode_delta(raw, "delta")
    assert delta.size == 2
    keep, names = delta.wanted_puts({good.hash[:32]})            # only the wanted entry is decoded
    assert [e.encode() for e in keep] == [good.encode()] and names == ["other"]
    with pytest.raises(CorruptObject, match="extent"):
        delta.wanted_puts({other.hash[:32]})
    with pytest.raises(CorruptObject, match="extent"):
        delta.puts
    for raw_bad, part in (({"del": [1], "ren": [], "put": []}, "dels"), ({"del": [], "ren": [["a", 1, None]], "put": []}, "rens"),
                          ({"del": [], "ren": [["a", ":2,S", "x"]], "put": []}, "rens")):
        bad_delta = catalog.decode_delta(raw_bad, "delta")
        with pytest.raises(CorruptObject, match="malformed|bad number"):
            getattr(bad_delta, part)
    for shape in ([["x"]], ["x"], [[1, "f", 0, 0, 0, 0, 0, 0, None, None]]):
        bad_delta = catalog.decode_delta({"del": [], "ren": [], "put": shape}, "delta")
        with pytest.raises(CorruptObject, match="malformed entry"):
            bad_delta.wanted_puts({good.hash[:32]})
        with pytest.raises(CorruptObject, match="malformed entry"):
            bad_delta.puts


def test_a_delta_renaming_what_its_base_lacks_is_corrupt():
    delta = Delta([], [["missing:2,S", ":2,RS", None]], [])
    with pytest.raises(CorruptObject, match="does not have"):
        catalog.apply_delta([file_entry("a:2,S")], delta, "delta")


# --- catalogs ---------------------------------------------------------------------------------
def test_full_catalog_round_trip(sealer):
    h = header()
    data = catalog.encode_catalog(h, {"pages": ROWS}, ["a warning"], sealer, RID)
    assert data.startswith(CATALOG_MAGIC)
    got, body_at = catalog.decode_catalog_header(data, sealer, RID, CHAIN, FULL)
    assert got.as_dict() == h.as_dict()
    table, warnings = catalog.decode_catalog_body(data[body_at:], sealer, RID, CHAIN, FULL)
    assert warnings == ["a warning"]
    assert table.rows is not None and _round_trip_rows(table.rows) == _round_trip_rows(ROWS)


def test_incremental_catalog_round_trip(sealer):
    h = header(INC, seq=3, parent=FULL, kind="incremental", volumes=[], pages=None, config_bundle=None, job=None)
    table = {"base": FULL, "depth": 3, "changed": ROWS[1:], "removed": ["example.it/old"]}
    data = catalog.encode_catalog(h, table, [], sealer, RID)
    got, body_at = catalog.decode_catalog_header(data, sealer, RID, CHAIN, INC)
    assert got.as_dict() == h.as_dict()
    t, warnings = catalog.decode_catalog_body(data[body_at:], sealer, RID, CHAIN, INC)
    assert (t.rows, t.base, t.depth, t.removed, warnings) == (None, FULL, 3, ["example.it/old"], [])
    assert _round_trip_rows(t.changed) == _round_trip_rows(ROWS[1:])


def test_at_most_1000_warnings_are_kept(sealer):
    data = catalog.encode_catalog(header(), {"pages": ROWS}, [f"w{i}" for i in range(1500)], sealer, RID)
    _, at = catalog.decode_catalog_header(data, sealer, RID, CHAIN, FULL)
    assert len(catalog.decode_catalog_body(data[at:], sealer, RID, CHAIN, FULL)[1]) == 1000


@pytest.fixture
def encoded(sealer):
    return sealer, catalog.encode_catalog(header(), {"pages": ROWS}, [], sealer, RID)


def test_a_catalog_moved_elsewhere_does_not_open(encoded):
    sealer, data = encoded
    for chain, snap, rid in ((CHAIN, "20261128T023001Z-full", RID), ("0002-20261128T023000Z", FULL, RID),
                             (CHAIN, FULL, "f" * 32)):
        with pytest.raises(CorruptObject):
            catalog.decode_catalog_header(data, sealer, rid, chain, snap)


def test_a_header_naming_another_snapshot_is_corrupt(sealer):
    """Sealed for this place, but saying it is another snapshot: refused all the same."""
    h = header()
    h.id = "20261128T023001Z-full"
    head = sealer.seal(catalog.dumps(h.as_dict()), layout.head_aad(RID, CHAIN, FULL))
    data = CATALOG_MAGIC + catalog.U32.pack(len(head)) + head
    with pytest.raises(CorruptObject, match="names another snapshot"):
        catalog.decode_catalog_header(data, sealer, RID, CHAIN, FULL)


def test_every_truncation_is_corrupt(encoded):
    sealer, data = encoded
    _, body_at = catalog.decode_catalog_header(data, sealer, RID, CHAIN, FULL)
    for n in range(body_at):
        with pytest.raises(CorruptObject):
            catalog.decode_catalog_header(data[:n], sealer, RID, CHAIN, FULL)
    for n in range(body_at, len(data), 7):
        with pytest.raises(CorruptObject):
            catalog.decode_catalog_body(data[body_at:n], sealer, RID, CHAIN, FULL)


def test_any_flipped_byte_is_corrupt(encoded):
    sealer, data = encoded
    _, body_at = catalog.decode_catalog_header(data, sealer, RID, CHAIN, FULL)
    for i in range(0, len(data), 3):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(CorruptObject):
            h, at = catalog.decode_catalog_header(bytes(bad), sealer, RID, CHAIN, FULL)
            catalog.decode_catalog_body(bytes(bad)[at:], sealer, RID, CHAIN, FULL)


@pytest.mark.parametrize("data", [
    b"", b"garbage", CATALOG_MAGIC, CATALOG_MAGIC + b"\x00\x00", b"DMCAT2\n" + bytes(40),
    CATALOG_MAGIC + catalog.U32.pack(0xFFFFFFFF) + b"x" * 100,       # claims a 4 GiB header
    CATALOG_MAGIC + catalog.U32.pack(catalog.MAX_HEADER) + b"x" * 100,  # claims 16 MiB, holds 100 bytes
    CATALOG_MAGIC + catalog.U32.pack(10) + os.urandom(10) + os.urandom(1000),
])
def test_garbage_headers_are_refused_quickly(sealer, data):
    t0 = time.monotonic()
    with pytest.raises(CorruptObject):
        catalog.decode_catalog_header(data, sealer, RID, CHAIN, FULL)
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("body", [{}, [], "x", {"pages": "x"}, {"pages": [["", FULL, 0, 0, "0" * 32, 0, None]]},
                                  {"base": FULL, "depth": 0, "changed": [], "removed": []},
                                  {"base": FULL, "depth": 1, "changed": [], "removed": [1]},
                                  {"base": 7, "depth": 1, "changed": [], "removed": []},
                                  {"pages": [["", FULL, 0, 10, "0" * 32, 0, "not a delta"]]}])
def test_malformed_bodies_are_corrupt(sealer, body):
    sealed = sealer.seal(catalog.compress(catalog.dumps(body)), layout.body_aad(RID, CHAIN, FULL))
    with pytest.raises(CorruptObject):
        catalog.decode_catalog_body(sealed, sealer, RID, CHAIN, FULL)


@pytest.mark.parametrize("change", [
    {"format": 2}, {"kind": "differential"}, {"time": "yesterday"}, {"seq": "0"}, {"files": True},
    {"root": [0o755, 0, 0]}, {"root": [0o20000, 0, 0, 0]}, {"volumes": [{"name": "../x", "size": 1, "sha256": ""}]},
    {"volumes": [{"name": f"{FULL}.pages", "size": 1, "sha256": ""}]}, {"pages": {"name": VOL}},
    {"parent": 5}, {"config_bundle": ["x"]}, {"hostname": None},
])
def test_malformed_headers_are_corrupt(change):
    raw = {**header().as_dict(), **change}
    with pytest.raises(CorruptObject):
        catalog.decode_header(raw, "catalog")


def test_decode_header_ignores_unknown_fields():
    """A later format-1 writer may add a header field; readers that do not know it ignore it."""
    raw = {**header().as_dict(), "future_field": {"x": 1}}
    assert catalog.decode_header(raw, "catalog").as_dict() == header().as_dict()


# --- zstd under caps ----------------------------------------------------------------------------
def test_decompress_refuses_a_frame_larger_than_allowed_before_inflating():
    frame = catalog.compress(b"\0" * 100_000)              # declares its size
    assert catalog.decompress(frame, "x", 100_000) == b"\0" * 100_000
    with pytest.raises(CorruptObject, match="claims"):
        catalog.decompress(frame, "x", 99_999)


def test_decompress_caps_a_frame_that_declares_no_size():
    cobj = zstandard.ZstdCompressor().compressobj()
    frame = cobj.compress(b"\0" * 100_000) + cobj.flush()
    assert zstandard.frame_content_size(frame) == -1
    assert catalog.decompress(frame, "x", 100_000) == b"\0" * 100_000
    with pytest.raises(CorruptObject, match="inflates beyond"):
        catalog.decompress(frame, "x", 99_999)


@pytest.mark.parametrize("data", [b"", b"not zstd", catalog.compress(b"x" * 1000)[:-3]])
def test_decompress_garbage_is_corrupt(data):
    with pytest.raises(CorruptObject):
        catalog.decompress(data, "x", 1 << 20)


def test_page_table_rows_are_checked_field_by_field():
    """decode_rows checks inline what _int checks: every number a non-bool int in its range."""
    from dmbackup.archive.catalog import MAX_PAGE_PLAIN, decode_rows

    good = ["a/cur", "20261128T023000Z-full", 0, 1, "ab" * 16, 0, None]
    assert decode_rows([good], "t")[0].encode() == good
    edge = ["a/cur", "20261128T023000Z-full", 1 << 63, MAX_PAGE_PLAIN, "ab" * 16, 1 << 63,
            {"del": [], "ren": [], "put": []}]
    assert decode_rows([edge], "t")[0].offset == 1 << 63
    bad_values = {2: [-1, True, 1.0, "0", None, (1 << 63) + 1], 3: [0, True, -1, MAX_PAGE_PLAIN + 1, 2.0],
                  5: [-1, False, "3", (1 << 63) + 1], 0: [None, 1, b"x"], 1: [None, 2], 4: [None, 3],
                  6: [[], "x", 1]}
    for i, values in bad_values.items():
        for v in values:
            row = list(good)
            row[i] = v
            with pytest.raises(CorruptObject):
                decode_rows([row], "t")
    for shape in ([good[:6]], [good + [None]], [tuple(good)], ["row"], {"a": good}):
        with pytest.raises(CorruptObject):
            decode_rows(shape, "t")


def test_file_extents_are_checked_field_by_field():
    """decode_entry checks each extent inline (the restore of 46,000 files decodes 100,000
    entries): every bad value is still refused with CorruptObject, none slips through."""
    from dmbackup.archive.catalog import MAX_SEALED_BLOCK, decode_entry
    from dmbackup.archive import BLOCK_SIZE

    vol = "20261128T023000Z-full.v0001"

    def entry(*exts):
        return ["m", "f", 0o600, 0, 0, 0, sum(x[4] for x in exts if isinstance(x[4], int)), 1, "a" * 64,
                [list(x) for x in exts]]

    good = (vol, 1 << 40, MAX_SEALED_BLOCK, 0, BLOCK_SIZE)
    assert decode_entry(entry(good), "t").extents == [list(good)]
    assert decode_entry(entry((vol, 0, 0, 10, 5), (vol, 3, 4, 0, 0)), "t").size == 5
    bad = [(vol + "x", 0, 1, 0, 1), ("../x", 0, 1, 0, 1), (None, 0, 1, 0, 1), ([vol], 0, 1, 0, 1),
           ({}, 0, 1, 0, 1), (vol, -1, 1, 0, 1), (vol, (1 << 40) + 1, 1, 0, 1), (vol, True, 1, 0, 1),
           (vol, 0, MAX_SEALED_BLOCK + 1, 0, 1), (vol, 0, 1.0, 0, 1), (vol, 0, 1, -1, 1),
           (vol, 0, 1, BLOCK_SIZE, 1), (vol, 0, 1, 0, BLOCK_SIZE + 1), (vol, 0, 1, 0, "1"), (vol, 0, 1, False, 1)]
    for x in bad:
        with pytest.raises(CorruptObject):
            decode_entry(entry(x), "t")
        with pytest.raises(CorruptObject):          # after a good extent of the same volume
            decode_entry(entry(good, x), "t")
    for shape in ([vol, 0, 1, 0], (vol, 0, 1, 0, 1), [vol, 0, 1, 0, 1, 2], vol):
        raw = entry(good)
        raw[9] = [shape]
        with pytest.raises(CorruptObject):
            decode_entry(raw, "t")
    raw = entry((vol, 0, 1, 0, 1))
    raw[6] = 2                                        # extents do not add up
    with pytest.raises(CorruptObject):
        decode_entry(raw, "t")
