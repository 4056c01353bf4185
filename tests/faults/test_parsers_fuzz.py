"""Property tests over everything that parses bytes read from a repository: whatever the input,
the parser returns a value or raises ``DmError`` (usually ``CorruptObject``), never another
exception (that would reach the administrator as a traceback).

Inputs come three ways: arbitrary bytes / JSON values; *near-valid* structures (the right
shape with fields of random types and sizes); and valid objects sealed with a ``PlainSealer``
and then mutated, so the parsers are reached past their integrity check. CI runs a fixed,
derandomized sample; ``DMBACKUP_FAULT_SWEEP=full`` runs 20x more random examples.
"""

from __future__ import annotations

import base64
import json
import struct

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dmbackup.archive import crypto
from dmbackup.archive import CATALOG_MAGIC
from dmbackup.archive.blocks import FRAME, walk_volume
from dmbackup.archive.catalog import (
    compress,
    decode_catalog_body,
    decode_catalog_header,
    decode_delta,
    decode_entry,
    decode_header,
    decode_page_list,
    decode_rows,
    dumps,
)
from dmbackup.archive.layout import body_aad, head_aad
from dmbackup.errors import DmError
from tests.faults.conftest import FULL_SWEEP

SETTINGS = settings(
    max_examples=3000 if FULL_SWEEP else 100,
    derandomize=not FULL_SWEEP,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

# --- strategies ------------------------------------------------------------------------------
ints = st.one_of(st.integers(-3, 3), st.integers(), st.sampled_from([0, 1 << 32, (1 << 32) - 1, 1 << 40,
                                                                      (1 << 40) + 1, 1 << 63, -(1 << 63), 1 << 64]))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=True), st.text(max_size=12),
                    st.sampled_from(["f", "d", "l", "c", "", "..", "/", "a\0b", "\ud800", "0" * 64]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=6), inner, max_size=6)), max_leaves=30)


def one_of_or(valid, *alts):
    return st.one_of(valid, *alts, json_values)


hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
extent = st.one_of(st.lists(one_of_or(st.text(max_size=8)), min_size=5, max_size=5).map(list),
                   st.tuples(st.text(max_size=8), ints, ints, ints, ints).map(list), json_values)
entry = st.one_of(
    st.tuples(st.text(max_size=10), st.sampled_from(["f", "d", "l", "x", "c"]), ints, ints, ints, ints, ints,
              ints, one_of_or(hex64), one_of_or(st.lists(extent, max_size=4), st.text(max_size=8))).map(list),
    json_values,
)
delta = st.one_of(
    st.fixed_dictionaries({"del": one_of_or(st.lists(st.text(max_size=6), max_size=4)),
                           "ren": one_of_or(st.lists(st.one_of(
                               st.tuples(st.text(max_size=6), st.text(max_size=6), st.one_of(st.none(), ints)).map(list),
                               json_values), max_size=4)),
                           "put": one_of_or(st.lists(entry, max_size=3))}),
    json_values,
)
row = st.one_of(
    st.tuples(st.text(max_size=10), st.text(max_size=24), ints, ints, st.text(max_size=32), ints,
              st.one_of(st.none(), delta)).map(list),
    json_values,
)
VALID_HEADER = {"id": "20261128T023000Z-full", "chain": "0001-20261128T023000Z", "seq": 0, "parent": None,
                "kind": "full", "what": "mail", "time": "2026-11-28T02:30:00Z", "hostname": "mx",
                "files": 1, "dirs": 1, "bytes": 1, "stored_bytes": 1, "root": [493, 0, 0, 0],
                "volumes": [{"name": "20261128T023000Z-full.v0001", "size": 10, "sha256": "0" * 64}],
                "pages": None, "index": None, "config_bundle": None, "warnings": 0, "job": None, "format": 1}
header = st.one_of(
    st.fixed_dictionaries({k: st.one_of(st.just(v), json_values) for k, v in VALID_HEADER.items()}),
    st.dictionaries(st.sampled_from(list(VALID_HEADER)), json_values),
    json_values,
)


def expect_dm_error(fn, *args):
    try:
        return fn(*args)
    except DmError:
        return None


