"""dmbackup.archive.contentindex: what a lookup answers is exactly what was added, however
many records share the first bytes of their keys (the lookup narrows by the first two)."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from dmbackup.archive.contentindex import Index, IndexBuilder

VOL = "20261202T000000Z-full.v0001"


def build(items: dict[str, list]) -> Index:
    b = IndexBuilder()
    for h, ext in items.items():
        b.add(h, ext)
    return Index(bytes(b.encode()))


# keys drawn from few two-byte prefixes, so many records share them (and some share more)
hexkey = st.tuples(st.sampled_from(["0000", "00ff", "ff00", "ffff", "abcd", "abce", "7f80"]),
                   st.sampled_from(["", "00", "ff", "0a0b"]),
                   st.binary(min_size=16, max_size=16)).map(lambda t: (t[0] + t[1] + t[2].hex())[:64])


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(st.dictionaries(hexkey, st.integers(0, 2 ** 32 - 1), max_size=120), st.lists(hexkey, max_size=40))
def test_lookups_answer_exactly_what_was_added(stored, probes):
    items = {h: [[VOL, off, 100, 0, 10]] for h, off in stored.items()}
    idx = build(items)
    model = {h[:32]: [[VOL, off, 100, 0, 10]] for h, off in stored.items()}
    for h in list(stored) + probes:
        assert idx.get(h) == model.get(h[:32])


def test_large_index_misses_and_hits_and_big_contents():
    hs = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20_000)]
    items = {h: [[VOL, i, 100, 0, 10]] for i, h in enumerate(hs)}
    items["ab" * 32] = [[VOL, 1, 2, 3, 4], [VOL, 5, 6, 7, 8]]        # spans two blocks: kept in "big"
    idx = build(items)
    assert all(idx.get(h) == [[VOL, i, 100, 0, 10]] for i, h in enumerate(hs))
    assert idx.get("ab" * 32) == [[VOL, 1, 2, 3, 4], [VOL, 5, 6, 7, 8]]
    for i in range(2000):
        assert idx.get(hashlib.sha256(b"absent %d" % i).hexdigest()) is None
    assert idx.get(hs[0][:4] + "0" * 60) is None                        # same first two bytes only
    assert idx.get("") is None and idx.get("ab") is None and build({}).get(hs[0]) is None
