"""The header index: who wrote what, when -- so ``dmbackup find`` can locate a message.

For every message whose content a backup stores, the backup records a few header fields:
Message-ID, Date, From, To, Cc, Subject (decoded to text), the message's size and whether it
seems to carry attachments. This module has the three parts of that, and nothing else
(standard library only):

Extraction. ``extract(data)`` reads only the header block: the bytes before the first empty
line, and never more than ``HEADER_CAP`` (64 KiB) of them. One regular expression over a
lower-cased copy of the block finds the wanted fields with their continuation lines (no
per-line Python loop, no ``email.message_from_bytes``: about 11 us of CPU for a 1.7 KB
header block on the shared 2-core machine, against about 72 us for ``BytesHeaderParser``; see
``bench/headerindex_speed.py``);
the *first* occurrence of each field counts. The value is decoded, and splitting it on white
space both unfolds it and collapses runs of white space to one space.
Decoding: raw bytes are ASCII, else UTF-8, else Windows-1252, else Latin-1 (raw 8-bit
headers); raw ISO-2022-JP (escape sequences, no encoded word) is decoded as such; RFC 2047
encoded words (``=?charset?B|Q?...?=``, any charset Python knows, RFC 2231 ``*lang``
suffix ignored) are decoded, adjacent ones of one charset together (a character split across
two words survives) and the white space between two encoded words dropped; an unknown
charset decodes as UTF-8 or else Latin-1, undecodable bytes become U+FFFD, a word that
does not decode stays as written. Control characters become spaces (``find`` prints these
strings on a terminal). From/To/Cc stay display text, ``Name <addr>``: quoted display names
are unquoted, comments kept, nothing else parsed. Message-ID: the text between the first
``<`` and the next ``>`` (or the whole value), white space removed, case kept. Date: the
usual ``[Day,] D Mon YYYY HH:MM[:SS] +ZZZZ`` by a fast path, else ``email.utils.parsedate_tz``
(RFC 5322 and its obsolete forms: zone names, two-digit years), else ISO 8601, checked
field by field (no 30 February, offsets under 24 h) and turned into a UTC epoch; a missing
or malformed Date gives ``None``. Each text field is cut to ``MAX_TEXT`` characters.
Nothing raises: what does not parse is left empty and flagged in ``Headers.problems``
(bits ``P_*``, names in ``PROBLEMS``), and ``extract`` returns ``None`` only for bytes that
are not a header block at all (empty, or the first line is neither ``Name:`` nor an mbox
``From `` line).

Attachment heuristic (never parses the body). ``attachments`` is true when
  * the top-level Content-Type is ``multipart/mixed`` (the container mail clients use for
    attachments; a mailing-list footer part or an Apple Mail inline image also makes one,
    so this over-counts slightly), or
  * the top-level Content-Type is a non-text single part (``application/pdf``,
    ``image/jpeg`` ...: the message *is* a file), or
  * the top-level header has ``Content-Disposition: attachment``, or
  * the top-level type is another ``multipart/*`` except ``alternative`` (related, signed,
    report ...; the parts of an alternative are one text in several forms, and scanning the
    HTML of the 35% of mail that is text + HTML would cost more than all the rest of
    ``extract``) and a ``Content-Disposition: attachment`` (the literal ``isposition:``, preceded by
    ``content-d`` in any case) occurs in the first ``HEADER_CAP`` bytes of what the caller
    passed. The caller passes what it has read anyway (a whole small message, or its first
    64 KiB); an attachment beyond that is missed.
Plain ``text/*`` messages and ``message/rfc822`` wrappers count as without attachments.

Record codec. ``IndexWriter.add(key, size, headers)`` packs one record; ``encode()`` returns
the plaintext, which the caller compresses (zstd) and seals like the other objects;
``decode(plaintext)`` yields ``Record`` tuples. Byte layout, version 1 (all integers
unsigned LEB128 varints, at most 10 bytes, unless said otherwise):

    magic "DMHIX" (5 bytes), version byte 0x01,
    then chunks, each:  count c (1..4096) | body length L | body (L bytes),
    then one 0x00 (a count of 0: the end), and nothing after it.

A chunk body holds its c records column by column, in this order: the c keys (length
0..255, bytes), the c sizes, the c flag bytes (bit 0 attachments, bit 1 has a date; other
bits must be 0), the dates of the records with bit 1 set (zigzag varint: each date minus the
previous date in the chunk, the first minus 0), then five text columns, Message-ID, From,
To, Cc, Subject, each c times ``length | UTF-8 bytes`` (surrogates pass through, so any
``str`` round-trips; at most ``4 * MAX_TEXT`` bytes). The body must be used up exactly.
Columns put alike things together, which is what zstd likes; chunks bound memory: the
writer holds finished chunks as bytes (about 185 bytes a message with a 16-byte key, 50
after zstd) and ``decode`` materialises one chunk (at most 4096 records) at a time. ``key`` is opaque here:
the caller's reference to the stored content (at most 255 bytes).

Decoding trusts nothing: every length is checked against the bytes left before anything is
sliced, counts and lengths have caps, every loop advances through the input, so garbage,
truncation or a hostile object raises ``HeaderIndexError`` (a ``ValueError``) after at most
one pass over the input and allocations no larger than the input. ``decode`` is a generator:
the error comes when iteration reaches the bad chunk.

Matching. ``fold(text)`` is the comparison form: case-folded, compatibility-decomposed,
combining marks dropped, and a few letters without a decomposition spelled out (ø→o, ł→l,
æ→ae, œ→oe, đ→d, þ→th, ı→i); so ``é``→``e``, ``ß``→``ss``, ``ﬁ``→``fi``. ``Query`` holds the
``find`` filters; every text filter is a substring of the folded field (white space
collapsed), ``to`` looks in To and Cc, ``message_id`` in the normalised Message-ID (``<>``
stripped from the query too); ``since`` is inclusive, ``before`` exclusive, both UTC epoch
seconds (or ``datetime``: naive means local time; ``date``: local midnight), and a record
without a date never passes a date filter. All filters given must match.
"""

