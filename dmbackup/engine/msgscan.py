"""Messages in snapshots, from the page tables alone: what ``find``, ``diff``, ``ls`` and
restore by message share.

A message directory is ``<domain>/<user>/Maildir/{cur,new}`` (INBOX) or
``<domain>/<user>/Maildir/.<folder>/{cur,new}`` (Maildir++: ``.Archivio.2024`` is IMAP
``Archivio/2024``, non-ASCII in modified UTF-7); ``message_dir`` recognises one from a page
table row. A message's flags are the letters after ``:2,`` in its name (capitals: system
flags, lower case: keywords of the folder's ``dovecot-keywords``).

``MessageWalker`` hands out the message entries of a row, optionally only those whose
content key (the first 32 hex digits of their SHA-256) is in a given set. It never reads a
volume. With a set, a stored page's bytes are searched for the wanted hashes (one regular
expression pass collects the page's content keys; a page holding none is not parsed at all),
and each wanted entry is decoded on its own from where its hash is (``_pick_entries``) and
validated; a delta's added entries are validated only when wanted (``Delta.wanted_puts``):
``find`` over a month of snapshots decodes the entries it reports, not every directory of
every night. A row is a stored base page plus an inline delta (dmbackup.archive): the walker
reduces each base page once to the entries it wants and applies deltas to that reduced page
itself (a base page holding no wanted entry takes only the delta's wanted additions), so a
directory whose page barely changes over 30 snapshots is decoded once, and a row seen
unchanged in many snapshots is resolved once by its callers (``row_key``).
"""

from __future__ import annotations

import collections
import functools
import json
import re
from dataclasses import dataclass

from dmbackup.archive import layout
from dmbackup.archive.catalog import (
    MAX_PAGE_PLAIN,
    Entry,
    PageRow,
    decode_entry,
    decompress,
    loads,
)
from dmbackup.archive.layout import SNAP_RE
from dmbackup.engine.pagekeys import Wanted, prefixes_of_hex
from dmbackup.errors import CorruptObject, UsageError
from dmbackup.source.maildir_names import dir_folder, folder_dir

SYSTEM_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
BASE_CACHE_ENTRIES = 200_000        # entries of reduced base pages kept (all, when a filter keeps few)
FEW_PRESENT = 4                     # up to this many found in a page, each is looked for alone
FEW_CANDIDATES = 12                 # the same for the candidates the page-key cache names
SMALL_WANT = 16                     # up to this many wanted keys, a page is searched for each
_HASH_KEYS = re.compile(rb'"([0-9a-f]{32})[0-9a-f]{32}"')
_NUMBERS = re.compile(rb"-?\d+(?:,-?\d+){5}")
_HASH_FIELD = re.compile(rb'"([0-9a-f]{64})"')
ENTRY_WINDOW = 1 << 16              # bytes of a page decoded to read one entry (a longer one: the whole page)
ENTRY_MEMO = 200_000                # entries kept by their JSON text (``_pick_entries``; cleared when full)
_ENTRY_END = re.compile(r',\[(?:\[[^\[\]]*\](?:,\[[^\[\]]*\])*)?\]\]')     # after the hash: extents, the close
_DECODER = json.JSONDecoder()
_NOTHING: frozenset = frozenset()


