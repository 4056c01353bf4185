"""Reading a message's header block for the header index (dmbackup.archive.headerindex).

Extraction. ``extract(data)`` reads only the header block: the bytes before the first empty
line, and never more than ``HEADER_CAP`` (64 KiB) of them. A message whose wanted fields
are all plain (ASCII without ESC or encoded words, the usual Date form, addresses whose
quotes all close; nine in ten) is read whole by ``_hscan.extract``, in the small C module
``_hscan.c`` that ``setup.py`` builds where a compiler is found (about 3 us for a 1.7 KB
header block on the shared 2-core machine); it declines any other message, and this module's
Python reads it. Where the module is not built, the Python reads every message (about 19 us).
Every compiled piece has a Python twin that gives the same answer, and the tests compare the
two on hostile input. The wanted fields with their continuation lines are cut by
``_hscan.fields`` or by ``_fields_py``, one ``findall`` of one case-insensitive regular
expression that stops at the empty line (``BytesHeaderParser`` takes about 72 us, see
``bench/headerindex_speed.py``); the *first* occurrence of each field counts. The value is decoded, and splitting it on white
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
usual ``[Day,] D Mon YYYY HH:MM[:SS] +ZZZZ`` by a fast path (which remembers the days and
offsets it has seen, as From/To/Cc remember the text of the last raw values), else
``email.utils.parsedate_tz`` (RFC 5322 and its obsolete forms: zone names, two-digit
years), else ISO 8601, checked field by field (no 30 February, offsets under 24 h) and
turned into a UTC epoch; a missing or malformed Date gives ``None``. Each text field is
cut to ``MAX_TEXT`` characters. Nothing raises: what does not parse is left empty and
flagged in ``Headers.problems`` (bits ``P_*``, names in ``PROBLEMS``), and ``extract``
returns ``None`` only for bytes that are not a header block at all (empty, or the first
line is neither ``Name:`` nor an mbox ``From `` line).

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
"""

from __future__ import annotations

import binascii
import re
from datetime import datetime

from dmbackup.archive.headerindex import (
    DATE_LIMIT,
    HEADER_CAP,
    MAX_TEXT,
    P_8BIT,
    P_BAD_DATE,
    P_BAD_ENCODING,
    P_NO_DATE,
    P_NO_END,
    P_NO_MESSAGE_ID,
    P_OBSOLETE,
    Headers,
)

__all__ = ["extract"]