from __future__ import annotations

import binascii
import re
import time
import unicodedata
from datetime import date as _date_cls, datetime
from typing import Iterable, Iterator, NamedTuple

__all__ = [
    "HEADER_CAP", "MAX_TEXT", "MAX_KEY", "CHUNK_RECORDS", "MAGIC", "VERSION", "PROBLEMS",
    "P_NO_END", "P_NO_DATE", "P_BAD_DATE", "P_NO_MESSAGE_ID", "P_8BIT", "P_BAD_ENCODING",
    "P_OBSOLETE", "HeaderIndexError", "Headers", "Record", "extract", "problem_names",
    "IndexWriter", "decode", "fold", "Query",
]

HEADER_CAP = 64 * 1024          # header bytes looked at (and bytes scanned for attachments)
MAX_TEXT = 4000                 # characters kept per text field
MAX_KEY = 255                   # bytes of an opaque record key
MAX_FIELD_BYTES = 4 * MAX_TEXT  # a text column entry, encoded
CHUNK_RECORDS = 4096            # records per chunk (and the cap a decoder accepts)
DATE_LIMIT = 1 << 40            # |epoch seconds| accepted (about +-34,000 years)
SIZE_LIMIT = 1 << 63
MAGIC = b"DMHIX"
VERSION = 1

P_NO_END = 1            # no empty line within the bytes given (or HEADER_CAP): block cut there
P_NO_DATE = 2           # no Date field
P_BAD_DATE = 4          # a Date field that does not parse
P_NO_MESSAGE_ID = 8     # no (or an empty) Message-ID
P_8BIT = 16             # raw non-ASCII bytes in a wanted field (decoded UTF-8 / cp1252 / Latin-1)
P_BAD_ENCODING = 32     # an unknown charset, bytes replaced by U+FFFD, or an encoded word kept as written
P_OBSOLETE = 64         # a field found only in the obsolete form ``Name :`` (space before the colon)
PROBLEMS = {P_NO_END: "no-end", P_NO_DATE: "no-date", P_BAD_DATE: "bad-date",
            P_NO_MESSAGE_ID: "no-message-id", P_8BIT: "8bit", P_BAD_ENCODING: "bad-encoding",
            P_OBSOLETE: "obsolete-syntax"}

F_ATTACH = 1
F_DATE = 2


class HeaderIndexError(ValueError):
    """A header index that is not what ``IndexWriter.encode`` writes (damaged or forged)."""


class Headers(NamedTuple):
    """What ``extract`` found in one header block (empty string: field absent)."""

    message_id: str
    date: int | None        # UTC epoch seconds
    from_: str
    to: str
    cc: str
    subject: str
    attachments: bool
    problems: int = 0       # P_* bits


