"""The config bundle: one self-contained, sealed file holding the appliance's configuration.

A bundle travels alone (by e-mail to an address outside the server) or sits in a repository
(``config/<id>.bundle`` and inside every mail snapshot). It must be restorable by someone who
has only the file and the passphrase, and it must never be silently wrong: any damage,
truncation, reordering or a forged bundle is refused before a single file is written.

Format, versions 1 and 2 (integers big-endian; they differ only in the payload)::

    offset  size  field
    0       8     magic b"DMBUNDLE"
    8       1     format version: 1, or 2 when the bundle holds database dumps
    9       1     protection: 1 = passphrase   (scrypt -> AES-256-GCM; the mailbox target)
                              2 = key          (AES-256-GCM with a key the caller holds, i.e.
                                                the repository's "bundle" key)
                              3 = none         (SHA-256 against accidents only: no key, so
                                                anyone can forge it; repositories created with
                                                encryption.mode = "none". Secret files are
                                                left out, see below)
    10      1     compression: 1 = zstd
    11      1     chunk size exponent E: the payload is sealed in chunks of 2**E bytes (12..24)
    12      16    bundle id, random (printed as 32 hex digits)
    28      8     creation time, Unix seconds
    36      1     scrypt log2(N)  \
    37      1     scrypt r         | protection 1 only, zero otherwise
    38      1     scrypt p         |
    39      16    scrypt salt     /
    55      2     L, length of the key check
    57      L     key check: seal(b"dmbackup-bundle-key-check",
                             aad = b"dmbackup-bundle/check\\0" || header bytes 0..55)
    57+L    32    SHA-256 of header bytes 0..57+L

Then the payload in sealed chunks. The payload is split into chunks of 2**E bytes; the last
chunk holds 1..2**E bytes (0 only if the payload is empty, which a writer never produces).
Chunk i is ``seal(chunk, aad)`` with::

    aad = b"dmbackup-bundle/chunk\\0" || SHA-256(header) || u32 len(context) || context
          || u64 i || u8 final (1 for the last chunk, else 0)

``seal`` is ``nonce(12) || AES-256-GCM ciphertext || tag(16)`` for protections 1 and 2, and
``SHA-256(aad || chunk) || chunk`` for protection 3 (the ``crypto.Sealer`` and
``crypto.PlainSealer`` formats). Every chunk but the last therefore has the same sealed
size, so a reader finds the boundaries from the header alone. Binding the index and the
final flag into the AAD makes a reordered, dropped, duplicated or appended chunk fail; a
bundle cut at a chunk boundary fails because its new last chunk was sealed as "not final".
``context`` is empty for a bundle sent alone; a repository binds its bundles to itself by
passing its id. With protection 1 the key is scrypt(passphrase, salt, N, r, p), 32 bytes;
the key check separates "wrong passphrase" (exit 6) from damage (exit 4): the header
checksum is verified first (damage), then the key check (key), then each chunk (damage).
A reader asked to open a bundle with a passphrase accepts only protection 1, so nobody
without the passphrase can forge a bundle the mailbox restore would accept.

The payload is a zstd frame holding a POSIX (pax) tar, so a person who has decrypted it
can list it with ``zstd -dc | tar -tv``. Its first member is ``MANIFEST.json``: the
manifest from ``appliance.build_manifest`` plus ``id`` (the header's bundle id, in hex) and
``files``, one record per following member, in order::

    {"path": "/etc/postfix/main.cf", "type": "file"|"dir"|"symlink", "mode": 420,
     "uid": 0, "gid": 0, "mtime_ns": ..., "size": ..., "sha256": "<hex>"|null,
     "target": "<link target>"|null}

An unencrypted bundle (protection 3) never holds secrets: files the configuration names as
secret (passphrase and password files), names ending in ``.pw``, ``.key``, ``.private``,
``.passwd`` or ``.secret``, files not readable by others and PEM private keys are left out and
listed by path in the manifest's ``secrets_left_out``. A repository's restore never applies an
unencrypted bundle to the live system (see ``dmbackup.engine.configbundle``).

The next members are exactly those files, named by their absolute path without the
leading "/" (``etc/postfix/main.cf``), carrying the same mode, owner, mtime (seconds; the
pax record ``DMBACKUP.mtime_ns`` keeps nanoseconds) and link target. A reader checks that
the members match the manifest one for one (name, type, size, SHA-256, mode, owner, link
target) and that every path is absolute, normalised, free of ``..`` and NUL, unique, and
not below a link or a file; anything else is damage.

Database dumps (version 2; ``dmbackup.source.databases``) follow the files. The manifest's
``databases`` lists one record per configured database, in order::

    {"name": "postfixadmin", "type": "mysql", "file": "databases/postfixadmin.sql",
     "size": ..., "sha256": "<hex>", "stored": true, ...}

(the other keys describe the dump: tool, version, users; see ``dmbackup.engine.configdb``).
Each record with ``stored`` true has one member named by its ``file``
(``databases/<name>.<ext>``, one component below ``databases/``, from a safe alphabet), a
regular file of that size and SHA-256; a reader checks them like the files. An unencrypted
bundle never stores a dump (a user database holds password hashes): its records say
``"stored": false``. A version 1 reader refuses a version 2 bundle by its header ("upgrade
dmbackup") instead of calling its extra members damage.

Writing a bundle's files back (under a directory, or over the live system) is
``dmbackup.archive.bundlefiles``.

Size: over the ~450 lines the project aims for, on purpose: this is the whole byte format of a
bundle, writer and reader side by side so that they cannot drift apart (as catalog.py is for
catalogs); extracting entries to a file system is in bundlefiles.py.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import secrets as _secrets
import stat
import struct
import tarfile
import tempfile
from dataclasses import dataclass

import zstandard

from dmbackup import utctime
from dmbackup.source import appliance

from dmbackup.archive import crypto
from dmbackup.errors import CorruptObject, DmError, KeyProblem, SourceError, WrongPassphrase

MAGIC = b"DMBUNDLE"
VERSION = 2                         # the newest format this dmbackup reads and writes
VERSIONS = (1, 2)                   # 2: database dumps follow the files
PROT_PASSPHRASE = 1
PROT_KEY = 2
PROT_NONE = 3
COMP_ZSTD = 1
CHUNK_EXP = 16                      # 64 KiB chunks: small overhead, small memory
MANIFEST_NAME = "MANIFEST.json"
MTIME_PAX = "DMBACKUP.mtime_ns"
MAX_PAYLOAD = 1 << 30               # refuse to inflate more than 1 GiB of configuration
MAX_RATIO = 256                     # ... or more than 256 times its compressed size,
MAX_RATIO_FLOOR = 64 << 20          # once past 64 MiB
_KEYCHECK = b"dmbackup-bundle-key-check"
_FIXED = struct.Struct(">8sBBBB16sQBBB16sH")     # bytes 0..57 (up to and with L)
_ZSTD_LEVEL = 10
_READ = 1 << 20
DUMP_DIR = "databases"
_DUMP_NAME = re.compile(r"databases/[A-Za-z0-9_@+-][A-Za-z0-9_.@+-]{0,200}")


@dataclass(frozen=True)
class Header:
    version: int
    protection: int
    compression: int
    chunk_exp: int
    bundle_id: bytes
    created: int
    log2n: int
    r: int
    p: int
    salt: bytes
    check: bytes
    raw: bytes                      # the header bytes as stored

    @property
    def id(self) -> str:
        return self.bundle_id.hex()

    @property
    def time(self) -> str:
        return utctime.iso(_dt.datetime.fromtimestamp(self.created, _dt.timezone.utc))


@dataclass(frozen=True)
class Entry:
    """One file, directory or link from a bundle; ``path`` is absolute."""

    path: str
    type: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    sha256: str | None = None
    target: str | None = None
    data: bytes | None = None

    @property
    def rel(self) -> str:
        return self.path.lstrip("/")


@dataclass(frozen=True)
class Dump:
    """One database dump from a bundle: its manifest record and its bytes."""

    file: str                       # "databases/<name>.<ext>", relative
    record: dict
    data: bytes

    @property
    def filename(self) -> str:
        return self.file.split("/", 1)[1]


class Contents(tuple):
    """``(manifest, entries)`` of an opened bundle, with its ``dumps`` as an attribute (so the
    many callers that unpack two values keep working)."""

    dumps: list[Dump]

    def __new__(cls, manifest: dict, entries: list, dumps: list[Dump]):
        self = super().__new__(cls, (manifest, entries))
        self.dumps = dumps
        return self


# --- sealing ------------------------------------------------------------------------------
def _protection_for_key(key) -> tuple[int, object]:
    if isinstance(key, (bytes, bytearray)):
        return PROT_KEY, crypto.Sealer(bytes(key))
    if not (hasattr(key, "seal") and hasattr(key, "open")):
        raise TypeError("key must be 32 bytes or a crypto.Sealer / crypto.PlainSealer")
    return (PROT_KEY if getattr(key, "encrypted", True) else PROT_NONE), key


def _as_bytes(passphrase) -> bytes:
    return passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)


def _overhead(protection: int) -> int:
    return 32 if protection == PROT_NONE else crypto.OVERHEAD


def _chunk_aad(header_hash: bytes, context: bytes, index: int, final: bool) -> bytes:
    return (b"dmbackup-bundle/chunk\0" + header_hash + struct.pack(">I", len(context)) + context
            + struct.pack(">QB", index, 1 if final else 0))


class _ChunkSealer(io.RawIOBase):
    """A write-only stream that seals the payload in chunks; ``finish`` seals the last one."""

    def __init__(self, out, sealer, header_hash: bytes, context: bytes, chunk_size: int):
        self.out, self.sealer = out, sealer
        self.hh, self.context, self.size = header_hash, context, chunk_size
        self.buf = bytearray()
        self.index = 0
        self.written = 0

    def writable(self):
        return True

    def _emit(self, chunk: bytes, final: bool) -> None:
        sealed = self.sealer.seal(chunk, _chunk_aad(self.hh, self.context, self.index, final))
        self.out.write(sealed)
        self.written += len(sealed)
        self.index += 1

    def write(self, b) -> int:
        self.buf += b
        # Keep at least one byte back: only finish() knows which chunk is the last.
        while len(self.buf) > self.size:
            self._emit(bytes(self.buf[:self.size]), False)
            del self.buf[:self.size]
        return len(b)

    def finish(self) -> None:
        self._emit(bytes(self.buf), True)
        self.buf.clear()


def _make_header(protection: int, sealer, bundle_id: bytes, created: int,
                 log2n: int = 0, r: int = 0, p: int = 0, salt: bytes = b"\0" * 16, version: int = 1) -> bytes:
    check_len = len(_KEYCHECK) + _overhead(protection)
    fixed = _FIXED.pack(MAGIC, version, protection, COMP_ZSTD, CHUNK_EXP, bundle_id, created,
                        log2n, r, p, salt, check_len)
    check = sealer.seal(_KEYCHECK, b"dmbackup-bundle/check\0" + fixed[:-2])
    assert len(check) == check_len
    body = fixed + check
    return body + hashlib.sha256(body).digest()


def parse_header(data) -> Header:
    """The clear-text header of a bundle (no key needed); damage raises CorruptObject."""
    mv = memoryview(data)
    if len(mv) < _FIXED.size or bytes(mv[:8]) != MAGIC:
        raise CorruptObject("not a dmbackup config bundle (bad magic)")
    (magic, version, protection, comp, exp, bid, created, log2n, r, p, salt,
     check_len) = _FIXED.unpack_from(mv, 0)
    if version not in VERSIONS:
        raise CorruptObject(f"config bundle format version {version} is not supported by this "
                            f"dmbackup (it reads versions {VERSIONS[0]} to {VERSIONS[-1]}): upgrade dmbackup")
    end = _FIXED.size + check_len + 32
    if check_len > 256 or len(mv) < end:
        raise CorruptObject("config bundle is truncated (incomplete header)")
    raw = bytes(mv[:end])
    if hashlib.sha256(raw[:-32]).digest() != raw[-32:]:
        raise CorruptObject("config bundle header is damaged (checksum mismatch)")
    if protection not in (PROT_PASSPHRASE, PROT_KEY, PROT_NONE) or comp != COMP_ZSTD \
            or not 12 <= exp <= 24:
        raise CorruptObject("config bundle header has unknown settings")
    if protection == PROT_PASSPHRASE:
        # bounded by the cost dmbackup writes: a hostile header must not cost gigabytes
        if not (10 <= log2n <= 16 and crypto.scrypt_cost_ok(1 << log2n, r, p)):
            raise CorruptObject("config bundle header has scrypt parameters out of range")
    return Header(version, protection, comp, exp, bid, created, log2n, r, p, salt,
                  raw[_FIXED.size:_FIXED.size + check_len], raw)


def _opener(header: Header, passphrase, key):
    if (passphrase is None) == (key is None):
        raise TypeError("pass exactly one of passphrase= or key=")
    if passphrase is not None:
        if header.protection != PROT_PASSPHRASE:
            raise KeyProblem("this config bundle is sealed with a repository key, not a passphrase: "
                             "restore it through the repository it came from")
        k = crypto.derive_kek(_as_bytes(passphrase), header.salt, 1 << header.log2n, header.r, header.p)
        sealer = crypto.Sealer(k)
    else:
        prot, sealer = _protection_for_key(key)
        if header.protection == PROT_PASSPHRASE:
            raise KeyProblem("this config bundle is sealed with a passphrase, not a repository key: "
                             "restore it with the passphrase")
        if prot != header.protection:
            raise KeyProblem("this config bundle's protection does not match the repository's "
                             "encryption mode (encrypted vs. unencrypted)")
    try:
        sealer.open(header.check, b"dmbackup-bundle/check\0" + header.raw[:_FIXED.size - 2], "key check")
    except CorruptObject:
        if passphrase is not None:
            raise WrongPassphrase(
                f"wrong passphrase: it does not open this config bundle (made {header.time}); check "
                "encryption.passphrase_file or $DMBACKUP_PASSPHRASE") from None
        raise KeyProblem("the repository key does not open this config bundle: it belongs to "
                         "another repository") from None
    return sealer


def _open_payload(data, passphrase, key, context: bytes) -> tuple[Header, bytes]:
    header = parse_header(data)
    sealer = _opener(header, passphrase, key)
    hh = hashlib.sha256(header.raw).digest()
    mv = memoryview(data)[len(header.raw):]
    over = _overhead(header.protection)
    full = (1 << header.chunk_exp) + over
    n = max(1, -(-len(mv) // full))
    if len(mv) - (n - 1) * full < over:
        raise CorruptObject("config bundle is truncated (last chunk incomplete)")
    out = bytearray()
    for i in range(n):
        final = i == n - 1
        piece = bytes(mv[i * full:(i + 1) * full])
        try:
            out += sealer.open(piece, _chunk_aad(hh, context, i, final), f"config bundle chunk {i}")
        except CorruptObject:
            raise CorruptObject(
                f"config bundle chunk {i} of {n} failed authentication: the bundle is damaged, "
                "truncated or was altered") from None
    return header, bytes(out)


# --- payload ------------------------------------------------------------------------------
def _inflate(comp: bytes) -> bytes:
    # Streamed under a cap that also bounds the ratio: configuration compresses maybe 10:1,
    # a zstd bomb 30000:1; an unencrypted bundle is anyone's to forge.
    cap = min(MAX_PAYLOAD, max(MAX_RATIO_FLOOR, len(comp) * MAX_RATIO))
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(comp), read_across_frames=False)
    parts, total = [], 0
    while True:
        piece = reader.read(_READ)
        if not piece:
            break
        total += len(piece)
        if total > cap:
            raise CorruptObject(f"config bundle inflates beyond {cap >> 20} MiB; refused")
        parts.append(piece)
    return b"".join(parts)


def _valid_path(p) -> bool:
    if not isinstance(p, str) or not p.startswith("/") or p == "/" or "\0" in p:
        return False
    parts = p[1:].split("/")
    return all(part not in ("", ".", "..") for part in parts) and p != "/" + MANIFEST_NAME


def _check_records(files) -> list[dict]:
    if not isinstance(files, list):
        raise CorruptObject("config bundle manifest has no file list")
    seen: dict[str, str] = {}
    for rec in files:
        if not isinstance(rec, dict):
            raise CorruptObject("config bundle manifest has a malformed file record")
        path, kind = rec.get("path"), rec.get("type")
        ints = [rec.get(k) for k in ("mode", "uid", "gid", "mtime_ns", "size")]
        if not _valid_path(path):
            raise CorruptObject(f"config bundle names an unsafe path {path!r}; refused")
        if kind not in ("file", "dir", "symlink") or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
            raise CorruptObject(f"config bundle has a malformed record for {path}")
        if rec["mode"] > 0o7777 or rec["uid"] >= 1 << 32 or rec["gid"] >= 1 << 32:
            raise CorruptObject(f"config bundle has a malformed record for {path}")
        if kind == "symlink" and (not isinstance(rec.get("target"), str) or not rec["target"]
                                  or "\0" in rec["target"]):
            raise CorruptObject(f"config bundle has a malformed link {path}")
        if kind == "file" and not isinstance(rec.get("sha256"), str):
            raise CorruptObject(f"config bundle has no checksum for {path}")
        if path in seen:
            raise CorruptObject(f"config bundle lists {path} twice; refused")
        # Nothing may live below a link or a file: a link in the middle would redirect writes.
        parent = os.path.dirname(path)
        while parent != "/":
            if seen.get(parent) in ("symlink", "file"):
                raise CorruptObject(f"config bundle puts {path} below the {seen[parent]} {parent}; refused")
            parent = os.path.dirname(parent)
        seen[path] = kind
    return files


def _parse_payload(tar_bytes: bytes, header: Header) -> tuple[dict, list[Entry], list[Dump]]:
    tf = tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:", encoding="utf-8",
                      errors="surrogateescape")
    first = tf.next()
    if first is None or first.name != MANIFEST_NAME or not first.isfile():
        raise CorruptObject("config bundle does not start with its manifest")
    manifest = json.loads(tf.extractfile(first).read().decode("utf-8", "surrogateescape"))
    if not isinstance(manifest, dict) or manifest.get("format") != appliance.MANIFEST_FORMAT:
        raise CorruptObject("config bundle manifest is not a dmbackup manifest")
    if manifest.get("id") != header.id:
        raise CorruptObject("config bundle manifest belongs to another bundle (id mismatch)")
    records = _check_records(manifest.get("files"))
    entries = []
    for rec in records:
        m = tf.next()
        if m is None:
            raise CorruptObject(f"config bundle lacks {rec['path']}, listed in its manifest")
        kind = "file" if m.isreg() else "dir" if m.isdir() else "symlink" if m.issym() else "other"
        if m.name.rstrip("/") != rec["path"][1:] or kind != rec["type"] or m.mode != rec["mode"] \
                or m.uid != rec["uid"] or m.gid != rec["gid"]:
            raise CorruptObject(f"config bundle member {m.name!r} does not match its manifest "
                                f"({rec['path']})")
        data = None
        if kind == "file":
            data = tf.extractfile(m).read()
            if len(data) != rec["size"] or hashlib.sha256(data).hexdigest() != rec["sha256"]:
                raise CorruptObject(f"{rec['path']} in the config bundle does not match its checksum")
        elif kind == "symlink" and m.linkname != rec["target"]:
            raise CorruptObject(f"link {rec['path']} in the config bundle does not match its manifest")
        entries.append(Entry(path=rec["path"], type=kind, mode=rec["mode"], uid=rec["uid"],
                             gid=rec["gid"], mtime_ns=rec["mtime_ns"], size=len(data) if data is not None else 0,
                             sha256=rec.get("sha256"), target=rec.get("target"), data=data))
    dumps = _read_dumps(tf, manifest, header)
    if tf.next() is not None:
        raise CorruptObject("config bundle holds members its manifest does not list")
    return manifest, entries, dumps


def _dump_records(manifest: dict) -> list[dict]:
    """The manifest's database records whose dumps are stored, checked for shape."""
    recs = manifest.get("databases", [])
    if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
        raise CorruptObject("config bundle manifest has a malformed database list")
    stored, seen = [], set()
    for rec in recs:
        if not rec.get("stored"):
            continue
        name, size = rec.get("file"), rec.get("size")
        if not isinstance(name, str) or not _DUMP_NAME.fullmatch(name) or name in seen:
            raise CorruptObject(f"config bundle names an unsafe or repeated dump {name!r}; refused")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(rec.get("sha256"), str):
            raise CorruptObject(f"config bundle has a malformed record for the dump {name}")
        seen.add(name)
        stored.append(rec)
    return stored