def _pick_entries(plain: bytes, hashes, what: str, memo: dict | None = None,
                  extents: bool = True) -> dict[str, Entry] | None:
    """The entries whose hash field is at each of ``hashes`` (matches in a page's canonical
    JSON, ``["name","f",mode,uid,gid,mtime,size,ino,"hash",extents]``, as UTF-8 bytes), each
    decoded alone; None when the page is not laid out that way (the caller then parses the
    whole page).

    From a hash field, the entry's start is found backwards: six numbers, ``"f"``, then the
    name, a JSON string, whose opening quote is the first quote before it that is preceded
    by an even number of backslashes (a quote inside a JSON string is always escaped; and in
    UTF-8 the bytes of ``"`` and ``\\`` never occur inside another character, so this works
    on the bytes). The entry is then decoded from there by the JSON decoder (an ASCII page is
    turned into text once; another one ``ENTRY_WINDOW`` bytes at a time, from the entry) and
    must carry that very hash.

    ``memo`` (an ASCII page): the entries already decoded, by their exact JSON text. The
    same message is listed in every page its directory is stored in again (on the find chain
    two picks in three are such repeats); an entry whose text, from its ``[`` through the
    ``]`` that closes it, is one decoded before is that same ``Entry``: decoding is a function
    of the text alone. Its end is found by ``_ENTRY_END`` (extents: lists without brackets
    inside), and the text is kept only when the decoder ended exactly there.

    ``extents`` false: each entry is validated whole, then keeps no extents (None): a caller
    that never reads the content (``find``) holds a third less for each message."""
    out = {}
    n = len(plain)
    # an ASCII page (the usual one: Maildir names are ASCII) is turned into text once, and each
    # entry decoded where it starts; another page a window at a time
    text = plain.decode("ascii") if plain.isascii() else None
    for m in hashes:
        pos = m.start()
        if plain[pos - 1:pos] != b",":
            return None
        j = plain.rfind(b',"f",', max(0, pos - 160), pos)
        if j < 1 or plain[j - 1] != 0x22 or not _NUMBERS.fullmatch(plain, j + 5, pos - 1):
            return None
        k = j - 1
        while True:
            k = plain.rfind(b'"', max(0, j - 4096), k)
            if k < 1:
                return None
            b = 0
            while k - 1 - b >= 0 and plain[k - 1 - b] == 0x5C:
                b += 1
            if b % 2 == 0:
                break
        if plain[k - 1] != 0x5B:
            return None
        key = None
        if text is not None and memo is not None:
            end = _ENTRY_END.match(text, m.end())
            if end is not None:
                key = text[k - 1:end.end()]
                e = memo.get(key)
                if e is not None:
                    out[e.name] = e
                    continue
        try:
            if text is not None:
                raw, stop = _DECODER.raw_decode(text, k - 1)
                if key is not None and stop != k - 1 + len(key):
                    key = None
            else:
                cut = min(n, k - 1 + ENTRY_WINDOW)
                while cut < n and cut > k and (plain[cut] & 0xC0) == 0x80:
                    cut -= 1                 # end the window on a character boundary
                raw, _ = _DECODER.raw_decode(plain[k - 1:cut].decode("utf-8", "surrogatepass"))
        except (ValueError, RecursionError):   # (UnicodeDecodeError is a ValueError)
            return None
        if type(raw) is not list or len(raw) != 10 or raw[8] != m.group(1).decode("ascii"):
            return None
        e = decode_entry(raw, what)
        if not extents:
            e.extents = None
        out[e.name] = e
        if key is not None:
            if len(memo) >= ENTRY_MEMO:
                memo.clear()
            memo[key] = e
    return out


@dataclass(frozen=True)
class MsgDir:
    """Where a message directory is: the mailbox, the Maildir++ folder directory, the sub."""

    mailbox: str            # user@domain
    folder_dir: str         # "" for INBOX, ".Archivio.2024", ...
    sub: str                # "cur" | "new"

    @property
    def folder(self) -> str:
        return imap_folder(self.folder_dir)

    @property
    def maildir(self) -> str:
        """The mailbox's Maildir, relative to the store root."""
        user, domain = self.mailbox.split("@", 1)
        return f"{domain}/{user}/Maildir"

    @property
    def folder_rel(self) -> str:
        """The folder's directory relative to the store root (the Maildir itself for INBOX)."""
        return f"{self.maildir}/{self.folder_dir}" if self.folder_dir else self.maildir


@functools.lru_cache(maxsize=65536)
def message_dir(d: str) -> MsgDir | None:
    """The message directory a page table row is, or None."""
    parts = d.split("/")
    n = len(parts)
    if n not in (4, 5) or parts[2] != "Maildir" or parts[-1] not in ("cur", "new"):
        return None
    domain, user = parts[0], parts[1]
    if not domain or not user or "@" in user:
        return None
    if n == 5:
        fd = parts[3]
        if not fd.startswith(".") or fd in (".", ".."):
            return None
    else:
        fd = ""
    return MsgDir(f"{user}@{domain}", fd, parts[-1])