class Record(NamedTuple):
    """One decoded index record."""

    key: bytes
    size: int
    date: int | None
    attachments: bool
    message_id: str
    from_: str
    to: str
    cc: str
    subject: str


def problem_names(mask: int) -> list[str]:
    return [name for bit, name in PROBLEMS.items() if mask & bit]


# --------------------------------------------------------------------------- extraction

_FIRST_LINE = re.compile(rb"[!-9;-~]+[ \t]*:|From ")
_EW = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
# A quoted string, or an unterminated one up to the end: every quote matches, and possessively,
# so a search never rescans (no quadratic time on '"a\\"a\\"a...').
_QUOTED = re.compile(r'"((?:[^"\\]|\\.?)*+)("|\Z)', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_ISO_DATE = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?")
_ESC_JP = (b"\x1b$B", b"\x1b$@", b"\x1b(J", b"\x1b(B")

# One pass over the header block, case-insensitive, stopping at its end: each match is either a
# wanted field at a line start (name, optional white space before the colon -- obsolete
# syntax --, and the value with its continuation lines) or the empty line that ends the block.
_NAMES = rb"message-id|date|from|to|cc|subject|content-type|content-disposition"
_VALUE = rb"([ \t]*):([^\n]*(?:\n[ \t][^\n]*)*)"
_FIELD = re.compile(rb"\n(?:(" + _NAMES + rb")" + _VALUE + rb"|\r?\n)", re.I)
_FIELD_AT0 = re.compile(rb"(" + _NAMES + rb")" + _VALUE, re.I)
_INITIALS = frozenset(b"mdftcs")          # first letters of the wanted names, lower case


def _bytes_text(raw: bytes) -> tuple[str, int]:
    """Raw header bytes as text: ASCII, raw ISO-2022-JP, UTF-8, cp1252, Latin-1."""
    try:
        s = raw.decode("ascii")
    except UnicodeDecodeError:
        try:
            return raw.decode("utf-8"), P_8BIT
        except UnicodeDecodeError:
            try:
                return raw.decode("cp1252"), P_8BIT
            except UnicodeDecodeError:
                return raw.decode("latin-1"), P_8BIT
    if "\x1b" in s and any(e in raw for e in _ESC_JP):
        try:
            return raw.decode("iso-2022-jp"), 0
        except UnicodeDecodeError:
            pass
    return s, 0


def _charset_decode(data: bytes, charset: str) -> tuple[str, int]:
    try:
        return data.decode(charset), 0
    except LookupError:
        try:
            return data.decode("utf-8"), P_BAD_ENCODING
        except UnicodeDecodeError:
            return data.decode("latin-1"), P_BAD_ENCODING
    except UnicodeDecodeError:
        try:
            return data.decode(charset, "replace"), P_BAD_ENCODING
        except Exception:
            return data.decode("latin-1"), P_BAD_ENCODING
    except Exception:       # a codec that is not a bytes -> str text codec, or one that breaks
        return data.decode("latin-1"), P_BAD_ENCODING


def _decode_words(s: str) -> tuple[str, int]:
    """Decode RFC 2047 encoded words in ``s`` (lenient: also inside words and quotes)."""
    out: list[str] = []
    prob = 0
    pend: list[bytes] = []       # bytes of adjacent encoded words in charset ``pend_cs``
    pend_cs = ""
    pos = 0
    last_word_end = -1

    def flush() -> None:
        nonlocal prob
        if pend:
            d, p = _charset_decode(b"".join(pend), pend_cs)
            out.append(d)
            prob |= p
            pend.clear()

    for m in _EW.finditer(s):
        gap = s[pos:m.start()]
        adjacent = last_word_end == pos and not gap.strip()     # only white space since the last word
        cs = m.group(1).split("*", 1)[0].lower()
        text = m.group(3)
        try:
            if m.group(2) in "bB":
                t = text.rstrip("=")
                data = binascii.a2b_base64(t + "=" * (-len(t) % 4))
            else:
                data = binascii.a2b_qp(text, header=True)
        except (ValueError, binascii.Error):
            data = None
        if data is None:                          # keep the word as written
            flush()
            out.append(gap + m.group(0))
            prob |= P_BAD_ENCODING
            last_word_end = -1
        else:
            if not (adjacent and cs == pend_cs):
                flush()
                if not adjacent:
                    out.append(gap)
                pend_cs = cs
            pend.append(data)
            last_word_end = m.end()
        pos = m.end()
    flush()
    out.append(s[pos:])
    return "".join(out), prob


def _clean(s: str) -> str:
    if not s.isprintable():
        s = "".join(c if c.isprintable() else " " for c in s)
    s = " ".join(s.split())
    return s[:MAX_TEXT] if len(s) > MAX_TEXT else s


def _text(raw: bytes) -> tuple[str, int]:
    s, prob = _bytes_text(raw)
    if "=?" in s:
        s, p = _decode_words(s)
        prob |= p
    if "\ufffd" in s:
        prob |= P_BAD_ENCODING
    return _clean(s), prob


def _unquote(m: re.Match) -> str:
    return _QUOTED_PAIR.sub(r"\1", m.group(1)) if m.group(2) else m.group(0)


def _address(raw: bytes) -> tuple[str, int]:
    s, prob = _bytes_text(raw)
    if "=?" in s:
        s, p = _decode_words(s)
        prob |= p
    if '"' in s:
        s = _QUOTED.sub(_unquote, s)
    if "\ufffd" in s:
        prob |= P_BAD_ENCODING
    return _clean(s), prob


def _message_id(raw: bytes) -> str:
    s, _ = _bytes_text(raw)
    i = s.find("<")
    if i >= 0:
        j = s.find(">", i + 1)
        s = s[i + 1:] if j < 0 else s[i + 1:j]
    s = "".join(s.split())
    if not s.isprintable():
        s = "".join(c for c in s if c.isprintable())
    return s[:MAX_TEXT]


_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_MONTHS = {m: i for i, m in enumerate((b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul",
                                        b"aug", b"sep", b"oct", b"nov", b"dec"), 1)}
# The form nearly every Date has: [Day,] D Mon YYYY HH:MM[:SS] +ZZZZ [comment]
_DATE_FAST = re.compile(rb"\s*(?:[A-Za-z]{3},\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+(\d{4})\s+"
                        rb"(\d\d):(\d\d)(?::(\d\d))?\s*([+-]\d{4})(?:\s|\(|$)")
_parsedate_tz = None


def _epoch_of(y: int, mo: int, d: int, h: int, mi: int, sec: int, tz: int) -> int | None:
    """UTC epoch of a civil time with offset ``tz`` seconds east; None if a field is out of range."""
    if not (1 <= mo <= 12 and 1 <= d <= _DAYS[mo] and 0 <= h <= 23 and 0 <= mi <= 59
            and 0 <= sec <= 60 and 1 <= y <= 9999 and -86400 < tz < 86400):
        return None
    if mo == 2 and d == 29 and not (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)):
        return None
    # days from civil (H. Hinnant), 1970-01-01 = 0
    yy = y - (mo <= 2)
    era = yy // 400
    yoe = yy - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    return days * 86400 + h * 3600 + mi * 60 + min(sec, 59) - tz


