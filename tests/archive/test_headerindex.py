"""The header index (issue 15): extraction, the record codec, folding and queries.

Extraction is checked against tests/data/awkward-mail/EXPECTED.json, written by hand from
the .eml files; the codec by round trips (hypothesis) and by damaged and hostile inputs,
which must raise HeaderIndexError quickly without large allocations.
"""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmbackup.archive import headerindex as hx, headerparse
from dmbackup.archive.headerindex import (
    MAX_KEY, MAX_TEXT, HeaderIndexError, Headers, IndexWriter, Query, Record, decode, fold,
)
from dmbackup.archive.headerparse import extract

DATA = Path(__file__).resolve().parent.parent / "data" / "awkward-mail"
EXPECTED: dict = json.loads((DATA / "EXPECTED.json").read_text(encoding="utf-8"))["files"]
MAIL = sorted(n for n, e in EXPECTED.items() if e is not None)

# As tests/faults: reproducible by default, a long random sweep with DMBACKUP_FAULT_SWEEP=full.
FULL_SWEEP = os.environ.get("DMBACKUP_FAULT_SWEEP", "") == "full"
SETTINGS = settings(max_examples=3000 if FULL_SWEEP else 150, derandomize=not FULL_SWEEP, deadline=None,
                    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def utc(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


@pytest.fixture(scope="module")
def corpus() -> dict[str, Headers]:
    return {name: extract(load(name)) for name in MAIL}


# --------------------------------------------------------------------------- extraction

def test_every_file_has_an_expectation():
    files = {p.name for p in DATA.iterdir() if p.suffix == ".eml"}
    assert files == set(EXPECTED)
    assert len(MAIL) >= 15


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_extract_matches_expected(name):
    exp = EXPECTED[name]
    h = extract(load(name))
    if exp is None:
        assert h is None
        return
    assert h is not None
    got = {"message_id": h.message_id, "date": h.date, "from": h.from_, "to": h.to, "cc": h.cc,
           "subject": h.subject, "attachments": h.attachments,
           "problems": sorted(hx.problem_names(h.problems))}
    want = {"message_id": exp["message_id"], "date": utc(exp["date"]) if exp["date"] else None,
            "from": exp["from"], "to": exp["to"], "cc": exp.get("cc", ""), "subject": exp["subject"],
            "attachments": exp["attachments"], "problems": sorted(exp["problems"])}
    assert got == want


@pytest.mark.parametrize("name", MAIL)
def test_extract_in_place_in_a_larger_buffer_is_the_same(name):
    """The block workers pass a whole block and the message's place in it (no copy)."""
    msg = load(name)
    block = b"From x\nSubject: before\n\nbody\n" + msg + b"Subject: after\n\n" + os.urandom(100)
    start = block.index(msg)
    assert extract(block, start=start, end=start + len(msg)) == extract(msg)
    assert extract(block, start=start, end=start + len(msg), cap=200) == extract(msg, cap=200)


def test_header_block_alone_is_enough_except_for_the_body_scan():
    for name in MAIL:
        data = load(name)
        end = data.find(b"\n\n")
        if end < 0:
            continue
        full, head = extract(data), extract(data[:end + 2])
        assert head._replace(attachments=full.attachments) == full, name
    # multipart/mixed is decided by the top header; an attachment inside multipart/related
    # is seen only in the bytes handed over (documented).
    data = load("multipart-mixed-attachment.eml")
    assert extract(data[:data.find(b"\n\n") + 2]).attachments
    data = load("related-with-attachment.eml")
    assert not extract(data[:data.find(b"\n\n") + 2]).attachments
    assert extract(data).attachments


def test_extract_accepts_buffers_and_a_smaller_cap():
    data = load("utf8-b-subject.eml")
    assert extract(bytearray(data)) == extract(memoryview(data)) == extract(data)
    h = extract(data, cap=data.index(b"From:"))       # cut inside the header block
    assert h.problems & hx.P_NO_END and h.message_id == "utf8b.001@studio-rossi.it"
    assert h.date == utc("2025-11-03T08:15:00Z") and h.from_ == h.subject == ""


def test_long_fields_are_cut_to_max_text():
    to = ", ".join(f"Destinatario {i} <dest{i}@example.it>" for i in range(400))
    h = extract(f"From: a@b\nTo: {to}\nSubject: {'x' * 9000}\n\nbody\n".encode())
    assert len(h.to) == MAX_TEXT and to.startswith(h.to)
    assert h.subject == "x" * MAX_TEXT


def test_encoded_word_details():
    def subj(s: str) -> str:
        return extract(b"Subject: " + s.encode() + b"\n\n").subject

    assert subj("=?utf-8?q?a?= =?utf-8?q?b?=") == "ab"                 # space between words dropped
    assert subj("=?utf-8?q?a?= b =?utf-8?q?c?=") == "a b c"
    assert subj("=?UTF-8*it?Q?perch=C3=A9?=") == "perché"              # RFC 2231 language
    assert subj("Re:=?utf-8?b?w6g=?=") == "Re:è"                       # glued to text
    assert subj("=?utf-8?b?w6g?=") == "è"                              # padding missing
    assert subj("=?rot13?q?nop?=") == "nop"                            # not a text codec: Latin-1
    assert subj("=?utf-8?q?unterminated") == "=?utf-8?q?unterminated"


K = 65536
PATHOLOGICAL = {
    "escaped quotes": b"From: " + b'"a\\' * 20000,
    "unterminated quote": b'From: "' + b"a" * 65000,
    "encoded-word starts": b"Subject: " + b"=?" * (K // 2),
    "unterminated encoded words": b"Subject: " + (b"=?utf-8?q?" + b"a" * 100) * 600,
    "adjacent encoded words": b"Subject: " + b"=?utf-8?q?a?= " * 4600,
    "folds": b"Subject: x" + b"\n " * 30000,
    "repeated fields": b"To: a\n" * 10000,
    "carriage returns": b"Subject: " + b"\r" * K,
    "dispositions": b"Content-Type: multipart/related\n\n" + b"content-disposition: inline\n" * 3000,
    "date junk": b"Date: " + b"1 " * 30000,
    "escapes": b"Subject: " + b"\x1b$B" * 20000,
}


@pytest.mark.parametrize("what", sorted(PATHOLOGICAL))
def test_pathological_headers_take_linear_time(what):
    t0 = time.perf_counter()
    h = headerparse._extract(PATHOLOGICAL[what], hx.HEADER_CAP, 0, len(PATHOLOGICAL[what]))
    assert time.perf_counter() - t0 < 0.5          # linear: ~10 ms; quadratic: seconds
    assert isinstance(h, Headers)


@SETTINGS
@given(st.binary(max_size=600))
def test_extract_never_raises(data):
    # the inner function: the outer guard must never be what keeps us alive
    h = headerparse._extract(data, hx.HEADER_CAP, 0, len(data))
    assert h is None or isinstance(h, Headers)


@SETTINGS
@given(st.sampled_from(MAIL), st.data())
def test_extract_survives_damaged_mail(name, data):
    raw = bytearray(load(name)[:3000])
    for _ in range(data.draw(st.integers(0, 8))):
        if raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    h = headerparse._extract(bytes(raw[:cut]), hx.HEADER_CAP, 0, cut)
    assert h is None or isinstance(h, Headers)


WANTED = (b"message-id", b"date", b"from", b"to", b"cc", b"subject", b"content-type", b"content-disposition")


def fields_by_lines(data: bytes, start: int, limit: int) -> tuple[dict[bytes, bytes], int]:
    """What ``headerparse._fields`` must return, read line by line: an independent statement
    of the rule. The block ends at the first empty line after a line break (``\\n\\n`` or
    ``\\n\\r\\n``); a field is a wanted name at a line start, in any case, optional blanks,
    a colon, and the rest of the line with each following line that begins with a blank; the
    first occurrence counts, and blanks before its colon are obsolete syntax."""
    lines = data[start:limit].split(b"\n")
    prob = hx.P_NO_END
    for k in range(1, len(lines) - 1):
        if lines[k] in (b"", b"\r"):
            lines, prob = lines[:k], 0
            break
    vals: dict[bytes, bytes] = {}
    for k, line in enumerate(lines):
        low = line.lower()
        name = next((n for n in WANTED if low.startswith(n) and low[len(n):].lstrip(b" \t")[:1] == b":"), None)
        if name is None or name in vals:
            continue
        rest = line[len(name):]
        blanks = len(rest) - len(rest.lstrip(b" \t"))
        value = [rest[blanks + 1:]]
        for more in lines[k + 1:]:
            if more[:1] not in (b" ", b"\t"):
                break
            value.append(more)
        vals[name] = b"\n".join(value)
        if blanks:
            prob |= hx.P_OBSOLETE
    return vals, prob


HEADERISH = st.lists(st.sampled_from([
    b"\n", b"\r\n", b"\n\n", b"\n\r\n", b"\r", b" ", b"\t", b":", b" :", b"x", b"X-Foo", b"token",
    b"Subject", b"SUBJECT", b"to", b"To", b"cc", b"From", b"from ", b"Date", b"Message-Id", b"content-type",
    b"Content-Disposition", b"=?utf-8?q?a?=", b"\xe9", b"<a@b>", b'"', b"\\",
]), max_size=50).map(b"".join)


# Both cuts: the compiled one (setup.py builds it; CI has a compiler, so it must be there)
# and the Python one it stands in for.
FIELDS_IMPLEMENTATIONS = [pytest.param(headerparse._fields_py, id="python"),
                          pytest.param(headerparse._fields_c, id="compiled")]


BITS = (hx.P_NO_END, hx.P_OBSOLETE)


def as_dict(cut) -> tuple[dict[bytes, bytes], int]:
    values, prob = cut
    assert len(values) == len(headerparse.SLOTS)
    return {n: v for n, v in zip(headerparse.SLOTS, values) if v is not None}, prob


def test_the_compiled_cut_is_built_and_used():
    assert headerparse._fields_c is not None, \
        "dmbackup.archive._hscan is not built: pip install -e . (needs gcc and the Python headers)"
    assert headerparse._fields is headerparse._fields_c


@pytest.mark.parametrize("cut", FIELDS_IMPLEMENTATIONS)
@SETTINGS
@given(st.one_of(HEADERISH, st.binary(max_size=300)), st.integers(0, 3), st.integers(0, 400))
def test_fields_follow_the_line_rule(cut, data, start, limit):
    start, limit = min(start, len(data)), min(max(start, limit), len(data))
    assert as_dict(cut(data, start, limit, *BITS)) == fields_by_lines(data, start, limit)


@SETTINGS
@given(st.one_of(HEADERISH, st.binary(max_size=600)), st.integers(-5, 700), st.integers(-5, 900))
def test_compiled_and_python_cuts_agree_on_any_bounds(data, start, limit):
    # bounds outside the buffer too: the compiled cut clamps them and never reads beyond it
    py = headerparse._fields_py(data, max(start, 0), min(limit, len(data)))
    assert headerparse._fields_c(data, start, limit, hx.P_NO_END, hx.P_OBSOLETE) == py


@pytest.mark.parametrize("cut", FIELDS_IMPLEMENTATIONS)
def test_compiled_and_python_cuts_agree_on_the_mail_corpus(cut):
    for name in MAIL:
        raw = load(name)
        for start, limit in ((0, len(raw)), (0, min(len(raw), 200)), (3, len(raw))):
            assert cut(raw, start, limit, *BITS) == headerparse._fields_py(raw, start, limit), name


@pytest.mark.parametrize("cut", FIELDS_IMPLEMENTATIONS)
def test_fields_of_a_folded_block_with_repeats_and_obsolete_syntax(cut):
    block = (b"Subject : first\n\tfolded\nsubject: second\nTO:a\n  b\nX-To: no\n"
             b"Tokens: no\nDate:\r\n\r\nFrom: body\n")
    vals, prob = as_dict(cut(block, 0, len(block), *BITS))
    assert vals == {b"subject": b" first\n\tfolded", b"to": b"a\n  b", b"date": b"\r"}
    assert prob == hx.P_OBSOLETE
    vals, prob = as_dict(cut(block, 0, 20, *BITS))          # cut inside the block: no end
    assert vals == {b"subject": b" first\n\tfol"} and prob == hx.P_NO_END | hx.P_OBSOLETE


def test_the_compiled_cut_takes_any_buffer_and_keeps_none():
    block = bytearray(b"From: a\nSubject: s\n\nbody")
    values, prob = headerparse._fields_c(memoryview(block), 0, len(block), hx.P_NO_END, hx.P_OBSOLETE)
    block[6] = ord("b")                               # the answer holds copies, not views
    assert values[2] == b" a" and values[5] == b" s" and prob == 0
    with pytest.raises(TypeError):
        headerparse._fields_c("From: a\n\n", 0, 9, hx.P_NO_END, hx.P_OBSOLETE)


DATEISH = st.tuples(
    st.sampled_from(["", " ", "  \t"]), st.sampled_from(["", "Tue, ", "Tue,", "tUE ,", "Tu, ", "Tue, \n "]),
    st.sampled_from(["7", "07", "0", "31", "29", "30", "123", ""]), st.sampled_from([" ", "\t\n ", ""]),
    st.sampled_from(["Jan", "feb", "FEB", "Foo", "Sept", "Fe", "d\xe9c"]), st.sampled_from([" ", ""]),
    st.sampled_from(["2024", "2023", "1900", "2000", "0000", "0001", "9999", "99", "20240"]),
    st.sampled_from([" ", ""]),
    st.sampled_from(["10:05", "10:05:32", "23:59:60", "24:00", "23:60", "7:05", "10:05:3", "10:05:", "00:00:61"]),
    st.sampled_from(["", " ", "  "]),
    st.sampled_from(["+0100", "-1130", "+2400", "+2359", "-0099", "+0099", "+01000", "0100", "+01", "", "GMT"]),
    st.sampled_from(["", " ", "(CET)", " (CET)", "x", "\n", "0", "\n\n"]),
).map(lambda t: "".join(t).encode("latin-1"))
TEXTISH = st.lists(st.sampled_from([
    b" ", b"\t", b"\n ", b"\r\n\t", b"\x00", b"\x07", b"\x1c", b"\x1f", b"\x7f", b"\x1b$B", b"\x1b", b"=?",
    b"=?utf-8?q?caf=C3=A9?=", b"?=", b"=", b"<", b">", b"<a@b>", b"a", b"Re:", b"\xe9", b"\xc3\xa9", b'"', b"x" * 40,
]), max_size=30).map(b"".join)


@SETTINGS
@given(st.one_of(DATEISH, st.binary(max_size=60)))
def test_the_compiled_date_gives_the_python_answer_or_declines(raw):
    got = headerparse._date_c(raw)
    headerparse._DAY_OF.clear()
    headerparse._ZONE_OF.clear()
    want = headerparse._date(raw)
    assert got is False or (got == want and type(got) is type(want)), (raw, got, want)


def test_the_compiled_date_answers_for_the_usual_forms():
    for raw in (b" Tue, 07 Jan 2025 10:05:32 +0100", b" 7 Jan 2025 10:05 -0000 (UTC)", b"Mon,3 feb 2025 23:59:60 +0000\n",
                b" 31 Feb 2021 10:00:00 +0100", b" 1 Jan 0000 10:00 +0000", b" 1 Jan 2020 10:00 +2400"):
        assert headerparse._date_c(raw) is not False, raw
    for raw in (b" 7 Sept 2025 10:05 +0100", b"2025-01-07T10:05:32Z", b" 7 Jan 25 10:05 +0100", b" 7 Jan 2025 10:05 CET"):
        assert headerparse._date_c(raw) is False, raw            # the general parser decides
    assert headerparse._date_c(b" Tue, 07 Jan 2025 10:05:32 +0100") == utc("2025-01-07T09:05:32Z")


@pytest.mark.parametrize("max_text", [hx.MAX_TEXT, 1, 3, 7])
@SETTINGS
@given(st.one_of(TEXTISH, st.binary(max_size=80)))
def test_the_compiled_text_and_message_id_give_the_python_answer_or_decline(max_text, raw):
    saved = headerparse.MAX_TEXT
    headerparse.MAX_TEXT = max_text          # not monkeypatch: a function-scoped fixture under @given
    try:
        text, mid = headerparse._text(raw), headerparse._message_id(raw)
    finally:
        headerparse.MAX_TEXT = saved
    got = headerparse._text_c(raw, max_text)
    assert got is None or (got, 0) == text, (raw, got, text)
    got = headerparse._message_id_c(raw, max_text)
    assert got is None or got == mid, (raw, got, mid)
    if raw.isascii() and b"\x1b" not in raw:
        assert headerparse._message_id_c(raw, max_text) is not None
        assert (headerparse._text_c(raw, max_text) is None) == (b"=?" in raw)


def extract_all_python(block: bytes, **kwargs):
    """``extract`` with every compiled path replaced by its Python twin."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(headerparse, "_fields", headerparse._fields_py)
        mp.setattr(headerparse, "_extract_c", lambda data, start, end, cap: None)
        mp.setattr(headerparse, "_date_c", lambda raw: False)
        mp.setattr(headerparse, "_message_id_c", lambda raw, n: None)
        mp.setattr(headerparse, "_text_c", lambda raw, n: None)
        headerparse._DAY_OF.clear()
        headerparse._ZONE_OF.clear()
        headerparse._ADDRESS_OF.clear()
        return extract(block, **kwargs)


def test_extract_is_the_same_with_and_without_the_compiled_paths_on_the_mail_corpus():
    for name in MAIL:
        block = load(name)
        assert extract(block) == extract_all_python(block), name


ADDRESSISH = st.lists(st.sampled_from([
    b'"Rossi, Mario"', b" ", b"<m@r.it>", b'"', b"\\", b"a", b",", b"\n\t", b"=?utf-8?q?x?=", b"\xe9", b"(c)", b"\x01",
]), max_size=12).map(b"".join)
CTYPEISH = st.sampled_from([
    None, b" text/plain", b" multipart/mixed; boundary=x", b" MULTIPART/Alternative", b" multipart/related ;x",
    b" multipart/signed", b" application/pdf", b" image/jpeg", b" message/rfc822", b" text", b"", b" ;", b" \t",
    b" multipart/mixedx", b" multipart/", b" \xe9/x",
])
CDISPISH = st.sampled_from([None, b" attachment; filename=a", b" ATTACHMENT", b" inline", b"\t attachmen", b""])
BODYISH = st.sampled_from([b"body", b"Content-Disposition: attachment", b"content-disposition:\t Attachment",
                           b"X-Content-Disposition: attachment", b"isposition: attachment", b"Content-Disposition:inline"])


@SETTINGS
@given(DATEISH, TEXTISH, TEXTISH, st.sampled_from([b"\n", b"\r\n"]), st.lists(ADDRESSISH, min_size=3, max_size=3),
       CTYPEISH, CDISPISH, BODYISH, st.permutations(range(8)), st.integers(0, 400))
def test_extract_is_the_same_with_and_without_the_compiled_paths(date_raw, subject, mid, eol, addrs, ctype, cdisp,
                                                                 body, order, cut):
    fields = [b"Date:" + date_raw, b"Subject: " + subject, b"Message-ID:" + mid, b"From: " + addrs[0],
              b"To:" + addrs[1], b"cc: " + addrs[2]]
    fields += [b"Content-Type:" + ctype] if ctype is not None else []
    fields += [b"Content-Disposition:" + cdisp] if cdisp is not None else []
    fields = [fields[i] for i in order if i < len(fields)]
    block = eol.join([b"Received: x", *fields, b"", body])
    assert extract(block) == extract_all_python(block)
    assert extract(block, cap=cut) == extract_all_python(block, cap=cut)
    assert extract(b"xx" + block, start=2, end=2 + cut) == extract_all_python(b"xx" + block, start=2, end=2 + cut)


@SETTINGS
@given(st.one_of(HEADERISH, st.binary(max_size=300)), st.integers(0, 3), st.integers(0, 400))
def test_extract_is_the_same_with_and_without_the_compiled_paths_on_any_bytes(data, start, end):
    assert extract(data, start=start, end=end) == extract_all_python(data, start=start, end=end)


def test_the_compiled_extraction_answers_for_a_plain_message():
    block = (b"Return-Path: <a@b>\nReceived: from x\n\tby y\nDate: Tue, 07 Jan 2025 10:05:32 +0100\n"
             b'From: "Rossi, Mario" <m@r.it>\nTo: a@b, c@d\nSubject: Fattura\n  n. 7\nMessage-ID: <x@y>\n'
             b"Content-Type: multipart/mixed; boundary=b\n\nbody")
    h = headerparse._extract_c(block, 0, len(block), hx.HEADER_CAP)
    assert h == Headers("x@y", utc("2025-01-07T09:05:32Z"), "Rossi, Mario <m@r.it>", "a@b, c@d", "",
                        "Fattura n. 7", True, 0)
    assert h == extract_all_python(block)
    for other in (b"Subject: =?utf-8?q?caf=C3=A9?=\n\n", b"From: \xe9\n\n", b"Date: 7 Sept 2025 10:00 +0000\n\n",
                  b"not a header\n\n", b""):
        assert headerparse._extract_c(other, 0, len(other), hx.HEADER_CAP) is None, other   # declined


def test_dates_are_the_same_with_the_day_and_zone_memos_cleared_or_full(monkeypatch):
    dates = [b" Tue, 07 Jan 2025 10:05:32 +0100", b" 29 Feb 2024 23:59:60 -1130", b"1 jan 1970 00:00 +0000",
             b" 31 Feb 2021 10:00:00 +0100", b" 29 Feb 2023 10:00 +0000", b" 1 Jan 2020 24:00 +0000",
             b" 1 Jan 2020 10:00 +2400", b" 1 Jan 0000 10:00 +0000", b" 3 Sept 2020 10:00 +0000",
             b" 3 Foo 2020 10:00:00 +0000", b" 7 Jan 2025 10:05:32 +0100 (CET)"]
    fresh = []
    for d in dates:
        headerparse._DAY_OF.clear()
        headerparse._ZONE_OF.clear()
        fresh.append(headerparse._date(d))
    assert fresh[:3] == [utc("2025-01-07T09:05:32Z"), utc("2024-03-01T11:29:59Z"), 0]
    assert fresh[3:8] == [None] * 5                     # no such day, hour, offset or year
    assert fresh[9] is None and fresh[10] == fresh[0]
    assert [headerparse._date(d) for d in dates] == fresh           # from the memos
    monkeypatch.setattr(headerparse, "_MEMO_MAX", 2)                # cleared again and again
    headerparse._DAY_OF.clear()
    headerparse._ZONE_OF.clear()
    assert [headerparse._date(d) for d in dates * 2] == fresh * 2
    assert len(headerparse._DAY_OF) <= 2 and len(headerparse._ZONE_OF) <= 2


def test_a_hostile_date_does_not_grow_the_day_memo():
    headerparse._DAY_OF.clear()
    spaced = [b" 7 " + b" " * (1000 + i) + b"Jan 2025 10:05:32 +0100" for i in range(50)]
    assert {headerparse._date(d) for d in spaced} == {utc("2025-01-07T09:05:32Z")}
    assert headerparse._DAY_OF == {}


def test_addresses_are_the_same_from_the_memo_cleared_or_full(monkeypatch):
    """From/To/Cc go through the memo of raw values (``_address_memo``): the same Headers and
    problem bits whether it is empty, warm, or cleared at every insert; long values not kept."""
    blocks = [b"From: =?iso-8859-1?q?Jos=E9?= <j@x>\nTo: \"Rossi, A\" <a@x>\nCc: a@x\n\n",
              b"From: a@x\nTo: =?utf-8?b?w6k=?= <e@x>, =?bogus?q?x?= <b@x>\n\n",
              b"From: \xe8 <8@x>\nTo: a@x\nCc: \"Rossi, A\" <a@x>\n\n",
              b"From: a@x\nTo: " + b"b" * 300 + b"@x\n\n",
              b"From: \"unclosed <u@x>\nTo: a\n\tb\n\n"]
    fresh = []
    for b in blocks:
        headerparse._ADDRESS_OF.clear()
        fresh.append(extract(b))
    assert fresh[0].from_ == "José <j@x>" and fresh[0].to == "Rossi, A <a@x>" and fresh[0].cc == "a@x"
    assert fresh[1].problems & hx.P_BAD_ENCODING and fresh[2].problems & hx.P_8BIT
    assert [extract(b) for b in blocks] == fresh                     # from the memo
    assert [extract(b) for b in reversed(blocks)] == fresh[::-1]
    assert all(len(k) <= headerparse._MEMO_VALUE for k in headerparse._ADDRESS_OF)
    assert b"b" * 300 + b"@x" not in headerparse._ADDRESS_OF and b" a@x" in headerparse._ADDRESS_OF
    monkeypatch.setattr(headerparse, "_MEMO_MAX", 2)                 # cleared again and again
    headerparse._ADDRESS_OF.clear()
    assert [extract(b) for b in blocks * 3] == fresh * 3
    assert len(headerparse._ADDRESS_OF) <= 2


@pytest.mark.parametrize("raw, text", [
    (b"a\n b\t\tc ", "a b c"), (b"a \x00 b", "a b"), (b"a\x00b\x7f", "a b"), ("a\u00a0\u2028b".encode(), "a b"),
    (b" ", ""), (b"\x01", ""),
])
def test_clean_turns_white_space_and_control_characters_into_single_spaces(raw, text):
    assert headerparse._text(raw) == (text, hx.P_8BIT if not raw.isascii() else 0)


@pytest.mark.parametrize("raw, text", [
    (b'"Rossi, Mario" <m@r.it>', "Rossi, Mario <m@r.it>"), (b'"a" "b" <x>', "a b <x>"),
    (b'"a\\"b" <x>', 'a"b <x>'), (b'"a <x>', '"a <x>'), (b'"a" "b <x>', 'a "b <x>'),
    (b'" spaced  out " <x>', "spaced out <x>"),
])
def test_quoted_display_names_are_unquoted(raw, text):
    assert headerparse._address(raw) == (text, 0)


# --------------------------------------------------------------------------- codec

texts = st.text(st.characters(exclude_categories=()), max_size=40)   # surrogates included
records = st.builds(
    Record,
    key=st.binary(max_size=MAX_KEY),
    size=st.one_of(st.integers(0, 100_000), st.integers(0, (1 << 63) - 1)),
    date=st.one_of(st.none(), st.integers(-(1 << 40) + 1, (1 << 40) - 1), st.integers(0, 2_000_000_000)),
    attachments=st.booleans(),
    message_id=texts, from_=texts, to=texts, cc=texts, subject=texts,
)


def encode(recs, chunk_records=hx.CHUNK_RECORDS) -> bytes:
    w = IndexWriter(chunk_records)
    for r in recs:
        w.add(r.key, r.size, r)
    return w.encode()


@SETTINGS
@given(st.lists(records, max_size=30), st.integers(1, 7))
def test_round_trip(recs, chunk):
    data = encode(recs, chunk)
    assert list(decode(data)) == recs
    assert list(decode(encode(recs))) == recs


def test_round_trip_at_the_varint_widths():
    """Sizes and date steps at each varint width the writer spells out inline (1, 2, 3 bytes)
    and past them, dates going back as well as forward."""
    edges = [0, 1, 0x7F, 0x80, 0x3FFF, 0x4000, 0x1FFFFF, 0x200000, 1 << 35, (1 << 63) - 1]
    steps = [0, 1, 63, 64, 65, 0x1FFF, 0x2000, 0xFFFFF, 0x100000, 1 << 30]
    recs, when = [], 1_700_000_000
    for i, size in enumerate(edges * 2):
        step = steps[i % len(steps)]
        when += step if i % 3 else -step
        recs.append(Record(b"k%d" % i, size, when if i % 4 else None, bool(i % 2), "m", "f", "t", "", "s" * (i * 20)))
    data = encode(recs)
    assert list(decode(data)) == recs
    assert b"\xff\x7f" in data and b"\x80\x80\x01" in data   # sizes 0x3FFF and 0x4000: two and three bytes


def test_round_trip_corpus_and_counts(corpus):
    w = IndexWriter()
    for i, name in enumerate(MAIL):
        w.add(name.encode(), i * 1000, corpus[name])
    w.add(b"junk", 5, extract(load("not-a-message.eml")))
    data = w.encode()
    back = list(decode(data))
    assert [r.key.decode() for r in back] == MAIL
    for r in back:
        h = corpus[r.key.decode()]
        assert (r.message_id, r.date, r.from_, r.to, r.cc, r.subject, r.attachments) == \
            (h.message_id, h.date, h.from_, h.to, h.cc, h.subject, h.attachments)
    assert w.counts["records"] == len(MAIL) and w.counts["skipped"] == 1
    assert w.counts["no-message-id"] == sum(not h.message_id for h in corpus.values())
    assert w.counts["bad-date"] == 2


def test_add_encoded_joins_worker_output(corpus):
    parts = [IndexWriter(3) for _ in range(3)]
    for i, name in enumerate(MAIL):
        parts[i % 3].add(name.encode(), i, corpus[name])
    main = IndexWriter()
    main.add(b"first", 1, corpus[MAIL[0]])
    for p in parts:
        assert main.add_encoded(p.encode()) == len(p)
    keys = [r.key for r in decode(main.encode())]
    assert keys == [b"first"] + [k for p in parts for k in (r.key for r in decode(p.encode()))]
    assert len(main) == len(keys)
    with pytest.raises(HeaderIndexError):
        main.add_encoded(parts[0].encode()[:-1])


def test_writer_rejects_what_it_cannot_store():
    h = Headers("", None, "", "", "", "", False)
    w = IndexWriter()
    with pytest.raises(ValueError):
        w.add(b"k" * (MAX_KEY + 1), 1, h)
    with pytest.raises(ValueError):
        w.add(b"k", -1, h)
    with pytest.raises(ValueError):
        w.add(b"k", 1, h._replace(date=1 << 41))
    w.add(b"k", 1, h._replace(subject="é" * (MAX_TEXT + 5)))
    assert next(decode(w.encode())).subject == "é" * MAX_TEXT


def test_the_compiled_packer_is_built_and_used():
    assert hx._pack is not None, \
        "dmbackup.archive._hscan is not built: pip install -e . (needs gcc and the Python headers)"


class PyWriter(IndexWriter):
    """The writer with its Python packer only: the twin the compiled packer must match."""

    _compiled = False


long_texts = st.one_of(texts, st.text(st.sampled_from("ae\u00e9\ud800\U0001f600 "), min_size=MAX_TEXT - 2,
                                      max_size=MAX_TEXT + 3))
headers_like = st.one_of(
    records.map(lambda r: r._replace(subject=r.subject)),
    st.builds(Headers, message_id=long_texts, date=st.one_of(st.none(), st.integers(-(1 << 40) + 1, (1 << 40) - 1)),
              from_=texts, to=texts, cc=texts, subject=long_texts, attachments=st.booleans(),
              problems=st.integers(0, 127)),
)


@SETTINGS
@given(st.lists(st.tuples(st.binary(max_size=MAX_KEY), st.integers(0, (1 << 63) - 1), headers_like), max_size=25),
       st.integers(1, 7))
def test_the_compiled_packer_writes_the_python_bytes_and_counts(items, chunk):
    c, py = IndexWriter(chunk), PyWriter(chunk)
    for key, size, h in items:
        c.add(key, size, h)
        py.add(key, size, h)
    assert c.encode() == py.encode() and c.counts == py.counts and len(c) == len(py)


@pytest.mark.parametrize("bad", [
    dict(key=b"k" * (MAX_KEY + 1)), dict(key="k"), dict(size=-1), dict(size=1 << 63),
    dict(date=1 << 40), dict(date=-(1 << 40)), dict(date=1 << 70), dict(subject=b"bytes"),
])
def test_the_compiled_packer_refuses_what_python_refuses_and_changes_nothing(bad):
    key, size = bad.pop("key", b"k"), bad.pop("size", 5)
    h = Headers("m", 1_700_000_000, "f", "t", "", "s", True)._replace(**bad)
    good = Headers("m", 1_700_000_100, "f", "t", "", "s", False)
    results = []
    for w in (IndexWriter(), PyWriter()):
        w.add(b"a", 1, good)
        with pytest.raises((ValueError, TypeError, AttributeError)) as err:
            w.add(key, size, h)
        w.add(b"b", 2, good)
        results.append((err.type, w.encode(), w.counts))
    assert results[0][1:] == results[1][1:]
    if results[1][0] is ValueError:
        assert results[0][0] is ValueError


def _index(n: int = 20) -> bytes:
    h = Headers("id-{}@example.it", 1762156800, "Mario Rossi <m@example.it>", "a@b", "",
                "Fattura", True)
    w = IndexWriter(8)
    for i in range(n):
        w.add(i.to_bytes(4, "big"), 1000 + i, h._replace(message_id=f"id-{i}@example.it", date=h.date + i))
    return w.encode()


def test_every_truncation_raises():
    data = _index()
    for cut in range(len(data)):
        with pytest.raises(HeaderIndexError):
            list(decode(data[:cut]))
    with pytest.raises(HeaderIndexError):
        list(decode(data + b"\x00"))


@SETTINGS
@given(st.data())
def test_corruption_raises_or_decodes(data):
    raw = bytearray(_index(12))
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        out = list(decode(bytes(raw)))
    except HeaderIndexError:
        return
    assert all(isinstance(r, Record) for r in out)


@SETTINGS
@given(st.binary(max_size=400))
def test_garbage_after_signature_raises_or_decodes(tail):
    try:
        list(decode(hx.MAGIC + bytes((hx.VERSION,)) + tail))
    except HeaderIndexError:
        pass


def _uv(n: int) -> bytes:
    out = bytearray()
    hx._put_uv(out, n)
    return bytes(out)


HEAD = hx.MAGIC + bytes((hx.VERSION,))
HOSTILE = {
    "no signature": b"DMIDX1\n" + b"\x00" * 10,
    "empty": b"",
    "future version": hx.MAGIC + b"\x02\x00",
    "no end marker": HEAD,
    "huge count": HEAD + _uv(1 << 60) + _uv(10) + b"\x00" * 10,
    "count over the chunk cap": HEAD + _uv(hx.CHUNK_RECORDS + 1) + _uv(1 << 20) + b"\x00" * 100,
    "huge chunk length": HEAD + _uv(1) + _uv(1 << 62) + b"\x00" * 100,
    "chunk length under the minimum": HEAD + _uv(4) + _uv(8) + b"\x00" * 8 + b"\x00",
    "endless varint": HEAD + b"\xff" * 100_000,
    "text length past the end": HEAD + _uv(1) + _uv(12) + b"\x00\x00\x00" + _uv(1 << 40) + b"\x00" * 4 + b"\x00",
    "key length past the end": HEAD + _uv(1) + _uv(8) + b"\xff" + b"\x00" * 7 + b"\x00",
    "unknown flag": HEAD + _uv(1) + _uv(8) + b"\x00\x00\x80" + b"\x00" * 5 + b"\x00",
    "date out of range": HEAD + _uv(1) + _uv(14) + b"\x00\x00\x02" + b"\xff" * 5 + b"\x7f" + b"\x00" * 5 + b"\x00",
    "size out of range": HEAD + _uv(1) + _uv(17) + b"\x00" + b"\xff" * 9 + b"\x7f" + b"\x00" * 6 + b"\x00",
    "bad utf-8": HEAD + _uv(1) + _uv(9) + b"\x00\x00\x00" + b"\x01\xff" + b"\x00" * 4 + b"\x00",
    "trailing bytes in a chunk": HEAD + _uv(1) + _uv(9) + b"\x00" * 9 + b"\x00",
    "full chunk of empty records, then nothing": HEAD + _uv(4096) + _uv(8 * 4096) + b"\x00" * (8 * 4096),
}


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_hostile_input_raises_fast_and_small(what):
    data = HOSTILE[what]
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(HeaderIndexError):
            for _ in decode(data):
                pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert peak < 4 * len(data) + (2 << 20), peak       # nothing near what the input claims


def test_hostile_cases_are_otherwise_well_formed():
    # each hostile case breaks exactly one rule: fix the rule, and it decodes
    ok = HEAD + _uv(1) + _uv(8) + b"\x00" * 8 + b"\x00"
    assert list(decode(ok)) == [Record(b"", 0, None, False, "", "", "", "", "")]
    ok = HEAD + _uv(1) + _uv(9) + b"\x00\x00\x02\x04" + b"\x00" * 5 + b"\x00"
    assert next(decode(ok)).date == 2


# --------------------------------------------------------------------------- folding and queries

@pytest.mark.parametrize("text, folded", [
    ("Fàttura", "fattura"), ("Straße", "strasse"), ("ROSSI", "rossi"), ("Rossì", "rossi"),
    ("ﬁle", "file"), ("Øresund", "oresund"), ("Łódź", "lodz"), ("Œuvre", "oeuvre"),
    ("İstanbul", "istanbul"), ("  a \t b ", "a b"), ("МОСКВА", "москва"), ("会議", "会議"),
])
def test_fold(text, folded):
    assert fold(text) == folded


def test_accent_folding_finds(corpus):
    def names(**kw):
        q = Query(**kw)
        return {n for n, h in corpus.items() if q.matches(h)}

    assert {"utf8-b-subject.eml"} <= names(subject="fattura")
    assert names(subject="strasse") == {"mixed-charsets.eml", "strasse.eml"}
    assert "multipart-mixed-attachment.eml" in names(from_="rossi")


QUERIES = [
    (dict(from_="rossi"), {"utf8-b-subject.eml", "multipart-mixed-attachment.eml", "quoted-encoded-name.eml",
                           "crlf.eml"}),
    (dict(from_="ROSSÌ"), {"utf8-b-subject.eml", "multipart-mixed-attachment.eml", "quoted-encoded-name.eml",
                           "crlf.eml"}),
    (dict(from_="spam"), {"bad-base64.eml", "invalid-utf8-word.eml"}),
    (dict(from_="jorg"), {"unknown-charset.eml"}),
    (dict(from_="Zoe"), {"raw-8bit-latin1.eml"}),
    (dict(to="sara.conti"), {"utf8-q-split.eml", "folded.eml"}),
    (dict(to="André"), {"utf8-q-split.eml"}),
    (dict(subject="fattura"), {"utf8-b-subject.eml", "multipart-mixed-attachment.eml"}),
    (dict(subject="strasse"), {"mixed-charsets.eml", "strasse.eml"}),
    (dict(subject="caffe"), {"utf8-q-split.eml", "iso-8859-1.eml", "raw-8bit-latin1.eml"}),
    (dict(subject="会議"), {"iso-2022-jp.eml"}),
    (dict(subject="москв"), {"koi8-r.eml"}),
    (dict(subject="speciale"), {"windows-1252.eml"}),
    (dict(message_id="<dup-42@example.it>"), {"dup-message-id-1.eml", "dup-message-id-2.eml"}),
    (dict(message_id="DUP-42"), {"dup-message-id-1.eml", "dup-message-id-2.eml"}),
    (dict(message_id="second-id@example.it"), set()),
    (dict(since=utc("2025-11-17T00:00:00Z"), before=utc("2025-11-18T00:00:00Z")),
     {"multipart-mixed-attachment.eml", "related-with-attachment.eml", "alternative-no-attachment.eml",
      "single-part-pdf.eml"}),
    (dict(since=utc("2025-11-20T14:00:00Z")), {"quoted-encoded-name.eml", "control-chars.eml", "strasse.eml"}),
    (dict(before=utc("2001-01-01T00:01:00Z")), {"cpython-msg_36.eml", "two-digit-year.eml"}),
    (dict(from_="davide", subject="seconda"), {"dup-message-id-2.eml"}),
    (dict(from_="davide", subject="terza"), set()),
]


@pytest.mark.parametrize("kw, expected", QUERIES, ids=[repr(q[0]) for q in QUERIES])
def test_query_selects_exactly(corpus, kw, expected):
    q = Query(**kw)
    assert {n for n, h in corpus.items() if q.matches(h)} == expected
    # the same over decoded records (what find reads back)
    w = IndexWriter()
    for n in MAIL:
        w.add(n.encode(), 0, corpus[n])
    assert {r.key.decode() for r in q.filter(decode(w.encode()))} == expected
    # and column by column (what find runs), in chunks of every size
    for chunk in (1, 3, hx.CHUNK_RECORDS):
        w = IndexWriter(chunk)
        for n in MAIL:
            w.add(n.encode(), 0, corpus[n])
        assert [r.key.decode() for r in hx.search(w.encode(), q)] == sorted(expected)
        keys = {n.encode() for n in MAIL[::2]}
        assert {r.key.decode() for r in hx.search(w.encode(), q, keys)} == {n for n in expected if n.encode() in keys}


texts_ws = st.text(st.sampled_from("aAbB \t\néÉeßsS\u0301x\u0130\ufb01"), max_size=12)   # İ lowers to 2 chars


@SETTINGS
@given(st.lists(st.builds(Record, key=st.binary(max_size=4), size=st.just(0), date=st.none(), attachments=st.just(False),
                          message_id=texts_ws, from_=texts_ws, to=texts_ws, cc=texts_ws, subject=texts_ws),
                max_size=12),
       texts_ws, st.sampled_from(["from_", "to", "subject", "message_id"]), st.integers(1, 5))
def test_search_is_filter_of_decode(recs, text, field, chunk):
    if not fold(text):
        return
    q = Query(**{field: text})
    data = encode(recs, chunk)
    assert list(hx.search(data, q)) == list(q.filter(decode(data)))


def test_search_of_a_few_in_a_full_chunk_decodes_exactly_those():
    """A filter that matches a few records of a full chunk of 16-byte keys (what backups
    write): only their keys and sizes are decoded, and they are those of ``decode``."""
    import random

    rnd = random.Random(5)
    recs = []
    for i in range(hx.CHUNK_RECORDS + 300):
        size = rnd.choice([0, 1, 127, 128, 16383, 16384, rnd.randrange(1 << 40), (1 << 63) - 1])
        date = rnd.choice([None, rnd.randrange(-(1 << 39), 1 << 39), 1764483513 + i])
        subject = "Fattura n. %d" % i if i % 397 == 0 else "riunione %d" % i
        recs.append(Record(rnd.randbytes(16), size, date, i % 3 == 0, f"<{i}@x>", "a@b", "", "", subject))
    data = encode(recs)
    for q in (Query(subject="fattura"), Query(message_id="<4095@x>"), Query(subject="nothing at all"),
              Query(subject="fattura", since=1764483513 + 400)):
        got = list(hx.search(data, q))
        assert got == list(q.filter(decode(data)))
        assert got == [r for r in recs if q.matches(r)]
    assert len(list(hx.search(data, Query(subject="fattura")))) == 12


def test_search_raises_on_garbage_it_reads():
    data = encode([Record(b"k" * 16, 1, None, False, "id", "from", "to", "cc", "subject")])
    with pytest.raises(HeaderIndexError):
        list(hx.search(data[:-3], Query()))
    bad = data.replace(b"subject", b"subj\xffct")
    with pytest.raises(HeaderIndexError, match="UTF-8"):
        list(hx.search(bad, Query()))                     # a match decodes every column
    assert list(hx.search(bad, Query(from_="nobody"))) == []   # a column never needed is not decoded
    many = [Record(b"%016d" % i, i, None, False, f"id{i}", f"from{i}", "to", "cc", f"subject{i}") for i in range(40)]
    data = encode(many)
    assert list(hx.search(data, Query(from_="from7"))) == [many[7]]         # one record decoded alone
    assert list(hx.search(data, Query(subject="subject3"))) == [many[3]] + many[30:40]
    bad = data.replace(b"subject7", b"subj\xffct7")
    with pytest.raises(HeaderIndexError, match="UTF-8"):
        list(hx.search(bad, Query(from_="from7")))
    assert list(hx.search(bad, Query(from_="from8"))) == [many[8]]


def test_empty_query_matches_everything(corpus):
    q = Query()
    assert not q
    assert all(q.matches(h) for h in corpus.values())


def test_query_dates_accept_datetimes_and_local_days(corpus, utc_local_time):
    q = Query(since=date(2025, 11, 17), before=datetime(2025, 11, 18, tzinfo=timezone.utc))
    assert {n for n, h in corpus.items() if q.matches(h)} == {
        "multipart-mixed-attachment.eml", "related-with-attachment.eml",
        "alternative-no-attachment.eml", "single-part-pdf.eml"}
    assert not Query(since=0).matches(corpus["no-date.eml"])


def test_search_in_pieces_of_whole_chunks():
    recs = [Record(b"%016d" % i, i, None, False, f"id{i}", f"from{i}", "to", "cc", f"subject{i}") for i in range(20)]
    chunks = []
    w = IndexWriter(3, on_chunk=chunks.append)
    for r in recs:
        w.add(r.key, r.size, r)
    w.flush()
    head, end = hx.MAGIC + bytes((hx.VERSION,)), b"\x00"
    whole = head + b"".join(chunks) + end
    pieces = [head + chunks[0], b"".join(chunks[1:4]), b"", b"".join(chunks[4:]) + end]
    assert list(hx.search_pieces(pieces, Query())) == list(hx.search(whole, Query())) == recs
    assert list(hx.search_pieces(pieces, Query(subject="subject1"))) == [recs[1]] + recs[10:20]
    for bad in ([head + chunks[0] + end, b"".join(chunks[1:]) + end],       # the end marker too early
                [head + b"".join(chunks)],                                   # no end marker
                [b"".join(chunks) + end],                                    # no signature
                [head + chunks[0][:-1], chunks[0][-1:] + b"".join(chunks[1:]) + end],   # a chunk split
                []):
        with pytest.raises(HeaderIndexError):
            list(hx.search_pieces(bad, Query()))
        with pytest.raises(HeaderIndexError):
            list(hx.keys_pieces(bad))
    # the keys alone (a search without a header filter): the same, a chunk at a time
    got = list(hx.keys_pieces(pieces))
    assert [len(k) for k in got] == [3] * 6 + [2] and [k for ks in got for k in ks] == [r.key for r in recs]


@SETTINGS
@given(st.data())
def test_keys_alone_raise_where_a_search_raises_on_structure(data):
    """``keys_pieces`` checks the structure ``search`` checks (counts, lengths, flags, the
    end): what it refuses a search refuses, and where a search reads records it gives their
    keys (a search also refuses values it decodes: sizes, dates, texts that are not UTF-8)."""
    raw = bytearray(_index(12))
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        keys = [k for ks in hx.keys_pieces([bytes(raw)]) for k in ks]
    except HeaderIndexError:
        keys = None
    try:
        recs = list(hx.search(bytes(raw), Query()))
    except HeaderIndexError:
        return
    assert keys == [r.key for r in recs]
