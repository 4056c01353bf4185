"""User databases in config bundles through the real CLI (issue 18, phase 2), against the real
servers of tests/fixtures/databases.py (module-scoped: one of each per module).

Per engine (mysql, postgresql, sqlite, ldap): a Postfixadmin-like database (3 domains, 50
mailboxes, 20 aliases) named in ``[[source.databases]]``; ``check-config`` reaches it;
``dmbackup backup --target T --what config`` dumps it into the bundle (manifest: tool, size,
users); the database is dropped; the preflight lists every mailbox as added; ``restore --what
config --overwrite --databases`` puts it back row for row and a private Dovecot authenticates
against it; ``restore --what config --to DIR`` writes ``DIR/databases/<file>``.

Then, once each: the preflight of a changed database names what is added, removed and changed,
and applying keeps the replaced content under ``<state_dir>/replaced/<time>/`` (0600, named in
the output); ``--overwrite`` alone says the databases were not applied; a mail backup with a
Maildir store is cross-checked by ``verify`` (a mailbox without a Maildir and a Maildir without
a mailbox, by name, exit 1); a failing dump (wrong password, server down) is exit 3 with one
line naming the database and leaves no bundle, and no snapshot for a mail backup; a dump taken
while rows are inserted is consistent; ``check-config`` reports an unreachable database (exit
2); no credential reaches a child's argv or environment on the CLI path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess

import pytest

from dmbackup.source import databases as D
from tests.fixtures.databases import (
    ACTIVE_USER,
    ADMIN_PASSWORD,
    DOMAINS,
    MAILBOXES,
    dovecot_with_passdb,
    password_of,
    stale_socket,
)
from tests.fixtures.dovecot import shared_tmpdir
from tests.source.test_databases import BATCH, LOAD_TABLES, Engine, Writer, _load_rows
from tests.world import PASSPHRASE, World

ENGINES = ("mysql", "postgresql", "sqlite", "ldap")
_SPEC_KEYS = ("name", "path", "base", "defaults_file", "user", "host", "port", "slapd_config", "uri")


def spec_toml(spec: D.DatabaseSpec) -> str:
    """The ``[[source.databases]]`` entry of ``spec``."""
    lines = ["[[source.databases]]", f'type = "{spec.type}"']
    for key in _SPEC_KEYS:
        value = getattr(spec, key)
        if value is not None:
            lines.append(f"{key} = {value}" if isinstance(value, int) else f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def servers(request):
    names = {"mysql": "mariadb_server", "postgresql": "postgres_server", "ldap": "slapd_server"}
    return lambda kind: None if kind == "sqlite" else request.getfixturevalue(names[kind])


@pytest.fixture
def workdir():
    """Where a SQLite database lives: readable by Dovecot's auth process (pytest's tmp_path
    is not)."""
    path = shared_tmpdir("dmb-dbcli-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_world(tmp_path, spec: D.DatabaseSpec, *, store: bool = True) -> World:
    w = World(tmp_path)
    if store:
        w.make_store(messages_per_folder=2, big_bytes=1000)
    else:
        os.makedirs(w.store, exist_ok=True)
    w.write_config(spec_toml(spec))
    w.ok("init", "local")
    return w


def bundles(w: World) -> list[str]:
    d = os.path.join(w.repo_root, "config")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


# --- per engine: back up, drop, restore, authenticate ----------------------------------------------
@pytest.mark.parametrize("kind", ENGINES)
def test_config_backup_drop_restore_through_the_cli(kind, servers, workdir, tmp_path):
    engine = Engine(kind, servers(kind), workdir)
    before = engine.rows()
    w = make_world(tmp_path, engine.spec, store=False)
    assert "1 database(s) reachable" in w.ok("check-config").out

    r = w.ok("backup", "--target", "local", "--what", "config", "--json")
    rec, = json.loads(r.out)["databases"]
    assert (rec["name"], rec["type"], rec["file"], rec["stored"]) == (
        engine.spec.name, kind, f"databases/{engine.spec.filename}", True)
    assert rec["tool_version"] and rec["size"] > 0
    assert rec["counts"] == {"domains": 3, "mailboxes": 50, "aliases": 20}

    # the bundle, written out: DIR/databases/<file>, the dump the manifest describes
    out = tmp_path / "cfg"
    r = w.ok("restore", "--target", "local", "--what", "config", "--to", str(out))
    dump = out / "databases" / engine.spec.filename
    assert str(dump) in r.out and stat.S_IMODE(dump.stat().st_mode) == 0o600
    manifest = json.loads((out / "MANIFEST.json").read_text())
    mrec, = manifest["databases"]
    assert hashlib.sha256(dump.read_bytes()).hexdigest() == mrec["sha256"] and mrec["size"] == dump.stat().st_size
    assert sorted(mrec["users"]["domains"]) == sorted(DOMAINS) and len(mrec["users"]["mailboxes"]) == 50
    assert mrec["tool"] and mrec["tool_version"]

    engine.drop()
    pre = w.ok("restore", "--target", "local", "--what", "config", "--json")
    db, = json.loads(pre.out)["databases"]
    assert db["preflight"]["mailboxes"]["added"] == sorted(MAILBOXES) and not db["applied"]
    r = w.ok("restore", "--target", "local", "--what", "config", "--overwrite", "--databases", "--json")
    db, = json.loads(r.out)["databases"]
    assert db["applied"] and db["replaced"] is None
    assert engine.rows() == before
    with dovecot_with_passdb(kind, engine.server, engine.db) as dovecot:
        dovecot.imap(ACTIVE_USER, password_of(ACTIVE_USER)).logout()


# --- once: the preflight of a changed database, the replaced dump, --overwrite alone ---------------
def test_preflight_names_changes_and_apply_keeps_the_replaced_content(mariadb_server, tmp_path):
    engine = Engine("mysql", mariadb_server, tmp_path)
    before = engine.rows()
    w = make_world(tmp_path, engine.spec, store=False)
    w.ok("backup", "--target", "local", "--what", "config")
    engine.change_users()
    changed = engine.rows()

    r = w.ok("restore", "--target", "local", "--what", "config")
    assert "mailboxes added (+1): user10@example.net" in r.out
    assert "mailboxes changed (~1): user02@mail.test" in r.out
    assert "aliases removed (-1): new@example.org" in r.out and "aliases changed (~1): alias00@example.org" in r.out
    assert engine.rows() == changed                      # a preflight writes nothing

    r = w.run("restore", "--target", "local", "--what", "config", "--overwrite")
    assert r.code == 1 and "--databases" in r.err and "not applied" in r.err, r
    assert engine.rows() == changed

    r = w.ok("restore", "--target", "local", "--what", "config", "--overwrite", "--databases")
    replaced = next(line.rsplit(" ", 1)[1] for line in r.out.splitlines() if "what it replaced was dumped to" in line)
    assert replaced.startswith(os.path.join(w.state, "replaced") + "/") and replaced.endswith(engine.spec.filename)
    assert stat.S_IMODE(os.stat(replaced).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(replaced)).st_mode) == 0o700
    assert engine.rows() == before
    assert b"new@example.org" in open(replaced, "rb").read()     # what was replaced


def test_databases_option_needs_overwrite(mariadb_server, tmp_path):
    engine = Engine("mysql", mariadb_server, tmp_path)
    w = make_world(tmp_path, engine.spec, store=False)
    w.ok("backup", "--target", "local", "--what", "config")
    for extra in ((), ("--to", str(tmp_path / "x"), "--overwrite")):
        r = w.run("restore", "--target", "local", "--what", "config", "--databases", *extra)
        assert r.code == 2 and "--databases" in r.err, r
    r = w.run("restore", "--target", "local", "--databases", "--overwrite")
    assert r.code == 2 and "--what config" in r.err, r


# --- the cross-check: a mail backup, then verify ---------------------------------------------------
def _maildir(store: str, address: str) -> None:
    user, dom = address.split("@")
    md = os.path.join(store, dom, user, "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(md, sub), exist_ok=True)
    with open(os.path.join(md, "cur", "1700000000.M1P1.mx:2,S"), "w") as f:
        f.write(f"From: a@b\nTo: {address}\nSubject: hi\n\nhello\n")


def test_verify_names_mailboxes_without_maildir_and_maildirs_without_mailbox(mariadb_server, tmp_path):
    engine = Engine("mysql", mariadb_server, tmp_path)
    w = World(tmp_path)
    for address in MAILBOXES:
        _maildir(w.store, address)
    w.write_config(spec_toml(engine.spec))
    w.ok("init", "local")
    w.ok("backup", "--target", "local", "--what", "mail")
    assert w.ok("verify", "--target", "local").code == 0          # database and store agree

    engine.sql("DELETE FROM mailbox WHERE username = 'user05@mail.test';\n"
               "INSERT INTO mailbox (username, password, name, maildir, quota, local_part, domain, created, "
               "modified, active) VALUES ('ghost@example.org', 'x', 'Ghost', 'example.org/ghost/', 0, 'ghost', "
               "'example.org', '2024-03-01 10:00:00', '2024-03-01 10:00:00', 1);\n")
    w.ok("backup", "--target", "local", "--what", "mail")
    r = w.run("verify", "--target", "local")
    assert r.code == 1, r
    assert "ghost@example.org" in r.err and "no Maildir" in r.err
    assert "user05@mail.test" in r.err and "no mailbox" in r.err
    d = json.loads(w.run("verify", "--target", "local", "--json").out)
    assert d["ok"] and not d["problems"] and len(d["warnings"]) == 2 and d["exit_code"] == 1

    # the restore preflight shows the same, against the snapshot's store
    r = w.ok("restore", "--target", "local", "--what", "config")
    assert "ghost@example.org" in r.out and "user05@mail.test" in r.out


# --- a failing dump fails the run ------------------------------------------------------------------
def test_failing_dump_is_exit_3_and_commits_nothing(mariadb_server, tmp_path):
    engine = Engine("mysql", mariadb_server, tmp_path)
    w = make_world(tmp_path, engine.spec)
    stale = tmp_path / "mysqld.sock"
    stale_socket(stale)
    cases = {"wrong password": mariadb_server.write_defaults(str(tmp_path / "wrong.cnf"), password="not-it"),
             "server down": mariadb_server.write_defaults(str(tmp_path / "down.cnf"), socket=str(stale))}
    for case, defaults in cases.items():
        w.write_config(spec_toml(engine.server.spec(engine.db, defaults_file=defaults)))
        for what in ("config", "mail"):
            r = w.run("backup", "--target", "local", "--what", what)
            assert r.code == 3, (case, what, r)
            lines = [ln for ln in r.err.splitlines() if ln.startswith("dmbackup: ")]
            assert len(lines) == 1 and engine.db in lines[0] and "mysql database" in lines[0], (case, r.err)
            assert ADMIN_PASSWORD not in r.err
            assert bundles(w) == [], (case, what)
            assert w.chain_files() == [], (case, what)
        r = w.run("check-config")
        assert r.code == 2 and "source.databases[0]" in r.err and engine.db in r.err, (case, r)
    assert json.loads(w.ok("snapshots", "--json").out) == []


# --- consistency while rows are inserted -----------------------------------------------------------
def test_dump_during_inserts_through_the_cli_is_consistent(mariadb_server, tmp_path):
    engine = Engine("mysql", mariadb_server, tmp_path)
    engine.sql("".join(f"CREATE TABLE {t} (id int NOT NULL AUTO_INCREMENT PRIMARY KEY, batch int NOT NULL);\n"
                       for t in LOAD_TABLES))
    w = make_world(tmp_path, engine.spec, store=False)
    writer = Writer(engine)
    writer.start()
    try:
        assert writer.committed.wait(60) or writer.error, "the writer committed nothing"
        w.ok("backup", "--target", "local", "--what", "config")
    finally:
        writer.stop.set()
        writer.join(60)
    assert writer.error is None, writer.error
    w.ok("restore", "--target", "local", "--what", "config", "--to", str(tmp_path / "cfg"))
    assert _load_rows("mysql", tmp_path / "cfg" / "databases" / engine.spec.filename) >= 2 * BATCH


# --- credentials on the CLI path -------------------------------------------------------------------
def test_cli_passes_no_credential_to_any_child(mariadb_server, tmp_path, monkeypatch):
    """A config backup and a restore through the CLI: the MariaDB password stays in the
    defaults file, and neither it nor the repository passphrase nor the parent's database
    variables reach a child's argv or environment (mariadb-dump's real /proc/PID/cmdline and
    environ are recorded by a wrapper on PATH; every other child through subprocess)."""
    engine = Engine("mysql", mariadb_server, tmp_path)
    w = make_world(tmp_path, engine.spec, store=False)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "mariadb-dump"
    wrapper.write_text(f"#!/bin/sh\ncat /proc/$$/cmdline > {tmp_path}/cmdline\n"
                       f"cat /proc/$$/environ > {tmp_path}/environ\nexec {shutil.which('mariadb-dump')} \"$@\"\n")
    wrapper.chmod(0o755)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "DMBACKUP_PASSPHRASE": PASSPHRASE,
           "MYSQL_PWD": "parent-mysql-pwd", "PGPASSWORD": "parent-pg-pwd"}
    calls = []
    real_popen = subprocess.Popen.__init__

    def spy(self, argv, *a, **kw):
        calls.append((list(argv) if not isinstance(argv, str) else [argv], dict(kw.get("env") or os.environ)))
        return real_popen(self, argv, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", spy)
    w.ok("backup", "--target", "local", "--what", "config", env=env)
    w.ok("restore", "--target", "local", "--what", "config", "--overwrite", "--databases", env=env)
    monkeypatch.undo()

    # dmbackup's own secrets reach no child; the parent's database variables no database tool
    secrets = (ADMIN_PASSWORD, PASSPHRASE)
    db_vars = ("parent-mysql-pwd", "parent-pg-pwd")
    argv_seen = (tmp_path / "cmdline").read_bytes()
    environ = (tmp_path / "environ").read_bytes()
    assert f"--defaults-file={mariadb_server.defaults_file}".encode() in argv_seen.split(b"\0")
    tools = {os.path.basename(c[0][0]) for c in calls}
    assert {"mariadb-dump", "mariadb"} <= tools, tools
    for secret in secrets + db_vars:
        assert secret.encode() not in argv_seen and secret.encode() not in environ, secret
    for argv, cenv in calls:
        tool = os.path.basename(argv[0]) in ("mariadb-dump", "mariadb", "mysqldump", "mysql")
        for secret in secrets + (db_vars if tool else ()):
            assert not any(secret in a for a in argv), (argv[0], secret)
            assert not any(secret in v for v in cenv.values()), (argv[0], secret)