def _date(raw: bytes) -> int | None:
    m = _DATE_FAST.match(raw)
    if m is not None:
        d, mon, y, h, mi, sec, zone = m.groups()
        mo = _MONTHS.get(mon.lower())
        if mo is not None:
            tz = int(zone[1:3]) * 3600 + int(zone[3:5]) * 60
            return _epoch_of(int(y), mo, int(d), int(h), int(mi), int(sec) if sec else 0,
                             -tz if zone[0] == 45 else tz)       # 45: "-"
    global _parsedate_tz
    if _parsedate_tz is None:              # email.utils costs ~6 ms to import: only when needed
        from email.utils import parsedate_tz as _parsedate_tz

    s = raw.decode("latin-1").strip()
    try:
        t = _parsedate_tz(s)
    except Exception:
        t = None
    if t is not None:
        return _epoch_of(t[0], t[1], t[2], t[3], t[4], t[5], t[9] or 0)
    m = _ISO_DATE.search(s)
    if m is not None:
        try:
            dt = datetime.fromisoformat(m.group(0).replace("Z", "+00:00"))
        except ValueError:
            return None
        off = dt.utcoffset()
        return _epoch_of(dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second,
                         int(off.total_seconds()) if off is not None else 0)
    return None


def _attachment_scan(data: bytes, limit: int) -> bool:
    """A ``Content-Disposition: attachment`` in data[:limit] (any case of the field name)."""
    i = data.find(b"isposition:", 0, limit)
    while i >= 0:
        if data[max(0, i - 9):i].lower() == b"content-d" and \
                data[i + 11:i + 40].lstrip().lower().startswith(b"attachment"):
            return True
        i = data.find(b"isposition:", i + 11, limit)
    return False


