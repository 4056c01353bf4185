"""Who the mail server knows: domains, mailboxes and aliases, read from a user database.

A bundle's manifest lists them, restore's preflight shows what applying a dump would add,
remove or change, and ``cross_check`` compares them with the Maildirs in the mail store.
Known schemas (anything else gives ``None``: the dump is kept, but nothing is listed):

- **Postfixadmin** (also iRedMail-like installs using its tables): tables ``domain``
  (``domain``; the pseudo-domain ``ALL`` is not a domain), ``mailbox`` (``username``) and
  ``alias`` (``address`` -> comma-separated ``goto``). Postfixadmin gives every mailbox an
  alias to itself; those are not listed as aliases.
- **Mail-in-a-Box** (``users.sqlite``): ``users`` (``email``) and ``aliases`` (``source`` ->
  comma-separated ``destination``); domains are the domains of users and aliases.
- **LDAP** (the layout of tests/fixtures/databases.py, standard object classes only):
  ``organizationalUnit`` entries directly below ``ou=domains`` are domains (``ou`` = domain
  name); ``inetOrgPerson`` entries with ``mail`` are mailboxes; ``nisMailAlias`` entries are
  aliases (``cn`` = alias address, ``rfc822MailMember`` = targets). A directory with none of
  these is an unknown schema.

Reading needs no server: SQLite dumps are database files; MySQL dumps are parsed (CREATE
TABLE for the column order, INSERT statements with quoted strings and escapes); PostgreSQL
custom-format dumps go through ``pg_restore --data-only -t ... -f -`` (no connection) and the
COPY blocks are parsed; LDAP dumps are LDIF.

Size: over the ~450 lines the project aims for, on purpose: the three readers (MySQL dump
INSERTs, pg_restore COPY blocks, SQLite) and the schema knowledge they feed are one unit; each
reader is small and none is used without the others.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from dmbackup.errors import SourceError

_TABLES = ("domain", "mailbox", "alias", "users", "aliases")
# Columns that change without anything changing for the administrator.
_NOT_COMPARED = {"created", "modified", "id", "updated", "last_login", "password_expiry"}


@dataclass
class UserDb:
    """Domains, mailboxes and aliases (address -> sorted targets) of one user database.
    ``fingerprints`` maps ``"<kind>:<key>"`` to a digest of that row's settings (passwords,
    quotas, active flags...; never the values themselves), so ``diff`` can say "changed"."""

    domains: set[str] = field(default_factory=set)
    mailboxes: set[str] = field(default_factory=set)
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    schema: str = ""
    fingerprints: dict[str, str] = field(default_factory=dict)

    def as_manifest(self) -> dict[str, Any]:
        return {"schema": self.schema, "domains": sorted(self.domains), "mailboxes": sorted(self.mailboxes),
                "aliases": {a: list(t) for a, t in sorted(self.aliases.items())}}


@dataclass
class Change:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass
class UserDbDiff:
    """What applying ``new`` over ``old`` does, per kind."""

    domains: Change
    mailboxes: Change
    aliases: Change

    def __bool__(self) -> bool:
        return bool(self.domains or self.mailboxes or self.aliases)

    def lines(self) -> list[str]:
        """One line per kind and change, for the preflight: ``mailboxes: +2 -1 ~0 (+a@x, ...)``."""
        out = []
        for kind in ("domains", "mailboxes", "aliases"):
            c: Change = getattr(self, kind)
            for sign, verb, items in (("+", "added", c.added), ("-", "removed", c.removed),
                                      ("~", "changed", c.changed)):
                if items:
                    shown = ", ".join(items[:10]) + (f", ... ({len(items) - 10} more)" if len(items) > 10 else "")
                    out.append(f"{kind} {verb} ({sign}{len(items)}): {shown}")
        return out


def diff(old: UserDb, new: UserDb) -> UserDbDiff:
    """Added/removed/changed domains, mailboxes and aliases going from ``old`` (the live
    database) to ``new`` (the dump to apply)."""
    def one(kind: str, a: Iterable[str], b: Iterable[str], same) -> Change:
        a, b = set(a), set(b)
        return Change(sorted(b - a), sorted(a - b), sorted(k for k in a & b if not same(k)))

    def fp(kind: str):
        return lambda k: old.fingerprints.get(f"{kind}:{k}") == new.fingerprints.get(f"{kind}:{k}")

    return UserDbDiff(
        domains=one("domain", old.domains, new.domains, fp("domain")),
        mailboxes=one("mailbox", old.mailboxes, new.mailboxes, fp("mailbox")),
        aliases=one("alias", old.aliases, new.aliases,
                    lambda k: old.aliases[k] == new.aliases[k] and fp("alias")(k)),
    )


def cross_check(userdb: UserDb, maildir_mailboxes: Iterable[str]) -> tuple[set[str], set[str]]:
    """``(without_maildir, without_mailbox)``: mailboxes of the database with no Maildir in the
    store, and Maildirs (``user@domain``) with no mailbox in the database. Compared without
    regard to case (addresses are case-insensitive in practice); each side keeps its spelling."""
    store = {m.lower(): m for m in maildir_mailboxes}
    db = {m.lower(): m for m in userdb.mailboxes}
    return ({db[k] for k in db.keys() - store.keys()}, {store[k] for k in store.keys() - db.keys()})


# --- reading ----------------------------------------------------------------------------
def from_dump(db_type: str, path: str | os.PathLike) -> UserDb | None:
    """The user database in the dump at ``path`` of a ``db_type`` database ("mysql",
    "postgresql", "sqlite", "ldap"); None for an unknown schema. ``SourceError`` when the
    dump cannot be read."""
    path = os.fspath(path)
    try:
        if db_type == "sqlite":
            return from_tables(sqlite_tables(path))
        if db_type == "mysql":
            with open(path, "rb") as f:
                return from_tables(mysql_dump_tables(f.read().decode("utf-8", "surrogateescape")))
        if db_type == "postgresql":
            return from_tables(pg_dump_tables(path))
        if db_type == "ldap":
            from dmbackup.source.databases import parse_ldif

            with open(path, "rb") as f:
                return from_ldif(parse_ldif(f.read()))
    except (OSError, ValueError, sqlite3.Error) as exc:
        raise SourceError(f"cannot read the users from the {db_type} dump {path}: {exc}") from None
    raise ValueError(f"unknown database type {db_type!r}")


def from_database(spec, *, missing_ok: bool = True) -> UserDb | None:
    """The user database of the live database ``spec`` (a ``DatabaseSpec``): dumped to a
    private temporary file and read like a dump (one code path, one consistent snapshot).
    A database that does not exist (or an empty directory) is an empty ``UserDb`` unless
    ``missing_ok`` is false: for restore's preflight, everything in the dump is "added"."""
    from dmbackup.source.databases import EmptyDirectory, dump, exists

    if missing_ok and not exists(spec):
        return UserDb()
    with tempfile.TemporaryDirectory(prefix="dmbackup-userdb-") as tmp:
        path = os.path.join(tmp, spec.filename)
        try:
            dump(spec, path)
        except EmptyDirectory:
            if not missing_ok:
                raise
            return UserDb(schema="ldap")
        return from_dump(spec.type, path)