_FIRST_LINE = re.compile(rb"[!-9;-~]+[ \t]*:|From ")
_EW = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
# A quoted string, or an unterminated one up to the end: every quote matches, and possessively,
# so a search never rescans (no quadratic time on '"a\\"a\\"a...').
_QUOTED = re.compile(r'"((?:[^"\\]|\\.?)*+)("|\Z)', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_ISO_DATE = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?")
_ESC_JP = (b"\x1b$B", b"\x1b$@", b"\x1b(J", b"\x1b(B")

# One pass over the header block, case-insensitive, by ``findall`` (no Python per line): each
# match is either a wanted field at a line start (name, optional white space before the colon --
# obsolete syntax --, and the value with its continuation lines) or the empty line that ends the
# block, which also takes everything after it (``(?s:.*)`` costs nothing: the engine jumps to
# the end), so the search stops there. The look-ahead lets most lines fail on one character.
_NAMES = rb"message-id|date|from|to|cc|subject|content-type|content-disposition"
_VALUE = rb"([ \t]*):([^\n]*(?:\n[ \t][^\n]*)*)"
_FIELDS = re.compile(rb"\n(?=[mdftcs\r\n])(?:(" + _NAMES + rb")" + _VALUE + rb"|\r?\n(?s:.*))", re.I)
_FIELD_AT0 = re.compile(rb"(" + _NAMES + rb")" + _VALUE, re.I)
_INITIALS = frozenset(b"mdftcs")          # first letters of the wanted names, lower case
_NONE = ("", 0)                           # a field that is absent: empty, no problem


# The wanted fields in the order of the values ``_fields`` returns.
SLOTS = (b"message-id", b"date", b"from", b"to", b"cc", b"subject", b"content-type", b"content-disposition")


def _fields_py(data: bytes, start: int, limit: int, p_no_end: int = P_NO_END,
               p_obsolete: int = P_OBSOLETE) -> tuple[tuple[bytes | None, ...], int]:
    """The first occurrence of each wanted field in the header block of data[start:limit]:
    its raw value with its line breaks (None when absent), in the order of ``SLOTS``; and the
    P_NO_END and P_OBSOLETE bits. ``_hscan.fields`` (compiled) gives the same answer."""
    found = _FIELDS.findall(data, start, limit)
    if found and not found[-1][0]:       # the empty line: the header block ended
        found.pop()
        prob = 0
    else:
        prob = p_no_end
    if limit > start and (data[start] | 32) in _INITIALS:
        m = _FIELD_AT0.match(data, start, limit)
        if m is not None:
            found.insert(0, m.groups())
    vals: dict[bytes, bytes] = {}
    obsolete = False
    for name, ws, value in reversed(found):   # the first occurrence of a name is stored last
        vals[name.lower()] = value
        if ws:
            obsolete = True
    if obsolete:                               # which occurrences count decides the bit
        seen = set()
        for name, ws, value in found:
            name = name.lower()
            if name not in seen:
                seen.add(name)
                if ws:
                    prob |= p_obsolete
    get = vals.get
    return tuple(get(n) for n in SLOTS), prob


try:            # the same in C, a fraction of the time (setup.py builds it where it can)
    from dmbackup.archive._hscan import date as _date_c, extract as _extract_c, fields as _fields_c, \
        message_id as _message_id_c, setup as _setup_c, text as _text_c
    _setup_c(Headers, MAX_TEXT, P_NO_END, P_OBSOLETE, P_NO_MESSAGE_ID, P_NO_DATE, P_BAD_DATE)
except ImportError:                            # pragma: no cover (no compiler where installed)
    _fields_c = None

    def _extract_c(data: bytes, start: int, end: int, cap: int) -> None:
        return None                            # declined: _extract decides

    def _date_c(raw: bytes) -> bool:
        return False                           # declined: _date decides

    def _message_id_c(raw: bytes, max_text: int) -> None:
        return None                            # declined: _message_id decides

    _text_c = _message_id_c
_fields = _fields_c or _fields_py


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
    # white space first (a folded value's line breaks are not printable: no per-character
    # loop for them), then any control character left becomes a space as well
    s = " ".join(s.split())
    if not s.isprintable():
        s = " ".join("".join(c if c.isprintable() else " " for c in s).split())
    return s[:MAX_TEXT] if len(s) > MAX_TEXT else s


def _ascii_text(raw: bytes) -> tuple[str, int]:
    """``_bytes_text`` with the common case (ASCII, no escape sequence) first."""
    try:
        s = raw.decode("ascii")
    except UnicodeDecodeError:
        return _bytes_text(raw)
    return (s, 0) if "\x1b" not in s else _bytes_text(raw)


def _text(raw: bytes) -> tuple[str, int]:
    s, prob = _ascii_text(raw)
    if "=?" in s:
        s, p = _decode_words(s)
        prob |= p
    if "\ufffd" in s:
        prob |= P_BAD_ENCODING
    return _clean(s), prob


def _unquote(m: re.Match) -> str:
    return _QUOTED_PAIR.sub(r"\1", m.group(1)) if m.group(2) else m.group(0)


def _address(raw: bytes) -> tuple[str, int]:
    s, prob = _ascii_text(raw)
    if "=?" in s:
        s, p = _decode_words(s)
        prob |= p
    if '"' in s:
        if "\\" not in s and not s.count('"') & 1:
            s = s.replace('"', "")        # every quote closes: what the expression below does
        else:
            s = _QUOTED.sub(_unquote, s)
    if "\ufffd" in s:
        prob |= P_BAD_ENCODING
    return _clean(s), prob


def _message_id(raw: bytes) -> str:
    s, _ = _ascii_text(raw)
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
_DATE_FAST = re.compile(rb"\s*(?:[A-Za-z]{3},\s*)?(\d{1,2}\s+[A-Za-z]{3}\s+\d{4})\s+"
                        rb"(\d\d):(\d\d)(?::(\d\d))?\s*([+-]\d{4})(?:\s|\(|$)")
# The fast path's days since 1970 of each "D Mon YYYY" seen (False: not a valid day), and the
# offsets in seconds east of each "+ZZZZ" (False: 24 hours or more): a night's mail has a few
# hundred of each. Cleared when full; one dict operation at a time, so threads may share them.
_DAY_OF: dict[bytes, int | bool] = {}
_ZONE_OF: dict[bytes, int | bool] = {}
_MEMO_MAX = 4096
_MEMO_KEY = 16                           # "D Mon YYYY" is 10 or 11 bytes; longer ones are not kept
_parsedate_tz = None


# What _address gave for the raw From/To/Cc values seen last: a night's mail comes from and goes
# to a few hundred addresses (in the bench corpus, in backup order, 96 in 100 were among the
# 4,096 seen before; Subjects only one in five, so they are not kept). Bounded like the date
# memos: cleared when full, and a raw value longer than _MEMO_VALUE bytes is not kept.
_ADDRESS_OF: dict[bytes, tuple[str, int]] = {}
_ADDRESS_GET = _ADDRESS_OF.get
_MEMO_VALUE = 256


def _address_memo(raw: bytes) -> tuple[str, int]:
    r = _address(raw)
    if len(raw) <= _MEMO_VALUE:
        if len(_ADDRESS_OF) >= _MEMO_MAX:
            _ADDRESS_OF.clear()
        _ADDRESS_OF[raw] = r
    return r


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
        day, h, mi, sec, zone = m.groups()
        days = _DAY_OF.get(day)
        if days is None:
            d, mon, y = day.split()
            mo = _MONTHS.get(mon.lower())
            if mo is not None:
                # the epoch of that day at 00:00 UTC, or None when the day does not exist
                t = _epoch_of(int(y), mo, int(d), 0, 0, 0, 0)
                days = False if t is None else t // 86400
                if len(day) <= _MEMO_KEY:          # white space in a hostile Date is not kept
                    if len(_DAY_OF) >= _MEMO_MAX:
                        _DAY_OF.clear()
                    _DAY_OF[day] = days
        if days is not None:          # else an unknown month name: the general parser below
            tz = _ZONE_OF.get(zone)
            if tz is None:
                tz = int(zone[1:3]) * 3600 + int(zone[3:5]) * 60
                tz = (-tz if zone[0] == 45 else tz) if tz < 86400 else False     # 45: "-"
                if len(_ZONE_OF) >= _MEMO_MAX:
                    _ZONE_OF.clear()
                _ZONE_OF[zone] = tz
            h, mi, sec = int(h), int(mi), int(sec) if sec else 0
            if days is False or tz is False or h > 23 or mi > 59 or sec > 60:
                return None
            return days * 86400 + h * 3600 + mi * 60 + (sec if sec < 60 else 59) - tz
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


def _attachment_scan(data: bytes, start: int, limit: int) -> bool:
    """A ``Content-Disposition: attachment`` in data[start:limit] (any case of the field name)."""
    i = data.find(b"isposition:", start, limit)
    while i >= 0:
        if data[max(start, i - 9):i].lower() == b"content-d" and \
                data[i + 11:i + 40].lstrip().lower().startswith(b"attachment"):
            return True
        i = data.find(b"isposition:", i + 11, limit)
    return False


def extract(data: bytes, *, cap: int = HEADER_CAP, start: int = 0, end: int | None = None) -> Headers | None:
    """The indexed fields of the message whose first bytes are ``data``; never raises.

    ``data`` is the whole message or its beginning (at least the header block, ideally the
    first ``cap`` bytes); or, with ``start``/``end``, the message is ``data[start:end]`` (the
    block workers pass a whole 4 MiB block and a message's place in it: no copy). Returns
    None when ``data`` is not a header block at all.
    """
    try:
        return _extract(data, cap, start, len(data) if end is None else end)
    except Exception:          # never reached by any input we know of; never let one stop a backup
        return None


def _extract(data: bytes, cap: int, start: int, end: int) -> Headers | None:
    if not isinstance(data, bytes):
        data, start, end = bytes(data[start:min(end, start + cap)]), 0, min(end, start + cap) - start
    # the whole of it in C for a message whose fields are all plain (ASCII, no encoded word,
    # the usual Date form); the rest of this function for any other (the C declines: None)
    h = _extract_c(data, start, end, cap)
    if h is not None:
        return h
    limit = min(end, len(data), start + cap)
    if limit <= start or _FIRST_LINE.match(data, start, limit) is None:
        return None
    (v_mid, v_date, v_from, v_to, v_cc, v_subject, v_ctype, v_cdisp), prob = \
        _fields(data, start, limit, P_NO_END, P_OBSOLETE)

    # each compiled fast path answers for the common value or declines (None, or False for
    # the date); the Python function then decides
    v = v_mid
    mid = (_message_id_c(v, MAX_TEXT) or _message_id(v)) if v is not None else ""
    if not mid:
        prob |= P_NO_MESSAGE_ID
    v = v_date
    if v is None:
        when = None
        prob |= P_NO_DATE
    else:
        when = _date_c(v)
        if when is False:
            when = _date(v)
        if when is None or not -DATE_LIMIT < when < DATE_LIMIT:
            when = None
            prob |= P_BAD_DATE
    v = v_from
    from_, p = (_ADDRESS_GET(v) or _address_memo(v)) if v is not None else _NONE
    prob |= p
    v = v_to
    to, p = (_ADDRESS_GET(v) or _address_memo(v)) if v is not None else _NONE
    prob |= p
    v = v_cc
    cc, p = (_ADDRESS_GET(v) or _address_memo(v)) if v is not None else _NONE
    prob |= p
    v = v_subject
    if v is None:
        subject, p = _NONE
    else:
        subject = _text_c(v, MAX_TEXT)
        subject, p = (subject, 0) if subject is not None else _text(v)
    prob |= p

    v = v_ctype
    ctype = v.split(b";", 1)[0].strip().lower() if v is not None else b""
    if ctype.startswith(b"multipart/"):
        attach = ctype == b"multipart/mixed" or (ctype != b"multipart/alternative"
                                                 and _attachment_scan(data, start, limit))
    elif ctype and b"/" in ctype and not ctype.startswith((b"text/", b"message/")):
        attach = True
    else:
        v = v_cdisp
        attach = v is not None and v.strip().lower().startswith(b"attachment")
    return Headers(mid, when, from_, to, cc, subject, attach, prob)