# --- the JSON-level decoders -----------------------------------------------------------------
@SETTINGS
@given(entry)
@example(["a", "f", 0, 0, 0, 0, 5, 0, "0" * 64, [["v", 0, 1, 0, True]]])
@example(["a", "f", 0, 0, 0, 0, 1 << 41, 0, "0" * 64, [["v", 0, 1, 0, 1 << 41]]])
def test_decode_entry(raw):
    expect_dm_error(decode_entry, raw, "fuzz")


@SETTINGS
@given(st.one_of(st.binary(max_size=200), st.lists(entry, max_size=4).map(lambda x: json.dumps(x).encode()),
                 json_values.map(lambda x: json.dumps(x).encode())))
@example(b"[" * 100000)
@example(b'"\\ud800"')
@example(b"\xff\xfe")
def test_decode_page_list(data):
    expect_dm_error(decode_page_list, data, "fuzz")


@SETTINGS
@given(st.one_of(st.lists(row, max_size=4), json_values))
def test_decode_rows(raw):
    expect_dm_error(decode_rows, raw, "fuzz")


@SETTINGS
@given(delta)
def test_decode_delta(raw):
    d = expect_dm_error(decode_delta, raw, "fuzz")
    if d is not None:                     # puts are validated when used: fuzz that too
        expect_dm_error(d.wanted_puts, {"0" * 32})
        expect_dm_error(lambda: d.dels)
        expect_dm_error(lambda: d.rens)
        expect_dm_error(lambda: d.puts)
        expect_dm_error(d.encode)


@SETTINGS
@given(header)
@example({**VALID_HEADER, "bogus": 1})
@example({**VALID_HEADER, "format": True})
def test_decode_header(raw):
    expect_dm_error(decode_header, raw, "fuzz")


# --- sealed catalogs (PlainSealer: integrity only, so we can seal anything) -------------------
REPO, CHAIN, SNAP = "r" * 32, "0001-20261128T023000Z", "20261128T023000Z-full"
plain = crypto.PlainSealer()


def catalog_bytes(head_obj, body_obj, *, head_raw: bytes | None = None, body_raw: bytes | None = None,
                  compressed: bool = True) -> bytes:
    head = plain.seal(head_raw if head_raw is not None else dumps(head_obj), head_aad(REPO, CHAIN, SNAP))
    bplain = body_raw if body_raw is not None else dumps(body_obj)
    body = plain.seal(compress(bplain) if compressed else bplain, body_aad(REPO, CHAIN, SNAP))
    return CATALOG_MAGIC + struct.pack("<I", len(head)) + head + body


body = st.one_of(
    st.fixed_dictionaries({"pages": st.one_of(st.lists(row, max_size=3), json_values)}),
    st.fixed_dictionaries({"base": one_of_or(st.just(SNAP)), "depth": one_of_or(st.integers(0, 1001)),
                           "changed": one_of_or(st.lists(row, max_size=3)),
                           "removed": one_of_or(st.lists(st.text(max_size=5), max_size=3)),
                           "warnings": json_values}),
    json_values,
)
mutation = st.tuples(st.integers(0, 10**6), st.integers(1, 255), st.sampled_from(["flip", "cut", "none"]))


def mutate(data: bytes, m) -> bytes:
    pos, mask, how = m
    if how == "none" or not data:
        return data
    pos %= len(data)
    if how == "cut":
        return data[:pos]
    return data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1:]


def parse_catalog(data: bytes):
    h, start = decode_catalog_header(data, plain, REPO, CHAIN, SNAP)
    return h, decode_catalog_body(data[start:], plain, REPO, CHAIN, SNAP)


@SETTINGS
@given(header, body, mutation, st.booleans())
def test_decode_catalog_sealed_then_mutated(h, b, m, compressed):
    try:
        data = catalog_bytes(h, b, compressed=compressed)
    except (TypeError, ValueError, UnicodeEncodeError):
        return                    # not serializable: not an input a writer could produce
    expect_dm_error(parse_catalog, mutate(data, m))