@functools.lru_cache(maxsize=4096)
def imap_folder(folder_dirname: str) -> str:
    """IMAP name of a Maildir++ folder directory ("" -> INBOX); a name that is not valid
    modified UTF-7 is shown as it is on disk."""
    try:
        return dir_folder(folder_dirname)
    except (ValueError, UnicodeError):
        return folder_dirname


def maildir_flags(name: str) -> str:
    """The info letters of a Maildir name (``...:2,FSa`` -> ``FSa``; none in new/)."""
    i = name.find(":2,")
    return name[i + 3:] if i >= 0 else ""


def flag_names(letters: str) -> list[str]:
    """IMAP system flags of the capital letters (keyword letters are left to ``keywords``)."""
    return [SYSTEM_FLAGS[c] for c in sorted(set(letters)) if c in SYSTEM_FLAGS]


def keyword_letters(letters: str) -> str:
    return "".join(sorted({c for c in letters if "a" <= c <= "z"}))


def base_of(name: str) -> str:
    """A Maildir message's base name: its identity in its folder (the name before ``:``)."""
    return name.split(":", 1)[0]


def check_mailbox(mailbox: str | None) -> str | None:
    if mailbox is None:
        return None
    user, sep, domain = mailbox.partition("@")
    if (not sep or not user or not domain or "@" in domain or "/" in mailbox or user in (".", "..")
            or domain in (".", "..")):
        raise UsageError(f"--mailbox {mailbox!r}: expected USER@DOMAIN")
    return mailbox


class Scope:
    """``--mailbox`` / ``--folder``: which message directories are looked at."""

    def __init__(self, mailbox: str | None = None, folder: str | None = None):
        self.mailbox = check_mailbox(mailbox)
        self.folder = folder
        self.folder_dir: str | None = None
        if folder is not None:
            try:
                self.folder_dir = folder_dir(folder)
            except ValueError:
                raise UsageError(f"--folder {folder!r}: not an IMAP folder name (e.g. INBOX, Archivio/2024)") from None

    def wants(self, md: MsgDir) -> bool:
        if self.mailbox is not None and md.mailbox.lower() != self.mailbox.lower():
            return False
        if self.folder_dir is not None and md.folder_dir != self.folder_dir:
            return False
        return True

    def describe(self) -> str:
        if self.mailbox and self.folder:
            return f"{self.mailbox}/{self.folder}"
        return self.mailbox or (f"folder {self.folder}" if self.folder else "every mailbox")


def row_key(chain: str, row: PageRow) -> tuple:
    """Identifies what a row resolves to: the same key means the same entries."""
    return (chain, row.dir, row.owner, row.offset, row.length, row.sha256, row.delta.size if row.delta else 0)


def message_rows(rows, scope: Scope | None = None) -> list[tuple[PageRow, MsgDir]]:
    out = []
    for row in rows:
        md = message_dir(row.dir)
        if md is not None and (scope is None or scope.wants(md)):
            out.append((row, md))
    return out


