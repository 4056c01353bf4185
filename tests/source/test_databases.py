"""User databases in config bundles (issue 18, phase 1): dumps, restores and the user list of
MariaDB, PostgreSQL, SQLite and OpenLDAP, against real private servers (tests/fixtures/databases.py).

Per engine: a Postfixadmin-like database (3 domains, 50 mailboxes, 20 aliases) is dumped,
dropped and applied again, row for row identical, and a private Dovecot authenticates a user
against the restored database; applied over a changed database, the preflight diff names the
changes and the replaced dump holds them; a dump taken while a writer inserts rows in
transactions of N holds a multiple of N rows; a failing dump or restore raises the project's
exit-3 error with one line naming the database; credentials never reach an argv or a child's
environment.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from dmbackup.errors import ConfigError, RestoreError, SourceError
from dmbackup.source import databases as D
from dmbackup.source import userdb as U
from tests.fixtures.databases import (
    ADMIN_PASSWORD,
    CREATED,
    DOMAINS,
    MAILBOXES,
    REAL_ALIASES,
    ACTIVE_USER,
    dovecot_with_passdb,
    ldap_entries,
    ldif,
    load_postfixadmin_sqlite,
    password_of,
    sqlite_rows,
    stale_socket,
)
from tests.fixtures.dovecot import shared_tmpdir

ENGINES = ("mysql", "postgresql", "sqlite", "ldap")


# --- one interface over the four engines ------------------------------------------------
class Engine:
    """A fresh database of one engine with the data set loaded; what a test does to it."""

    def __init__(self, kind: str, server, workdir: Path):
        self.kind, self.server, self.workdir = kind, server, workdir
        if kind == "sqlite":
            (workdir / "live").mkdir(exist_ok=True)
            self.db = str(workdir / "live" / "postfixadmin.sqlite")
            load_postfixadmin_sqlite(self.db)
            self.spec = D.DatabaseSpec("sqlite", "postfixadmin", path=self.db)
        else:
            self.db = server.create_database()
            server.load_postfixadmin(self.db)
            self.spec = server.spec(self.db)

    def rows(self):
        return sqlite_rows(self.db) if self.kind == "sqlite" else self.server.rows(self.db)

    def drop(self) -> None:
        if self.kind == "sqlite":
            os.unlink(self.db)
        else:
            self.server.drop_database(self.db)

    def sql(self, statements: str) -> None:
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.db)
            try:
                conn.executescript(statements)
            finally:
                conn.close()
        else:
            self.server.sql(statements, self.db)

    def change_users(self) -> None:
        """Remove user10, add an alias, retarget alias00, change user02's password."""
        if self.kind == "ldap":
            b = self.db
            self.server.modify(f"""\
dn: mail=user10@example.net,ou=mailboxes,{b}
changetype: delete

dn: cn=new@example.org,ou=aliases,{b}
changetype: add
objectClass: nisMailAlias
cn: new@example.org
rfc822MailMember: user00@example.org

dn: cn=alias00@example.org,ou=aliases,{b}
changetype: modify
replace: rfc822MailMember
rfc822MailMember: user01@example.net
-

dn: mail=user02@mail.test,ou=mailboxes,{b}
changetype: modify
replace: userPassword
userPassword: {{PLAIN}}changed
-
""")
            return
        self.sql(f"""
DELETE FROM mailbox WHERE username = 'user10@example.net';
DELETE FROM alias WHERE address = 'user10@example.net';
INSERT INTO alias (address, goto, domain, created, modified, active)
  VALUES ('new@example.org', 'user00@example.org', 'example.org', '{CREATED}', '{CREATED}', TRUE);
UPDATE alias SET goto = 'user01@example.net' WHERE address = 'alias00@example.org';
UPDATE mailbox SET password = '{{PLAIN}}changed' WHERE username = 'user02@mail.test';
""")


@pytest.fixture(scope="module")
def servers(request):
    """Servers are started lazily: a run of one engine's tests starts only that server."""
    names = {"mysql": "mariadb_server", "postgresql": "postgres_server", "ldap": "slapd_server"}
    return lambda kind: None if kind == "sqlite" else request.getfixturevalue(names[kind])