def _read_dumps(tf, manifest: dict, header: Header) -> list[Dump]:
    """The database dumps after the files, each matching its manifest record."""
    records = _dump_records(manifest)
    if records and header.version < 2:
        raise CorruptObject("config bundle of format version 1 claims database dumps")
    dumps = []
    for rec in records:
        m = tf.next()
        if m is None or m.name != rec["file"] or not m.isreg():
            raise CorruptObject(f"config bundle lacks the dump {rec['file']}, listed in its manifest")
        data = tf.extractfile(m).read()
        if len(data) != rec["size"] or hashlib.sha256(data).hexdigest() != rec["sha256"]:
            raise CorruptObject(f"the dump {rec['file']} in the config bundle does not match its checksum")
        dumps.append(Dump(rec["file"], rec, data))
    return dumps


def read_bundle(data, *, passphrase=None, key=None, context: bytes = b"") -> Contents:
    """Open, authenticate and parse a bundle: ``(manifest, entries)``, with the database dumps
    as ``.dumps`` (a ``Contents``).

    Exactly one of ``passphrase`` (bytes or str; protection 1) or ``key`` (a ``crypto.Sealer``,
    ``crypto.PlainSealer`` or 32 raw bytes; protections 2 and 3). Damage of any kind raises
    ``CorruptObject``; a wrong passphrase ``WrongPassphrase``; a wrong key ``KeyProblem``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("data must be bytes")
    header, comp = _open_payload(data, passphrase, key, context)
    try:
        return Contents(*_parse_payload(_inflate(comp), header))
    except DmError:
        raise
    except Exception as exc:    # the payload is authenticated, but may come from a buggy writer
        raise CorruptObject(f"config bundle payload cannot be parsed ({type(exc).__name__}: {exc})") from None


def decrypt_bundle(data, *, passphrase=None, key=None, context: bytes = b"") -> bytes:
    """The authenticated payload as a ``.tar.zst``, for a person who wants ordinary tools."""
    return _open_payload(data, passphrase, key, context)[1]


# --- writing ------------------------------------------------------------------------------
# Secrets never go into a bundle that is not encrypted (protection 3): whoever holds the
# medium could read them. A file counts as a secret when the configuration names it (the
# passphrase and password files), when its name says so, when the system keeps it from other
# users (not world-readable: sasl_passwd, Dovecot's passwd-file, most private keys), or when
# it holds a PEM private key whatever its mode.
SECRET_SUFFIXES = (".pw", ".key", ".private", ".passwd", ".secret")
_PEM_PRIVATE = b"PRIVATE KEY-----"


def _is_secret(path: str, mode: int, head: bytes, named: frozenset) -> bool:
    return (path in named or os.path.basename(path).endswith(SECRET_SUFFIXES)
            or not mode & 0o004 or _PEM_PRIVATE in head)


def _read_items(collection: appliance.Collection, spool, secrets: frozenset | None = None
                ) -> tuple[list[dict], list[str], list[str]]:
    """Read every file once into ``spool``; returns manifest records, new warnings and, when
    ``secrets`` is given (an unencrypted bundle), the secret files left out.

    Metadata is taken from the open descriptor, so what is recorded is what was read.
    """
    records, warnings, left_out = [], [], []
    for it in collection.items:
        rec = {"path": it.path, "type": it.type, "mode": it.mode, "uid": it.uid, "gid": it.gid,
               "mtime_ns": it.mtime_ns, "size": 0, "sha256": None, "target": it.target}
        if it.type == "file":
            try:
                fd = os.open(it.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:
                warnings.append(f"{it.path} vanished during the backup; not in the bundle")
                continue
            except OSError as exc:
                warnings.append(f"cannot read {it.path}: {exc.strerror}; not in the bundle")
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    warnings.append(f"{it.path} is no longer a regular file; not in the bundle")
                    continue
                h, size = hashlib.sha256(), 0
                offset = spool.tell()
                while True:
                    piece = os.read(fd, _READ)
                    if not piece:
                        break
                    h.update(piece)
                    spool.write(piece)
                    size += len(piece)
            except OSError as exc:
                warnings.append(f"cannot read {it.path}: {exc.strerror}; not in the bundle")
                spool.seek(offset)
                spool.truncate()
                continue
            finally:
                os.close(fd)
            if secrets is not None:
                spool.seek(offset)
                content = spool.read(size)
                if _is_secret(it.path, stat.S_IMODE(st.st_mode), content, secrets):
                    spool.seek(offset)
                    spool.truncate()
                    left_out.append(it.path)
                    continue
            rec.update(mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                       mtime_ns=st.st_mtime_ns, size=size, sha256=h.hexdigest(), _offset=offset)
        records.append(rec)
    return records, warnings, left_out


def _seal_header(bundle_id: bytes, created: int, passphrase, key, version: int) -> tuple[bytes, object]:
    """The header of a new bundle and the sealer of its chunks."""
    if passphrase is not None:
        salt = os.urandom(16)
        n = crypto.SCRYPT_N
        log2n = n.bit_length() - 1
        sealer = crypto.Sealer(crypto.derive_kek(_as_bytes(passphrase), salt, n, crypto.SCRYPT_R,
                                                 crypto.SCRYPT_P))
        return _make_header(PROT_PASSPHRASE, sealer, bundle_id, created, log2n, crypto.SCRYPT_R,
                            crypto.SCRYPT_P, salt, version=version), sealer
    prot, sealer = _protection_for_key(key)
    return _make_header(prot, sealer, bundle_id, created, version=version), sealer


def _plan_dumps(manifest: dict, dumps, plain: bool) -> tuple[list[dict], list[tuple[dict, str]], list[str]]:
    """(the manifest's database records as stored, the (record, path) of each dump to store,
    warnings). An unencrypted bundle stores no dump: a user database holds password hashes."""
    dumps = dict(dumps or {})
    records, stored, warnings = [], [], []
    for rec in manifest.get("databases") or []:
        name = rec.get("file")
        keep = not plain and name in dumps
        if keep and not _DUMP_NAME.fullmatch(name):
            raise ValueError(f"not a dump member name: {name!r}")
        records.append(dict(rec, stored=keep))
        if keep:
            stored.append((records[-1], dumps[name]))
    left_out = [r["file"] for r in records if not r["stored"] and r.get("file") in dumps]
    if left_out:
        warnings.append(f"database dump(s) {', '.join(left_out)} not stored: an unencrypted bundle "
                        "never holds one (a user database holds password hashes); the manifest lists "
                        "the users")
    return records, stored, warnings


class _Hashing(io.RawIOBase):
    """A file read through SHA-256, so a dump is stored exactly as its record says."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def readable(self):
        return True

    def read(self, n=-1) -> bytes:
        b = self.f.read(n)
        self.h.update(b)
        return b