class MessageWalker:
    """The message entries of page table rows, optionally only those with wanted content.

    ``want``: a set of 32-hex-digit content keys (``entry.hash[:32]``), or None for every file.
    ``extents`` false (only with ``want``): the entries read from stored pages keep no extents
    (``_pick_entries``); those a catalog's delta adds keep theirs (the catalog holds them anyway).
    Reading a page may raise CorruptObject (and the target's errors)."""

    def __init__(self, repo, want: set[str] | None = None, pagekeys=None, *, extents: bool = True):
        self.repo = repo
        self.want = want
        self.extents = extents or want is None
        # dmbackup.engine.pagekeys.PageKeys: which pages can be skipped unread (only with ``want``)
        self.pagekeys = pagekeys if want is not None else None
        self._wanted_prefixes = Wanted(want) if want is not None else None
        self.pages_skipped = 0
        self._base: collections.OrderedDict = collections.OrderedDict()
        self._cached = 0
        self._want_bytes: set[bytes] | None = None
        self._want_ints = self._wanted_prefixes.ints if want is not None else frozenset()
        self._entry_memo: dict[str, Entry] = {}     # (``_pick_entries``)
        self.pages_read = 0

    def _wanted(self, e: Entry) -> bool:
        return e.type == "f" and e.hash is not None and (self.want is None or e.hash[:32] in self.want)

    def _reduced_base(self, chain: str, row: PageRow) -> dict[str, Entry]:
        key = (chain, row.owner, row.offset)
        hit = self._base.get(key)
        if hit is not None:
            self._base.move_to_end(key)
            return hit
        candidates = None
        pk = self.pagekeys
        if pk is not None:
            known = pk.get(chain, row.owner, row.offset, row.length)
            if known is not None:
                candidates = self._wanted_prefixes.present(known)
                if not candidates:
                    self.pages_skipped += 1
                    self._base[key] = {}
                    self._cached += 1
                    return {}
        self.pages_read += 1
        if self.want is None:
            page = self.repo.page_at(chain, row.owner, row.offset, row.length, row.dir)
            reduced = {e.name: e for e in page if self._wanted(e)}
        else:
            reduced = self._filtered_page(chain, row, candidates)
        self._base[key] = reduced
        self._cached += len(reduced) + 1
        while self._cached > BASE_CACHE_ENTRIES and len(self._base) > 1:
            _, old = self._base.popitem(last=False)
            self._cached -= len(old) + 1
        return reduced

    def drop_caches(self) -> None:
        """Let go of the pages' entries and the decoded entries kept for the next rows."""
        self._base.clear()
        self._cached = 0
        self._entry_memo.clear()

    def forget_base(self, chain: str, owner: str, offset: int) -> None:
        """Drop a page's wanted entries from the cache (a caller that reads no more rows of it)."""
        old = self._base.pop((chain, owner, offset), None)
        if old is not None:
            self._cached -= len(old) + 1

    def _filtered_page(self, chain: str, row: PageRow, candidates: list[bytes] | None = None) -> dict[str, Entry]:
        """The wanted entries of a stored page, without decoding the rest: the page's
        plaintext is searched for the wanted content hashes first (a page without one is
        never parsed), and only wanted entries are validated (``decode_entry``).
        ``candidates``: the wanted hashes (ASCII) whose key prefix the page lists, when the
        local cache knows the page: only those are looked for."""
        what = f"page of {row.dir or '/'} in {chain}/{row.owner}@{row.offset}"
        if not SNAP_RE.match(row.owner):
            raise CorruptObject(f"{what}: bad owner name")
        repo = self.repo
        sealed = repo.read_object(chain, layout.pages_name(row.owner), row.offset, row.length)
        plain = decompress(repo.keys.catalog.open(sealed, layout.page_aad(repo.id, chain, row.owner, row.offset),
                                                  what), what, MAX_PAGE_PLAIN)
        want = self.want
        if self._want_bytes is None:
            self._want_bytes = {k.encode("ascii", "replace") for k in want}
        wb = self._want_bytes
        if candidates is not None:
            present = candidates
        else:
            listed = None
            if self.pagekeys is not None:           # what the page lists, for the next search
                listed = _HASH_KEYS.findall(plain)
                self.pagekeys.add(chain, row.owner, row.offset, row.length, prefixes_of_hex(listed))
            if len(wb) <= SMALL_WANT:
                present = [k for k in wb if k in plain]
            else:       # one C pass over the page's hashes
                present = wb.intersection(listed if listed is not None else _HASH_KEYS.findall(plain))
        if not present:
            return {}
        if len(present) <= (FEW_CANDIDATES if candidates is not None else FEW_PRESENT):
            # each place a wanted hash is, found by its own bytes
            hashes = []
            for k in present:
                needle = b'"' + k
                i = plain.find(needle)
                while i >= 0:
                    m = _HASH_FIELD.match(plain, i)
                    if m is not None:
                        hashes.append(m)
                    i = plain.find(needle, i + 1)
            hashes.sort(key=lambda m: m.start())
        else:                               # many: one pass over every hash of the page
            hashes = [m for m in _HASH_FIELD.finditer(plain) if m.group(1)[:32] in wb]
        if not hashes:
            return {}
        picked = _pick_entries(plain, hashes, what, self._entry_memo, self.extents)
        if picked is not None:
            return picked
        raw = loads(plain, what)        # not laid out as dmbackup writes pages: parse it all
        if not isinstance(raw, list):
            raise CorruptObject(f"{what}: not a list of entries")
        out = {}
        for r in raw:
            if type(r) is list and len(r) == 10 and r[1] == "f" and type(r[8]) is str and r[8][:32] in want:
                e = decode_entry(r, what)
                if not self.extents:
                    e.extents = None
                out[e.name] = e
        return out

    def entries(self, chain: str, row: PageRow) -> dict[str, Entry]:
        """name -> entry of the wanted files of the directory ``row`` describes (a new dict)."""
        base, _, d = self.parts(chain, row)
        return dict(d) if d is base else d

    def parts(self, chain: str, row: PageRow) -> tuple[dict[str, Entry], frozenset | set, dict[str, Entry]]:
        """``(base, touched, entries)``: the wanted entries of the row's stored base page, the
        names whose wanted entry its delta deletes, renames (from and to), replaces or adds,
        and the wanted entries of the row (``entries``). Every name of ``base`` not in
        ``touched`` is in ``entries`` with the very same ``Entry`` and every name of
        ``entries`` not in ``base`` is in ``touched``, so a caller that meets one base page in
        many rows (the same directory on many nights) can take the untouched entries once for
        all of them (``find``). ``base`` and ``entries`` (which may be ``base`` itself) are not to be changed."""
        base = self._reduced_base(chain, row)
        delta = row.delta
        if delta is None:
            return base, _NOTHING, base
        if self.want is not None:
            # a search resolves each row once (``find`` groups equal rows): a packed delta is
            # unpacked in a twin that goes with this call, and the cached catalog keeps the bytes
            # (on the bench chain, a search for a quarter of the mail held 115 MB of unpacked
            # deltas at its peak of 505 MB)
            delta = delta.read_once()
        if self.want is not None and (not base or not delta.may_touch(base)):
            # nothing wanted in the base page (the usual case), or nothing the delta changes
            # among what is: only the added entries can bring a wanted one (and a delta from
            # the local cache of catalogs knows, without being unpacked, the key prefixes of
            # the files it adds, and whether it names any of the wanted entries at all)
            if not delta.may_put(self._want_ints):
                return base, _NOTHING, base
            keep = delta.wanted_puts(self.want)[0]
            if not keep:
                return base, _NOTHING, base
            d = dict(base)
            for e in keep:
                d[e.name] = e
            return base, {e.name for e in keep}, d
        # ``touched`` gets the names whose entry changed here: every other name of ``base``
        # keeps its Entry (a delta's deletions and renames of files that are not wanted
        # change nothing here, and are not listed)
        d = dict(base)
        touched = set()
        for n in delta.dels:
            if d.pop(n, None) is not None:
                touched.add(n)
        for old, suffix, mtime in delta.rens:
            e = d.pop(old, None)
            new = old.split(":", 1)[0] + suffix
            if e is None:
                if d.pop(new, None) is not None:    # the name now holds an entry that is not wanted
                    touched.add(new)
            else:
                touched.add(old)
                touched.add(new)
                d[new] = Entry(new, e.type, e.mode, e.uid, e.gid, e.mtime_ns if mtime is None else mtime, e.size,
                               e.ino, e.hash, e.extents, e.link)
        if self.want is None:
            for e in delta.puts:
                if self._wanted(e):
                    d[e.name] = e
                    touched.add(e.name)
                elif d.pop(e.name, None) is not None:
                    touched.add(e.name)
            return base, touched, d
        keep, other = delta.wanted_puts(self.want)      # validates only the wanted ones
        for n in other:
            if d.pop(n, None) is not None:
                touched.add(n)
        for e in keep:
            touched.add(e.name)
            d[e.name] = e
        return base, touched, d