@pytest.fixture
def workdir():
    path = shared_tmpdir("dmb-dbtest-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=ENGINES)
def engine(request, servers, workdir) -> Engine:
    return Engine(request.param, servers(request.param), workdir)


def _one_line_naming(exc: Exception, spec: D.DatabaseSpec) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.strip() == msg, msg
    assert spec.name in msg, msg
    assert ADMIN_PASSWORD not in msg
    return msg


# --- round trips ------------------------------------------------------------------------
def test_dump_drop_apply_identical_and_dovecot_authenticates(engine, workdir):
    before = engine.rows()
    dump_path = workdir / engine.spec.filename
    info = D.dump(engine.spec, dump_path)
    assert dump_path.exists() and not Path(str(dump_path) + ".part").exists()
    assert stat.S_IMODE(dump_path.stat().st_mode) == 0o600
    assert (info.name, info.type, info.ext, info.size) == (engine.spec.name, engine.kind, engine.spec.ext,
                                                           dump_path.stat().st_size)
    assert info.tool and info.tool_version and len(info.sha256) == 64

    users = U.from_dump(engine.kind, dump_path)
    assert users is not None
    assert users.domains == set(DOMAINS)
    assert users.mailboxes == set(MAILBOXES) and len(users.mailboxes) == 50
    assert users.aliases == REAL_ALIASES and len(users.aliases) == 20

    engine.drop()
    nothing = U.from_database(engine.spec)                 # preflight over a dropped database
    assert not (nothing.domains or nothing.mailboxes or nothing.aliases)
    assert U.diff(nothing, users).mailboxes.added == sorted(MAILBOXES)
    replaced = D.restore(engine.spec, dump_path, replaced_dump_to=workdir / "replaced")
    assert replaced is None                       # nothing was there to replace
    assert engine.rows() == before

    with dovecot_with_passdb(engine.kind, engine.server, engine.db) as dovecot:
        dovecot.imap(ACTIVE_USER, password_of(ACTIVE_USER)).logout()
        with pytest.raises(Exception, match="(?i)authentication failed|login"):
            dovecot.imap(ACTIVE_USER, "wrong-password")


def test_apply_over_changed_database_preflight_and_replaced_dump(engine, workdir):
    before = engine.rows()
    dump_path = workdir / engine.spec.filename
    D.dump(engine.spec, dump_path)
    engine.change_users()
    changed_rows = engine.rows()

    live = U.from_database(engine.spec)
    wanted = U.from_dump(engine.kind, dump_path)
    preflight = U.diff(live, wanted)
    assert preflight.domains.added == preflight.domains.removed == preflight.domains.changed == []
    assert (preflight.mailboxes.added, preflight.mailboxes.removed, preflight.mailboxes.changed) == (
        ["user10@example.net"], [], ["user02@mail.test"])
    assert (preflight.aliases.added, preflight.aliases.removed, preflight.aliases.changed) == (
        [], ["new@example.org"], ["alias00@example.org"])
    assert any("user10@example.net" in line for line in preflight.lines())
    assert not U.diff(wanted, wanted)

    replaced_path = workdir / ("replaced." + engine.spec.ext)
    replaced = D.restore(engine.spec, dump_path, replaced_dump_to=replaced_path)
    assert replaced is not None and replaced.size == replaced_path.stat().st_size
    assert engine.rows() == before
    # The dump of what was replaced holds the changed database.
    assert not U.diff(U.from_dump(engine.kind, replaced_path), live)
    engine.drop()
    D.restore(engine.spec, replaced_path, None)
    assert engine.rows() == changed_rows


# --- consistency while rows are written -------------------------------------------------
BATCH = 7
# Every transaction adds BATCH rows to each of these, first to one, then to the other: a dump
# that is not one snapshot (a table read before a commit, the next one after) shows unequal
# counts even though each table on its own only ever holds whole transactions.
LOAD_TABLES = ("load_a", "load_b")


class Writer(threading.Thread):
    """Inserts BATCH rows into each LOAD_TABLES table per transaction until stopped."""

    def __init__(self, engine: Engine):
        super().__init__(daemon=True)
        self.engine = engine
        self.stop = threading.Event()
        self.committed = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            getattr(self, "_" + self.engine.kind)()
        except BaseException as exc:       # reported by the test
            self.error = exc

    def _batches(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            yield n
            if n >= 2:
                self.committed.set()
            # A breath between transactions, as any real application takes: without it a
            # SQLite writer committing nonstop starves every reader for seconds.
            self.stop.wait(0.002)

    def _client(self, argv, begin: str) -> None:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                cwd="/")
        try:
            for n in self._batches():
                # One statement per line: the server sees the transaction grow row by row.
                proc.stdin.write((begin + "".join(f"INSERT INTO {t} (batch) VALUES ({n});\n"
                                                  for t in LOAD_TABLES for _ in range(BATCH))
                                  + "COMMIT;\n").encode())
                proc.stdin.flush()
        finally:
            proc.stdin.close()
            proc.wait(timeout=60)
        assert proc.returncode == 0, proc.stderr.read()

    def _mysql(self) -> None:
        s = self.engine.server
        self._client(["mariadb", "--no-defaults", "-uroot", f"--socket={s.socket}", self.engine.db],
                     "START TRANSACTION;\n")

    def _postgresql(self) -> None:
        s = self.engine.server
        self._client(["runuser", "-u", "postgres", "--", s.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1",
                      "-h", s.host, "-p", str(s.port), "-d", self.engine.db], "BEGIN;\n")

    def _sqlite(self) -> None:
        conn = sqlite3.connect(self.engine.db, timeout=60, isolation_level=None)
        try:
            for n in self._batches():
                conn.execute("BEGIN IMMEDIATE")
                for t in LOAD_TABLES:
                    for _ in range(BATCH):
                        conn.execute(f"INSERT INTO {t} (batch) VALUES (?)", (n,))
                conn.execute("COMMIT")
        finally:
            conn.close()

    def _ldap(self) -> None:
        # LDAP's unit of atomicity is one operation on one entry (slapd 2.5.13's multi-entry
        # transactions crash it, see dmbackup.source.databases): each add is an entry with
        # BATCH values, and the entries are numbered so that a dump must hold 1..k.
        b = self.engine.db
        for n in self._batches():
            self.engine.server.modify(ldif([(f"cn=row{n},ou={LOAD_TABLES[0]},{b}", {
                "objectClass": ["organizationalRole"], "cn": [f"row{n}"],
                "description": [f"{n}-{i}" for i in range(BATCH)]})]))


def _load_rows(kind: str, path: Path) -> int:
    """Rows in the dump's load tables; fails when the dump holds part of a transaction."""
    if kind == "ldap":
        rows = {int(dn.split(",")[0][len("cn=row"):]): attrs for dn, attrs in D.parse_ldif(path.read_bytes())
                if dn.startswith("cn=row")}
        assert sorted(rows) == list(range(1, len(rows) + 1)), f"entries missing: {sorted(rows)}"
        assert all(len(a["description"]) == BATCH for a in rows.values()), "an entry with part of its values"
        return len(rows) * BATCH
    if kind == "mysql":
        tables = U.mysql_dump_tables(path.read_text(), LOAD_TABLES)
    elif kind == "postgresql":
        tables = U.pg_dump_tables(str(path), LOAD_TABLES)
    else:
        tables = U.sqlite_tables(str(path), LOAD_TABLES)
    counts = [len(tables.get(t, [])) for t in LOAD_TABLES]
    assert counts[0] % BATCH == 0 and counts[0] == counts[1], f"a dump holds part of a transaction: {counts}"
    return counts[0]


def test_dump_during_writes_is_consistent(engine, workdir):
    if engine.kind == "ldap":
        engine.server.modify(f"dn: ou={LOAD_TABLES[0]},{engine.db}\nchangetype: add\n"
                             f"objectClass: organizationalUnit\nou: {LOAD_TABLES[0]}\n")
    else:
        key = {"mysql": "id int NOT NULL AUTO_INCREMENT PRIMARY KEY",
               "postgresql": "id serial PRIMARY KEY", "sqlite": "id INTEGER PRIMARY KEY"}[engine.kind]
        engine.sql("".join(f"CREATE TABLE {t} ({key}, batch int NOT NULL);\n" for t in LOAD_TABLES))
    writer = Writer(engine)
    writer.start()
    counts = []
    try:
        assert writer.committed.wait(60) or writer.error, "the writer committed nothing"
        for i in range(3):
            path = workdir / f"during-{i}.{engine.spec.ext}"
            D.dump(engine.spec, path)
            counts.append(_load_rows(engine.kind, path))
    finally:
        writer.stop.set()
        writer.join(60)
    assert writer.error is None, writer.error
    assert counts[-1] >= 2 * BATCH, counts


# --- failures ---------------------------------------------------------------------------
def _failing_specs(kind: str, server, workdir: Path):
    """(case, spec) pairs whose dump must fail."""
    if kind == "mysql":
        db = server.create_database()
        wrong = server.write_defaults(str(workdir / "wrong.cnf"), password="not-the-password")
        stale = workdir / "mysqld.sock"
        stale_socket(stale)
        down = server.write_defaults(str(workdir / "down.cnf"), socket=str(stale))
        return [("wrong password", server.spec(db, defaults_file=wrong)),
                ("server down", server.spec(db, defaults_file=down)),
                ("no such database", server.spec("nonexistent_db"))]
    if kind == "postgresql":
        db = server.create_database()
        down_dir = workdir / "pg-down"
        down_dir.mkdir()
        stale_socket(down_dir / f".s.PGSQL.{server.port}")
        return [("no such role (peer)", server.spec(db, user="nobody")),
                ("server down", server.spec(db, host=str(down_dir))),
                ("no such database", server.spec("nonexistent_db"))]
    if kind == "sqlite":
        garbage = workdir / "garbage.sqlite"
        garbage.write_bytes(b"this is not a database\n" * 100)
        return [("missing file", D.DatabaseSpec("sqlite", "users", path=str(workdir / "missing.sqlite"))),
                ("not a database", D.DatabaseSpec("sqlite", "garbage", path=str(garbage)))]
    base = server.create_database()
    return [("empty directory", server.spec(base)),
            ("no database for the base", server.spec("dc=nothing,dc=test", name="nothing")),
            ("no slapd config", server.spec(base, slapd_config=str(workdir / "no-slapd.d")))]


def test_failing_dump_raises_one_line_exit_3(engine, workdir):
    for case, spec in _failing_specs(engine.kind, engine.server, workdir):
        out = workdir / f"fail.{spec.ext}"
        with pytest.raises(SourceError) as info:
            D.dump(spec, out)
        assert info.value.exit_code == 3, case
        print(f"{engine.kind} {case}: {_one_line_naming(info.value, spec)}")
        assert not out.exists() and not Path(str(out) + ".part").exists(), case
        assert D.check(spec), f"check() found no problem with: {case}"


def test_check_passes_on_a_good_database(engine):
    assert D.check(engine.spec) == []


def test_check_wants_a_private_defaults_file(mariadb_server, workdir):
    db = mariadb_server.create_database()
    loose = mariadb_server.write_defaults(str(workdir / "loose.cnf"), mode=0o644)
    problems = D.check(mariadb_server.spec(db, defaults_file=loose))
    assert len(problems) == 1 and "chmod 600" in problems[0] and db in problems[0]
    missing = D.check(mariadb_server.spec(db, defaults_file=str(workdir / "none.cnf")))
    assert len(missing) == 1 and "cannot be read" in missing[0]


def test_failed_postgresql_restore_changes_nothing(postgres_server, workdir):
    engine = Engine("postgresql", postgres_server, workdir)
    good = workdir / "good.pgdump"
    D.dump(engine.spec, good)
    engine.change_users()
    changed = engine.rows()
    data = good.read_bytes()
    broken = workdir / "broken.pgdump"
    broken.write_bytes(data[: len(data) * 2 // 3])          # cut off: the last table's data is gone
    with pytest.raises(RestoreError) as info:
        D.restore(engine.spec, broken, workdir / "replaced.pgdump")
    assert info.value.exit_code == 3
    assert "nothing was changed" in _one_line_naming(info.value, engine.spec)
    assert engine.rows() == changed                            # one transaction: all or nothing


def test_failed_mysql_restore_puts_the_previous_content_back(mariadb_server, workdir):
    engine = Engine("mysql", mariadb_server, workdir)
    good = workdir / "good.sql"
    D.dump(engine.spec, good)
    engine.change_users()
    changed = engine.rows()
    text = good.read_text()
    first = text.index("UNLOCK TABLES;") + len("UNLOCK TABLES;")   # after the first table (alias)
    broken = workdir / "broken.sql"
    broken.write_text(text[:first] + "\nTHIS IS NOT SQL;\n" + text[first:])
    with pytest.raises(RestoreError) as info:
        D.restore(engine.spec, broken, workdir / "replaced.sql")
    msg = _one_line_naming(info.value, engine.spec)
    assert "previous content was put back" in msg and "replaced.sql" in msg
    assert engine.rows() == changed


def test_failed_ldap_restore_puts_the_previous_content_back(slapd_server, workdir):
    engine = Engine("ldap", slapd_server, workdir)
    good = workdir / "good.ldif"
    D.dump(engine.spec, good)
    engine.change_users()
    changed = engine.rows()
    # A dump whose last entry breaks the schema: the entries before it are applied, then the
    # failure puts the previous content back.
    broken = workdir / "broken.ldif"
    broken.write_bytes(good.read_bytes() + f"dn: cn=bad,ou=aliases,{engine.db}\nobjectClass: nisMailAlias\n"
                       "cn: bad\nnoSuchAttribute: x\n\n".encode())
    with pytest.raises(RestoreError) as info:
        D.restore(engine.spec, broken, workdir / "replaced.ldif")
    msg = _one_line_naming(info.value, engine.spec)
    assert "previous content was put back" in msg and "replaced.ldif" in msg
    assert engine.rows() == changed


def test_ldap_restore_without_write_access_says_what_to_grant(slapd_server, workdir):
    stock = slapd_server.create_database(root_writes=False)          # Debian's ACLs: root only reads
    good = workdir / "good.ldif"
    good.write_bytes(ldif(ldap_entries(stock), changetype=None))
    with pytest.raises(RestoreError) as info:
        D.restore(slapd_server.spec(stock), good, workdir / "replaced.ldif")
    msg = _one_line_naming(info.value, slapd_server.spec(stock))
    assert "Insufficient access" in msg and "olcRootDN" in msg
    assert slapd_server.entries(stock) == []


def test_ldap_dump_of_another_directory_is_refused(slapd_server, workdir):
    one = Engine("ldap", slapd_server, workdir)
    other = Engine("ldap", slapd_server, workdir)
    dump_of_one = workdir / "one.ldif"
    D.dump(one.spec, dump_of_one)
    before = other.rows()
    with pytest.raises(RestoreError, match="outside .*another directory"):
        D.restore(other.spec, dump_of_one, workdir / "replaced.ldif")
    assert other.rows() == before


# --- credentials ------------------------------------------------------------------------
def test_credentials_never_in_argv_or_environment(mariadb_server, postgres_server, workdir, monkeypatch):
    """The MariaDB password lives only in the defaults file: never in a child's argv or
    environment; the parent's secrets and database variables are not inherited either. A
    wrapper on PATH records the real /proc/PID/cmdline and environ of mariadb-dump."""
    monkeypatch.setenv("DMBACKUP_PASSPHRASE", "parent-passphrase-xyz")
    monkeypatch.setenv("MYSQL_PWD", "parent-mysql-pwd-xyz")
    monkeypatch.setenv("PGPASSWORD", "parent-pg-pwd-xyz")
    secrets = (ADMIN_PASSWORD, "parent-passphrase-xyz", "parent-mysql-pwd-xyz", "parent-pg-pwd-xyz")
    bindir = workdir / "bin"
    bindir.mkdir()
    real = shutil.which("mariadb-dump")
    wrapper = bindir / "mariadb-dump"
    wrapper.write_text(f"#!/bin/sh\ncat /proc/$$/cmdline > {workdir}/cmdline\n"
                       f"cat /proc/$$/environ > {workdir}/environ\nexec {real} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")

    calls = []
    real_run = subprocess.run

    def spy(argv, *a, **kw):
        calls.append((list(argv), dict(kw.get("env") or os.environ)))
        return real_run(argv, *a, **kw)

    monkeypatch.setattr(subprocess, "run", spy)      # the module every dump tool is started through
    my = Engine("mysql", mariadb_server, workdir)
    pg = Engine("postgresql", postgres_server, workdir)
    for e in (my, pg):
        assert D.check(e.spec) == []
        D.dump(e.spec, workdir / e.spec.filename)
        D.restore(e.spec, workdir / e.spec.filename, workdir / ("replaced-" + e.spec.filename))

    argv_seen = (workdir / "cmdline").read_bytes().split(b"\0")
    assert argv_seen[1] == str(wrapper).encode() and f"--defaults-file={mariadb_server.defaults_file}".encode() \
        in argv_seen
    environ = (workdir / "environ").read_bytes()
    tools = [c for c in calls if os.path.basename(c[0][0]) in
             ("mariadb-dump", "mariadb", "pg_dump", "pg_restore", "psql")]
    assert {os.path.basename(c[0][0]) for c in tools} >= {"mariadb-dump", "mariadb", "pg_dump", "pg_restore", "psql"}
    for secret in secrets:
        assert secret.encode() not in b"\0".join(argv_seen) and secret.encode() not in environ
        for argv, env in tools:
            assert not any(secret in a for a in argv), argv
            assert not any(secret in v for v in env.values()), (argv[0], secret)
    for argv, env in tools:
        assert not {"MYSQL_PWD", "PGPASSWORD", "DMBACKUP_PASSPHRASE"} & set(env), argv[0]


# --- specs ------------------------------------------------------------------------------
def test_parse_specs_defaults_and_names():
    specs = D.parse_specs([
        {"type": "mysql", "name": "postfix"},
        {"type": "postgresql", "name": "mail", "user": "postgres"},
        {"type": "sqlite", "path": "/home/user-data/mail/users.sqlite"},
        {"type": "ldap", "base": "dc=example,dc=org"},
    ])
    assert [s.filename for s in specs] == ["postfix.sql", "mail.pgdump", "users.sqlite", "example.org.ldif"]
    assert specs[0].defaults_file == "/etc/mysql/debian.cnf"
    assert specs[1].user == "postgres" and specs[1].host is None
    assert specs[3].slapd_config == "/etc/ldap/slapd.d" and specs[3].uri == "ldapi:///"
    assert D.parse_specs(None) == []


@pytest.mark.parametrize("entries, where, words", [
    ([{"type": "oracle", "name": "x"}], "source.databases[0].type", "expected one of"),
    ([{"name": "x"}], "source.databases[0].type", "missing"),
    ([{"type": "mysql"}], "source.databases[0].name", "missing"),
    ([{"type": "mysql", "name": "x", "password": "p"}], "source.databases[0].password", "unknown key"),
    ([{"type": "mysql", "name": "x", "defaults_file": "my.cnf"}], "source.databases[0].defaults_file", "absolute"),
    ([{"type": "postgresql", "name": "x", "port": 0}], "source.databases[0].port", "port"),
    ([{"type": "sqlite", "path": "users.sqlite"}], "source.databases[0].path", "absolute"),
    ([{"type": "ldap", "base": "example"}], "source.databases[0].base", "DN"),
    ([{"type": "mysql", "name": "a"}, {"type": "mysql", "name": "a"}], "source.databases[1]", "a.sql"),
    ({"type": "mysql"}, "source.databases", "list"),
])
def test_parse_specs_errors_name_the_entry(entries, where, words):
    with pytest.raises(ConfigError) as info:
        D.parse_specs(entries, file="/etc/dmbackup/dmbackup.toml")
    msg = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in msg
    assert msg.startswith(f"/etc/dmbackup/dmbackup.toml: {where}: ") and words in msg, msg


# --- userdb -----------------------------------------------------------------------------
def test_userdb_mail_in_a_box_sqlite(workdir):
    path = workdir / "users.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""
CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE, password TEXT NOT NULL,
  extra, privileges TEXT NOT NULL DEFAULT '');
CREATE TABLE aliases (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL UNIQUE,
  destination TEXT NOT NULL, permitted_senders TEXT);
INSERT INTO users (email, password, privileges) VALUES ('me@box.example', '{SHA512-CRYPT}$6$x', 'admin'),
  ('you@other.example', '{SHA512-CRYPT}$6$y', '');
INSERT INTO aliases (source, destination) VALUES ('postmaster@box.example', 'me@box.example'),
  ('all@other.example', 'me@box.example, you@other.example');
""")
    conn.close()
    spec = D.DatabaseSpec("sqlite", "users", path=str(path))
    D.dump(spec, workdir / "dump.sqlite")
    users = U.from_dump("sqlite", workdir / "dump.sqlite")
    assert users.schema == "mailinabox"
    assert users.domains == {"box.example", "other.example"}
    assert users.mailboxes == {"me@box.example", "you@other.example"}
    assert users.aliases == {"postmaster@box.example": ("me@box.example",),
                             "all@other.example": ("me@box.example", "you@other.example")}
    assert users.as_manifest()["mailboxes"] == ["me@box.example", "you@other.example"]


def test_userdb_unknown_schema_is_none(workdir):
    path = workdir / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    assert U.from_dump("sqlite", path) is None


def test_cross_check_with_the_mail_store():
    users = U.UserDb(domains={"a.example"}, mailboxes={"Me@a.example", "ghost@a.example"})
    without_maildir, without_mailbox = U.cross_check(users, {"me@a.example", "orphan@a.example"})
    assert without_maildir == {"ghost@a.example"}
    assert without_mailbox == {"orphan@a.example"}


def test_mysql_dump_parser_escapes():
    text = r"""CREATE TABLE `alias` (
  `address` varchar(255) NOT NULL DEFAULT 'x,y',
  `goto` text NOT NULL COMMENT 'a (b), c',
  `we``ird` int(11) DEFAULT NULL,
  PRIMARY KEY (`address`)
) ENGINE=InnoDB;
INSERT INTO `alias` VALUES ('a@x','O\'Brien \\ \"q\" ;),(\n\t',NULL),('b''c',_binary 'z',-1.5e3),('d',0x41FF,7);
"""
    rows = U.mysql_dump_tables(text, None)["alias"]
    assert rows == [
        {"address": "a@x", "goto": "O'Brien \\ \"q\" ;),(\n\t", "we`ird": None},
        {"address": "b'c", "goto": "z", "we`ird": "-1.5e3"},
        {"address": "d", "goto": b"A\xff", "we`ird": "7"},
    ]


def test_pg_copy_parser_escapes():
    text = ('COPY public."Mail Box" (username, name, "we""ird") FROM stdin;\n'
            "a@x\tO'Brien \\\\ tab\\there\\nnew\t\\N\n"
            "b@x\t\\303\\251\\x41\t1\n"
            "\\.\n")
    assert U.pg_copy_tables(text) == {"mail box": [
        {"username": "a@x", "name": "O'Brien \\ tab\there\nnew", 'we"ird': None},
        {"username": "b@x", "name": "éA", 'we"ird': "1"},
    ]}


def test_ldif_changes_minimal():
    live = D.parse_ldif(b"dn: dc=x\nobjectClass: top\ndc: x\nentryUUID: 1\n\n"
                        b"dn: cn=gone,dc=x\ncn: gone\nobjectClass: person\nsn: g\n\n"
                        b"dn: cn=same,dc=x\ncn: same\nobjectClass: person\nsn: s\ndescription: old\n\n")
    wanted = D.parse_ldif(b"version: 1\n\ndn: dc=x\nobjectClass: top\ndc: x\nentryUUID: 2\n\n"
                          b"dn: cn=same,dc=x\ncn: same\nobjectClass: person\nsn: s\n\n"
                          b"dn: cn=new,dc=x\ncn: new\nobjectClass: person\nsn:: w6k=\n\n")
    changes = D.ldif_changes(live, wanted, {"entryuuid"})
    assert changes == (b"dn: cn=gone,dc=x\nchangetype: delete\n\n"
                       b"dn: cn=new,dc=x\nchangetype: add\ncn: new\nobjectclass: person\nsn:: w6k=\n\n"
                       b"dn: cn=same,dc=x\nchangetype: modify\ndelete: description\n-\n\n")