def _add_dump(tf, rec: dict, path: str, created: int) -> None:
    ti = tarfile.TarInfo(rec["file"])
    ti.type, ti.size, ti.mode, ti.mtime = tarfile.REGTYPE, rec["size"], 0o600, created
    ti.uname = ti.gname = ""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size != rec["size"]:
            raise SourceError(f"the dump {path} changed size before it was sealed; run the backup again")
        src = _Hashing(f)
        tf.addfile(ti, src)
    if src.h.hexdigest() != rec["sha256"]:
        raise SourceError(f"the dump {path} changed before it was sealed; run the backup again")


def _add_item(tf, rec: dict, spool) -> None:
    ti = tarfile.TarInfo(rec["path"][1:])
    ti.mode, ti.uid, ti.gid = rec["mode"], rec["uid"], rec["gid"]
    ti.mtime = rec["mtime_ns"] // 1_000_000_000
    ti.pax_headers = {MTIME_PAX: str(rec["mtime_ns"])}
    ti.uname = ti.gname = ""
    src = None
    if rec["type"] == "file":
        ti.type, ti.size = tarfile.REGTYPE, rec["size"]
        spool.seek(rec["_offset"])
        src = spool
    elif rec["type"] == "dir":
        ti.type = tarfile.DIRTYPE
    else:
        ti.type, ti.linkname = tarfile.SYMTYPE, rec["target"]
    tf.addfile(ti, src)