def extract(data: bytes, *, cap: int = HEADER_CAP) -> Headers | None:
    """The indexed fields of the message whose first bytes are ``data``; never raises.

    ``data`` is the whole message or its beginning (at least the header block, ideally the
    first ``cap`` bytes). Returns None when ``data`` is not a header block at all.
    """
    try:
        return _extract(data, cap)
    except Exception:          # never reached by any input we know of; never let one stop a backup
        return None


def _extract(data: bytes, cap: int) -> Headers | None:
    if not isinstance(data, bytes):
        data = bytes(data[:cap])
    limit = min(len(data), cap)
    if not limit or _FIRST_LINE.match(data, 0, limit) is None:
        return None
    prob = P_NO_END
    vals: dict[bytes, bytes] = {}
    m = _FIELD_AT0.match(data, 0, limit) if (data[0] | 32) in _INITIALS else None
    if m is not None:
        vals[m.group(1).lower()] = m.group(3)
        if m.group(2):
            prob |= P_OBSOLETE
    for m in _FIELD.finditer(data, 0, limit):
        name, ws, value = m.groups()
        if name is None:                 # the empty line: end of the header block
            prob = prob & ~P_NO_END
            break
        name = name.lower()
        if name not in vals:
            vals[name] = value           # with its line breaks: the converters split on white space
            if ws:
                prob |= P_OBSOLETE
    raw = vals.get

    v = raw(b"message-id")
    mid = _message_id(v) if v is not None else ""
    if not mid:
        prob |= P_NO_MESSAGE_ID
    v = raw(b"date")
    if v is None:
        when = None
        prob |= P_NO_DATE
    else:
        when = _date(v)
        if when is None or not -DATE_LIMIT < when < DATE_LIMIT:
            when = None
            prob |= P_BAD_DATE
    fields = []
    for name, conv in ((b"from", _address), (b"to", _address), (b"cc", _address), (b"subject", _text)):
        v = raw(name)
        if v is None:
            fields.append("")
        else:
            text, p = conv(v)
            prob |= p
            fields.append(text)

    v = raw(b"content-type")
    ctype = v.split(b";", 1)[0].strip().lower() if v is not None else b""
    if ctype.startswith(b"multipart/"):
        attach = ctype == b"multipart/mixed" or (ctype != b"multipart/alternative"
                                                 and _attachment_scan(data, limit))
    elif ctype and b"/" in ctype and not ctype.startswith((b"text/", b"message/")):
        attach = True
    else:
        v = raw(b"content-disposition")
        attach = v is not None and v.strip().lower().startswith(b"attachment")
    return Headers(mid, when, fields[0], fields[1], fields[2], fields[3], attach, prob)


# --------------------------------------------------------------------------- record codec