@SETTINGS
@given(st.binary(max_size=300), st.binary(max_size=300))
@example(b"[" * 50000, b"{}")
@example(dumps({**VALID_HEADER, "id": SNAP}), b"\x28\xb5\x2f\xfd" + b"\x00" * 20)   # a zstd frame header, no data
def test_decode_catalog_raw_bodies(head_raw, body_raw):
    data = catalog_bytes(None, None, head_raw=head_raw, body_raw=body_raw, compressed=False)
    expect_dm_error(parse_catalog, data)
    expect_dm_error(parse_catalog, data[: len(data) // 2])


@SETTINGS
@given(st.binary(max_size=400))
@example(CATALOG_MAGIC + b"\xff\xff\xff\xff")
@example(CATALOG_MAGIC)
def test_decode_catalog_random_bytes(data):
    expect_dm_error(parse_catalog, data)
    expect_dm_error(parse_catalog, CATALOG_MAGIC + data)


# --- volumes --------------------------------------------------------------------------------
frames = st.lists(st.binary(max_size=40), max_size=6).map(lambda bs: b"".join(FRAME.pack(len(b)) + b for b in bs))


@SETTINGS
@given(st.one_of(st.binary(max_size=300), frames), mutation)
@example(b"\x00\x00\x00\x00", (0, 1, "none"))
@example(b"\xff\xff\xff\xff" + b"x", (0, 1, "none"))
def test_walk_volume(data, m):
    expect_dm_error(lambda d: list(walk_volume(d)), mutate(data, m))


# --- the key file ----------------------------------------------------------------------------
b64 = st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode())
SMALL_N = st.sampled_from([2, 4, 16, 1024, 3, 1000, 0, -2])       # keeps scrypt cheap
keydoc = st.fixed_dictionaries({
    "version": one_of_or(st.just(1)), "kdf": one_of_or(st.just("scrypt")),
    "n": one_of_or(SMALL_N), "r": one_of_or(st.integers(1, 4)), "p": one_of_or(st.just(1)),
    "salt": one_of_or(b64), "nonce": one_of_or(b64), "wrapped": one_of_or(b64)})


def _cheap(doc) -> bool:
    """Skip documents whose scrypt parameters would cost real memory or time."""
    try:
        n, r, p = int(doc["n"]), int(doc["r"]), int(doc["p"])
    except Exception:
        return True
    return n <= 1 << 12 and r <= 8 and p <= 2


def unwrap(data: bytes):
    return crypto.unwrap_master(data, b"passphrase", "r" * 32)


UNWRAP_BUG = (
    "bug: crypto.unwrap_master (dmbackup/archive/crypto.py) lets non-DmError exceptions out for a damaged "
    "key file: a JSON list or string (AttributeError on doc.get), a non-string salt/nonce/wrapped "
    "(AttributeError in unb64), n = 1e400 (OverflowError in int()), n not a power of two "
    "(ValueError from Scrypt, outside the try), a nonce shorter than 8 bytes (ValueError from "
    "AESGCM.decrypt, which only InvalidTag is caught for), deep nesting (RecursionError). "
    "Suggest: validate every field's type and the nonce length, require n to be a power of two, "
    "and wrap derive_kek/decrypt errors into CorruptObject")


@SETTINGS
@given(st.binary(max_size=200))
@example(b"0")
@example(b"[" * 100000)
def test_unwrap_master_random_bytes(data):
    expect_dm_error(unwrap, data)


@SETTINGS
@given(st.one_of(keydoc, json_values))
@example([1, 2])
@example({"version": 1, "kdf": "scrypt", "n": 16, "r": 1, "p": 1, "salt": 5, "nonce": "", "wrapped": ""})
@example({"version": 1, "kdf": "scrypt", "n": 1000, "r": 1, "p": 1, "salt": "", "nonce": "AAAAAAAAAAAAAAAA",
          "wrapped": ""})
@example({"version": 1, "kdf": "scrypt", "n": 16, "r": 1, "p": 1, "salt": "", "nonce": "AAAA", "wrapped": ""})
def test_unwrap_master_structured(doc):
    if isinstance(doc, dict) and not _cheap(doc):
        return
    try:
        data = json.dumps(doc).encode()
    except (TypeError, ValueError):
        return
    expect_dm_error(unwrap, data)