def write_bundle(paths, manifest: dict, out, *, passphrase=None, key=None,
                 context: bytes = b"", secret_paths=(), dumps=None) -> dict:
    """Collect ``paths``, seal them with ``manifest`` into the binary stream ``out``.

    ``paths`` is a ``appliance.Collection`` or an iterable of absolute paths. Exactly one of
    ``passphrase`` (protection 1) or ``key`` (protection 2 or 3, see ``read_bundle``).
    Returns the manifest as stored (with ``id``, ``files``, ``warnings``) plus the keys
    ``files_count``, ``bytes`` and ``stored_bytes`` (not stored in the bundle). An
    unencrypted bundle (protection 3) leaves secret files out (``secret_paths`` names the
    ones the configuration knows; see ``_is_secret``) and lists them in the manifest's
    ``secrets_left_out``. ``dumps`` maps the ``file`` of each record in the manifest's
    ``databases`` to the dump file to store (format version 2; never when unencrypted).
    """
    if (passphrase is None) == (key is None):
        raise TypeError("pass exactly one of passphrase= or key=")
    collection = paths if isinstance(paths, appliance.Collection) else appliance.collect(paths)
    bundle_id = _secrets.token_bytes(16)
    try:
        created = int(utctime.parse_time(manifest["time"]).timestamp())
    except (KeyError, ValueError, TypeError):
        created = int(utctime.utc_now().timestamp())
    plain = passphrase is None and _protection_for_key(key)[0] == PROT_NONE
    db_records, to_store, db_warnings = _plan_dumps(manifest, dumps, plain)
    header, sealer = _seal_header(bundle_id, created, passphrase, key, 2 if to_store else 1)

    with tempfile.SpooledTemporaryFile(max_size=16 << 20) as spool:
        records, warnings, left_out = _read_items(
            collection, spool, frozenset(secret_paths) if plain else None)
        stored = dict(manifest)
        stored["id"] = bundle_id.hex()
        stored["warnings"] = list(manifest.get("warnings", [])) + warnings + db_warnings
        if plain:
            stored["secrets_left_out"] = left_out
        if "databases" in manifest:
            stored["databases"] = db_records
        stored["files"] = [{k: v for k, v in r.items() if k != "_offset"} for r in records]
        manifest_bytes = json.dumps(stored, indent=1, sort_keys=True).encode("utf-8", "surrogateescape")

        out.write(header)
        sink = _ChunkSealer(out, sealer, hashlib.sha256(header).digest(), context, 1 << CHUNK_EXP)
        zw = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).stream_writer(sink, closefd=False)
        tf = tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                          errors="surrogateescape")
        ti = tarfile.TarInfo(MANIFEST_NAME)
        ti.size, ti.mode, ti.mtime = len(manifest_bytes), 0o600, created
        tf.addfile(ti, io.BytesIO(manifest_bytes))
        for rec in records:
            _add_item(tf, rec, spool)
        for rec, path in to_store:
            _add_dump(tf, rec, path, created)
        tf.close()
        zw.flush(zstandard.FLUSH_FRAME)
        sink.finish()
    result = dict(stored)
    result["files_count"] = sum(1 for r in records if r["type"] == "file")
    result["bytes"] = sum(r["size"] for r in records)
    result["stored_bytes"] = len(header) + sink.written
    return result


def bundle_bytes(paths, manifest: dict, *, passphrase=None, key=None, context: bytes = b"",
                 secret_paths=(), dumps=None) -> tuple[bytes, dict]:
    buf = io.BytesIO()
    info = write_bundle(paths, manifest, buf, passphrase=passphrase, key=key, context=context,
                        secret_paths=secret_paths, dumps=dumps)
    return buf.getvalue(), info