def _targets(value: Any) -> tuple[str, ...]:
    return tuple(sorted({t.strip() for t in str(value or "").replace("\n", ",").split(",") if t.strip()}))


def _digest(row: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    skip = _NOT_COMPARED | set(skip)
    text = "\0".join(f"{k}={row[k]!r}" for k in sorted(row) if k.lower() not in skip)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def from_tables(tables: Mapping[str, list[dict[str, Any]]]) -> UserDb | None:
    """Recognise a known schema in ``{table: [row dicts]}`` (lower-case table names)."""
    t = {k.lower(): v for k, v in tables.items()}

    def has(table: str, *cols: str) -> bool:
        rows = t.get(table)
        return rows is not None and all(all(c in r for c in cols) for r in rows)

    if all(x in t for x in ("domain", "mailbox", "alias")) and has("domain", "domain") \
            and has("mailbox", "username") and has("alias", "address", "goto"):
        db = UserDb(schema="postfixadmin")
        for r in t["domain"]:
            if str(r["domain"]).upper() != "ALL":
                db.domains.add(str(r["domain"]))
                db.fingerprints[f"domain:{r['domain']}"] = _digest(r)
        for r in t["mailbox"]:
            db.mailboxes.add(str(r["username"]))
            db.fingerprints[f"mailbox:{r['username']}"] = _digest(r)
        for r in t["alias"]:
            address, targets = str(r["address"]), _targets(r["goto"])
            if targets == (address,) and address in db.mailboxes:
                continue                                # Postfixadmin's mailbox self-alias
            db.aliases[address] = targets
            db.fingerprints[f"alias:{address}"] = _digest(r, ("goto",))
        return db
    if "users" in t and "aliases" in t and has("users", "email") and has("aliases", "source", "destination"):
        db = UserDb(schema="mailinabox")
        for r in t["users"]:
            db.mailboxes.add(str(r["email"]))
            db.fingerprints[f"mailbox:{r['email']}"] = _digest(r)
        for r in t["aliases"]:
            db.aliases[str(r["source"])] = _targets(r["destination"])
            db.fingerprints[f"alias:{r['source']}"] = _digest(r, ("destination",))
        db.domains = {a.rpartition("@")[2] for a in (*db.mailboxes, *db.aliases) if "@" in a}
        return db
    return None


def from_ldif(entries: list[tuple[str, dict[str, list[bytes]]]]) -> UserDb | None:
    """The LDAP layout of the module docstring, from ``databases.parse_ldif`` output."""
    db = UserDb(schema="ldap")
    found = False
    skip = {"structuralobjectclass", "entryuuid", "entrycsn", "creatorsname", "createtimestamp",
            "modifiersname", "modifytimestamp", "contextcsn"}

    def text(values: list[bytes]) -> list[str]:
        return [v.decode("utf-8", "surrogateescape") for v in values]

    def fingerprint(attrs: dict[str, list[bytes]]) -> str:
        return _digest({k: sorted(v) for k, v in attrs.items() if k not in skip})

    for dn, attrs in entries:
        classes = {c.lower() for c in text(attrs.get("objectclass", []))}
        rdns = [p.strip() for p in re.split(r"(?<!\\),", dn)]
        if "organizationalunit" in classes and len(rdns) > 1 and rdns[1].lower() == "ou=domains":
            for name in text(attrs.get("ou", [])):
                if rdns[0].lower() == f"ou={name.lower()}":
                    db.domains.add(name)
                    db.fingerprints[f"domain:{name}"] = fingerprint(attrs)
                    found = True
        elif "inetorgperson" in classes and attrs.get("mail"):
            mail = text(attrs["mail"])[0]
            db.mailboxes.add(mail)
            db.fingerprints[f"mailbox:{mail}"] = fingerprint(attrs)
            found = True
        elif "nismailalias" in classes and attrs.get("cn"):
            address = text(attrs["cn"])[0]
            db.aliases[address] = tuple(sorted(text(attrs.get("rfc822mailmember", []))))
            db.fingerprints[f"alias:{address}"] = fingerprint({k: v for k, v in attrs.items()
                                                               if k != "rfc822mailmember"})
            found = True
    return db if found else None


# --- SQLite -----------------------------------------------------------------------------
def sqlite_tables(path: str, only: Iterable[str] = _TABLES) -> dict[str, list[dict[str, Any]]]:
    """``{table: [rows]}`` of the (lower-case) tables ``only`` that exist in the SQLite file."""
    conn = sqlite3.connect("file:" + _quote(os.path.abspath(path)) + "?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        names = {r[0].lower(): r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        out = {}
        for table in only:
            if table.lower() in names:
                real = names[table.lower()].replace('"', '""')
                out[table.lower()] = [dict(r) for r in conn.execute(f'SELECT * FROM "{real}"')]
        return out
    finally:
        conn.close()


def _quote(path: str) -> str:
    import urllib.parse

    return urllib.parse.quote(path)


# --- MySQL dump text --------------------------------------------------------------------
_MYSQL_ESCAPES = {"0": "\0", "'": "'", '"': '"', "b": "\b", "n": "\n", "r": "\r", "t": "\t",
                  "Z": "\x1a", "\\": "\\", "%": "\\%", "_": "\\_"}
_CREATE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?`((?:[^`]|``)+)`\s*\(", re.I)
_INSERT = re.compile(r"INSERT (?:IGNORE )?INTO `((?:[^`]|``)+)`\s*(\([^)]*\))?\s*VALUES\s*", re.I)


def mysql_dump_tables(text: str, only: Iterable[str] | None = _TABLES) -> dict[str, list[dict[str, Any]]]:
    """Rows of the tables ``only`` (None: all) in a mysqldump/mariadb-dump SQL text:
    column names from each CREATE TABLE (or the INSERT's column list), values from the INSERT
    statements (strings with backslash escapes and doubled quotes, numbers, NULL, 0x hex,
    _binary/_utf8mb4 introducers). Every value is a str, bytes (hex) or None."""
    wanted = None if only is None else {t.lower() for t in only}
    columns: dict[str, list[str]] = {}
    out: dict[str, list[dict[str, Any]]] = {}
    pos = 0
    n = len(text)
    while pos < n:
        c = _CREATE.search(text, pos)
        i = _INSERT.search(text, pos)
        m = min((x for x in (c, i) if x), key=lambda x: x.start(), default=None)
        if m is None:
            break
        table = m.group(1).replace("``", "`")
        key = table.lower()
        if m is c:
            cols, pos = _create_columns(text, m.end())
            columns[key] = cols
            if wanted is None or key in wanted:
                out.setdefault(key, [])
            continue
        names = ([x.strip().strip("`").replace("``", "`") for x in m.group(2)[1:-1].split(",")]
                 if m.group(2) else columns.get(key))
        rows, pos = _values(text, m.end())
        if wanted is not None and key not in wanted:
            continue
        if names is None:
            raise ValueError(f"INSERT into `{table}` without its CREATE TABLE or a column list")
        for row in rows:
            if len(row) != len(names):
                raise ValueError(f"`{table}`: a row of {len(row)} values for {len(names)} columns")
            out.setdefault(key, []).append(dict(zip(names, row)))
    return out


def _create_columns(text: str, pos: int) -> tuple[list[str], int]:
    """Column names of a CREATE TABLE body starting at ``pos`` (just after the ``(``)."""
    cols = []
    depth = 1
    line_start = True
    i = pos
    while i < len(text) and depth:
        ch = text[i]
        if ch in "'\"":
            i = _skip_string(text, i)
            continue
        if ch == "`" and depth == 1 and line_start:
            j = i + 1
            while True:
                j = text.index("`", j)
                if text.startswith("``", j):
                    j += 2
                    continue
                break
            cols.append(text[i + 1:j].replace("``", "`"))
            i = j + 1
            line_start = False
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 1:
            line_start = True
        elif not ch.isspace():
            line_start = False
        i += 1
    return cols, i


def _skip_string(text: str, i: int) -> int:
    quote = text[i]
    i += 1
    while True:
        ch = text[i]
        if ch == "\\":
            i += 2
        elif ch == quote:
            if text.startswith(quote * 2, i):
                i += 2
            else:
                return i + 1
        else:
            i += 1


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_INTRODUCER = re.compile(r"_[A-Za-z0-9]+\s*(?=')")


def _values(text: str, pos: int) -> tuple[list[list[Any]], int]:
    """``(v, ...),(v, ...);`` starting at ``pos`` -> rows, position after the ``;``."""
    rows: list[list[Any]] = []
    i = pos
    n = len(text)
    while True:
        while text[i].isspace():
            i += 1
        if text[i] == ";":
            return rows, i + 1
        if text[i] == ",":
            i += 1
            continue
        if text[i] != "(":
            raise ValueError(f"unexpected {text[i:i + 20]!r} in INSERT values")
        i += 1
        row: list[Any] = []
        while True:
            while text[i].isspace():
                i += 1
            m = _INTRODUCER.match(text, i)
            if m:
                i = m.end()
            ch = text[i]
            if ch == "'":
                value, i = _mysql_string(text, i)
                row.append(value)
            elif text.startswith(("NULL", "null"), i):
                row.append(None)
                i += 4
            elif text.startswith(("0x", "0X"), i):
                j = i + 2
                while j < n and text[j] in "0123456789abcdefABCDEF":
                    j += 1
                row.append(bytes.fromhex(text[i + 2:j]))
                i = j
            else:
                m = _NUMBER.match(text, i)
                if not m:
                    raise ValueError(f"unexpected {text[i:i + 20]!r} in INSERT values")
                row.append(m.group(0))
                i = m.end()
            while text[i].isspace():
                i += 1
            if text[i] == ",":
                i += 1
                continue
            if text[i] == ")":
                i += 1
                break
            raise ValueError(f"unexpected {text[i:i + 20]!r} in INSERT values")
        rows.append(row)


def _mysql_string(text: str, i: int) -> tuple[str, int]:
    out = []
    i += 1
    while True:
        j = i
        while text[j] not in "'\\":
            j += 1
        out.append(text[i:j])
        if text[j] == "\\":
            nxt = text[j + 1]
            out.append(_MYSQL_ESCAPES.get(nxt, nxt))
            i = j + 2
        elif text.startswith("''", j):
            out.append("'")
            i = j + 2
        else:
            return "".join(out), j + 1


# --- PostgreSQL custom-format dumps -----------------------------------------------------
def pg_dump_tables(path: str, only: Iterable[str] = _TABLES) -> dict[str, list[dict[str, Any]]]:
    """Rows of the tables ``only`` in a ``pg_dump -Fc`` archive, through ``pg_restore
    --data-only -f -`` (no server involved); tables the archive lacks are absent."""
    from dmbackup.source.databases import _child_env, _pg_tool

    tool = _pg_tool("pg_restore")
    if tool is None:
        raise SourceError("cannot read a postgresql dump: no pg_restore (apt install postgresql-client)")
    argv = [tool, "--data-only", "--file", "-"]
    for table in only:
        argv += ["--table", table]
    with open(path, "rb") as f:
        p = subprocess.run(argv, stdin=f, capture_output=True, env=_child_env())
    if p.returncode != 0:
        from dmbackup.source.databases import _one_line

        raise SourceError(f"cannot read the postgresql dump {path}: pg_restore: {_one_line(p.stderr)}")
    return pg_copy_tables(p.stdout.decode("utf-8", "surrogateescape"))


_COPY = re.compile(r'^COPY ((?:"(?:[^"]|"")+"|[^\s(]+)\.)?("(?:[^"]|"")+"|[^\s(]+) \(([^)]*)\) FROM stdin;$')
_COPY_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def _pg_ident(s: str) -> str:
    s = s.strip()
    return s[1:-1].replace('""', '"') if s.startswith('"') else s


def pg_copy_tables(text: str) -> dict[str, list[dict[str, Any]]]:
    """``{table: [rows]}`` from the ``COPY t (cols) FROM stdin;`` blocks of pg_dump/pg_restore
    SQL text (text format: tab-separated, ``\\N`` for NULL, backslash escapes)."""
    out: dict[str, list[dict[str, Any]]] = {}
    lines = iter(text.split("\n"))
    for line in lines:
        m = _COPY.match(line)
        if not m:
            continue
        table = _pg_ident(m.group(2)).lower()
        cols = [_pg_ident(c) for c in m.group(3).split(",")] if m.group(3).strip() else []
        rows = out.setdefault(table, [])
        for data in lines:
            if data == "\\.":
                break
            fields = [_copy_field(f) for f in data.split("\t")]
            if len(fields) != len(cols):
                raise ValueError(f"{table}: a COPY row of {len(fields)} fields for {len(cols)} columns")
            rows.append(dict(zip(cols, fields)))
    return out


def _copy_field(f: str) -> str | None:
    if f == "\\N":
        return None
    if "\\" not in f:
        return f
    out = bytearray()            # octal and hex escapes are bytes of the UTF-8 text
    i = 0
    while i < len(f):
        ch = f[i]
        if ch != "\\" or i + 1 == len(f):
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
            continue
        nxt = f[i + 1]
        octal = re.match(r"[0-7]{1,3}", f[i + 1:i + 4])
        hexa = re.match(r"x([0-9a-fA-F]{1,2})", f[i + 1:i + 4])
        if nxt in _COPY_ESCAPES:
            out += _COPY_ESCAPES[nxt].encode()
            i += 2
        elif octal:
            out.append(int(octal.group(0), 8) & 0xFF)
            i += 1 + len(octal.group(0))
        elif hexa:
            out.append(int(hexa.group(1), 16))
            i += 1 + len(hexa.group(0))
        else:
            out += nxt.encode("utf-8", "surrogateescape")
            i += 2
    return out.decode("utf-8", "surrogateescape")