def _put_uv(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


class IndexWriter:
    """Accumulates records; ``encode()`` returns the index plaintext (see the module docstring).

    ``counts`` tallies what ``add`` saw: ``records``, ``skipped`` (``headers`` was None: not a
    header block) and one entry per problem name (``PROBLEMS``).
    """

    def __init__(self, chunk_records: int = CHUNK_RECORDS):
        if not 1 <= chunk_records <= CHUNK_RECORDS:
            raise ValueError(f"chunk_records must be 1..{CHUNK_RECORDS}")
        self.chunk_records = chunk_records
        self.chunks: list[bytes] = []
        self.count = 0
        self.counts: dict[str, int] = {"records": 0, "skipped": 0}
        self._reset()

    def _reset(self) -> None:
        self._n = 0
        self._keys = bytearray()
        self._sizes = bytearray()
        self._flags = bytearray()
        self._dates = bytearray()
        self._texts = [bytearray() for _ in range(5)]
        self._prev = 0

    def __len__(self) -> int:
        return self.count

    def add(self, key: bytes, size: int, headers) -> None:
        """Add one message: ``headers`` is a ``Headers`` or ``Record`` (or None: counted as skipped)."""
        if headers is None:
            self.counts["skipped"] += 1
            return
        if not isinstance(key, (bytes, bytearray)) or len(key) > MAX_KEY:
            raise ValueError(f"key must be at most {MAX_KEY} bytes")
        if not 0 <= size < SIZE_LIMIT:
            raise ValueError("size out of range")
        when = headers.date
        if when is not None and not -DATE_LIMIT < when < DATE_LIMIT:
            raise ValueError("date out of range")
        texts = []                      # encoded first: a bad field leaves the writer untouched
        for s in (headers.message_id, headers.from_, headers.to, headers.cc, headers.subject):
            if len(s) > MAX_TEXT:
                s = s[:MAX_TEXT]
            texts.append(s.encode("utf-8", "surrogatepass"))
        problems = getattr(headers, "problems", 0)
        if problems:
            for bit, name in PROBLEMS.items():
                if problems & bit:
                    self.counts[name] = self.counts.get(name, 0) + 1
        self.counts["records"] += 1
        keys = self._keys
        keys.append(len(key))
        keys += key
        if size < 0x80:
            self._sizes.append(size)
        else:
            _put_uv(self._sizes, size)
        flags = F_ATTACH if headers.attachments else 0
        if when is not None:
            flags |= F_DATE
            delta = when - self._prev
            self._prev = when
            _put_uv(self._dates, (delta << 1) if delta >= 0 else ((-delta << 1) - 1))
        self._flags.append(flags)
        for col, b in zip(self._texts, texts):
            n = len(b)
            if n < 0x80:
                col.append(n)
            else:
                _put_uv(col, n)
            col += b
        self._n += 1
        self.count += 1
        if self._n >= self.chunk_records:
            self._flush()

    def _flush(self) -> None:
        if not self._n:
            return
        body = b"".join([self._keys, self._sizes, self._flags, self._dates, *self._texts])
        head = bytearray()
        _put_uv(head, self._n)
        _put_uv(head, len(body))
        self.chunks.append(bytes(head) + body)
        self._reset()

    def add_encoded(self, data: bytes) -> int:
        """Append the records of another writer's ``encode()`` (e.g. from a worker process).

        The chunks are checked for structure only (counts, lengths, the end marker), not
        decoded. Returns the number of records added.
        """
        self._flush()
        chunks = []
        n = 0
        for count, start, stop in _walk(data):
            chunks.append(bytes(data[start:stop]))
            n += count
        self.chunks += chunks
        self.count += n
        self.counts["records"] += n
        return n

    def encode(self) -> bytes:
        self._flush()
        return MAGIC + bytes((VERSION,)) + b"".join(self.chunks) + b"\x00"


# --------------------------------------------------------------------------- decoding

def _uv(b: bytes, i: int) -> tuple[int, int]:
    """A varint at b[i:]; IndexError when b ends inside it."""
    x = b[i]
    i += 1
    if x < 0x80:
        return x, i
    x &= 0x7F
    shift = 7
    while True:
        c = b[i]
        i += 1
        x |= (c & 0x7F) << shift
        if c < 0x80:
            return x, i
        shift += 7
        if shift > 63:
            raise HeaderIndexError("header index: varint longer than 10 bytes")


def _walk(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(count, start, stop) of each chunk (start..stop spans the chunk's own count and length)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) <= len(MAGIC) or not data.startswith(MAGIC):
        raise HeaderIndexError("header index: no signature")
    if data[len(MAGIC)] != VERSION:
        raise HeaderIndexError(f"header index: unsupported version {data[len(MAGIC)]}")
    i = len(MAGIC) + 1
    n = len(data)
    try:
        while True:
            start = i
            count, i = _uv(data, i)
            if count == 0:
                if i != n:
                    raise HeaderIndexError("header index: bytes after the end marker")
                return
            if count > CHUNK_RECORDS:
                raise HeaderIndexError(f"header index: chunk of {count} records (at most {CHUNK_RECORDS})")
            length, i = _uv(data, i)
            if length > n - i or length < 8 * count:
                raise HeaderIndexError("header index: chunk length does not fit")
            i += length
            yield count, start, i
    except IndexError:
        raise HeaderIndexError("header index: truncated") from None


def _texts(body: bytes, i: int, c: int) -> tuple[list[str], int]:
    out = []
    n = len(body)
    for _ in range(c):
        ln, i = _uv(body, i)
        if ln > MAX_FIELD_BYTES or ln > n - i:
            raise HeaderIndexError("header index: text length does not fit")
        try:
            out.append(body[i:i + ln].decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError:
            raise HeaderIndexError("header index: text is not UTF-8") from None
        i += ln
    return out, i


def _chunk(body: bytes, c: int) -> Iterator[Record]:
    n = len(body)
    i = 0
    keys = []
    for _ in range(c):
        ln = body[i]
        i += 1
        if ln > n - i:
            raise HeaderIndexError("header index: key length does not fit")
        keys.append(body[i:i + ln])
        i += ln
    sizes = []
    for _ in range(c):
        v, i = _uv(body, i)
        if v >= SIZE_LIMIT:
            raise HeaderIndexError("header index: size out of range")
        sizes.append(v)
    if c > n - i:
        raise IndexError
    flags = body[i:i + c]
    i += c
    dates: list[int | None] = []
    prev = 0
    for f in flags:
        if f & ~(F_ATTACH | F_DATE):
            raise HeaderIndexError("header index: unknown flag bits")
        if f & F_DATE:
            z, i = _uv(body, i)
            prev += (z >> 1) if not z & 1 else -((z + 1) >> 1)
            if not -DATE_LIMIT < prev < DATE_LIMIT:
                raise HeaderIndexError("header index: date out of range")
            dates.append(prev)
        else:
            dates.append(None)
    cols = []
    for _ in range(5):
        col, i = _texts(body, i, c)
        cols.append(col)
    if i != n:
        raise HeaderIndexError("header index: chunk has trailing bytes")
    for k in range(c):
        yield Record(keys[k], sizes[k], dates[k], bool(flags[k] & F_ATTACH),
                     cols[0][k], cols[1][k], cols[2][k], cols[3][k], cols[4][k])


def decode(data: bytes) -> Iterator[Record]:
    """The records of an index plaintext, in the order added; raises HeaderIndexError on garbage."""
    if not isinstance(data, bytes):
        data = bytes(data)
    for count, start, stop in _walk(data):
        _, i = _uv(data, start)
        _, i = _uv(data, i)
        body = data[i:stop]
        try:
            records = list(_chunk(body, count))       # a chunk is whole or an error
        except IndexError:
            raise HeaderIndexError("header index: chunk truncated") from None
        yield from records


# --------------------------------------------------------------------------- matching

_SPELL = str.maketrans({"ø": "o", "ł": "l", "æ": "ae", "œ": "oe", "đ": "d", "ð": "d", "þ": "th",
                        "ı": "i", "ŧ": "t", "ħ": "h"})


def fold(text: str) -> str:
    """Comparison form: case-folded, accents dropped, white space collapsed (é→e, ß→ss)."""
    if text.isascii():
        return " ".join(text.lower().split())
    s = unicodedata.normalize("NFKD", text.casefold().translate(_SPELL))
    s = "".join(c for c in s if not unicodedata.combining(c))
    return " ".join(s.split())


def _epoch(v) -> int | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return int(v.timestamp())        # naive: local time
    if isinstance(v, _date_cls):
        return int(time.mktime((v.year, v.month, v.day, 0, 0, 0, 0, 0, -1)))
    return int(v)


class Query:
    """The ``find`` filters; ``matches(record)`` is true when every filter given matches."""

    def __init__(self, *, from_: str | None = None, to: str | None = None, subject: str | None = None,
                 message_id: str | None = None, since=None, before=None):
        self.from_ = fold(from_) if from_ else None
        self.to = fold(to) if to else None
        self.subject = fold(subject) if subject else None
        mid = None
        if message_id:
            mid = "".join(message_id.split()).strip("<>")
            mid = fold(mid) if mid else None
        self.message_id = mid
        self.since = _epoch(since)
        self.before = _epoch(before)

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.from_, self.to, self.subject, self.message_id,
                                           self.since, self.before))

    def matches(self, r) -> bool:
        if self.since is not None or self.before is not None:
            d = r.date
            if d is None or (self.since is not None and d < self.since) or \
                    (self.before is not None and d >= self.before):
                return False
        if self.message_id is not None and self.message_id not in fold(r.message_id):
            return False
        if self.from_ is not None and self.from_ not in fold(r.from_):
            return False
        if self.to is not None and self.to not in fold(r.to) and self.to not in fold(r.cc):
            return False
        if self.subject is not None and self.subject not in fold(r.subject):
            return False
        return True

    def filter(self, records: Iterable) -> Iterator:
        return (r for r in records if self.matches(r))
