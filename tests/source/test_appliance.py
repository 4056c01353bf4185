"""What goes into a config bundle and what its manifest says about the appliance.

Mail stores are built by hand here (``<store>/<domain>/<user>/Maildir/cur/...``), so the
expected domains, mailboxes, sizes and counts are known exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from dmbackup import utctime
from dmbackup import __version__, config

from dmbackup.archive import bundle

from dmbackup.engine import configbundle

from dmbackup.source import appliance

from dmbackup.archive import crypto
from dmbackup.errors import CorruptObject, NotFound

PW = b"manifest test passphrase"


@pytest.fixture(autouse=True)
def _weak_kdf(monkeypatch):
    monkeypatch.setattr(crypto, "SCRYPT_N", 1 << 10)
    monkeypatch.delenv("DMBACKUP_PASSPHRASE", raising=False)


def put(path, data: bytes = b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def make_store(root) -> dict:
    """A store with known content; returns {address: (messages, bytes, folders)}."""
    store = os.path.join(root, "vmail")
    # alice: INBOX (2 in cur, 1 in new), .Sent (1), .Archivio.2024 (1); tmp/ and indexes ignored
    a = f"{store}/example.it/alice/Maildir"
    put(f"{a}/cur/1700000001.M1.host:2,S", b"a" * 100)
    put(f"{a}/cur/1700000002.M2.host:2,RS", b"b" * 200)
    put(f"{a}/new/1700000003.M3.host", b"c" * 300)
    put(f"{a}/tmp/1700000004.M4.host", b"t" * 5000)
    put(f"{a}/dovecot-uidlist", b"3 V1 N4\n")
    put(f"{a}/dovecot.index.cache", b"i" * 7000)
    put(f"{a}/.Sent/cur/1700000005.M5.host:2,S", b"d" * 40)
    os.makedirs(f"{a}/.Sent/new")
    put(f"{a}/.Archivio.2024/cur/1700000006.M6.host:2,", b"e" * 60)
    os.makedirs(f"{a}/.Drafts/cur")
    os.makedirs(f"{a}/.Drafts/new")
    # bob: empty INBOX
    for d in ("cur", "new", "tmp"):
        os.makedirs(f"{store}/example.it/bob/Maildir/{d}")
    # carla at another domain
    put(f"{store}/studio-rossi.it/carla/Maildir/new/1700000007.M7.host", b"f" * 1234)
    # noise: a domain without mailboxes, a user without Maildir, a stray file
    os.makedirs(f"{store}/empty.example")
    os.makedirs(f"{store}/example.it/ghost/mail")
    put(f"{store}/README", b"not a domain")
    return {
        "alice@example.it": (5, 700, 4),
        "bob@example.it": (0, 0, 1),
        "carla@studio-rossi.it": (1, 1234, 1),
    }


def test_mailboxes_lists_domains_and_counts_messages(tmp_path):
    expected = make_store(str(tmp_path))
    doms = appliance.mailboxes(str(tmp_path / "vmail"))
    assert [d["domain"] for d in doms] == ["example.it", "studio-rossi.it"]
    got = {b["address"]: (b["messages"], b["bytes"], b["folders"]) for d in doms for b in d["mailboxes"]}
    assert got == expected
    assert doms[0]["messages"] == 5 and doms[0]["bytes"] == 700
    assert [b["user"] for b in doms[0]["mailboxes"]] == ["alice", "bob"]


def test_mailboxes_of_a_missing_store_is_empty(tmp_path):
    assert appliance.mailboxes(str(tmp_path / "nope")) == []


def test_collect_files_dirs_links_and_missing(tmp_path):
    etc = tmp_path / "etc"
    put(f"{etc}/postfix/main.cf", b"main")
    put(f"{etc}/postfix/maps/virtual", b"v")
    os.chmod(f"{etc}/postfix/maps/virtual", 0o640)
    os.chown(f"{etc}/postfix/maps/virtual", 0, 5000)
    outside = tmp_path / "outside"
    put(f"{outside}/big", b"o" * 1000)
    os.symlink(outside, f"{etc}/postfix/outside-link")       # a link inside: kept as a link
    coll = appliance.collect([f"{etc}/postfix/", f"{etc}/postfix/maps", f"{tmp_path}/missing"])
    paths = {i.path: i for i in coll.items}
    assert sorted(paths) == [f"{etc}/postfix", f"{etc}/postfix/main.cf", f"{etc}/postfix/maps",
                             f"{etc}/postfix/maps/virtual", f"{etc}/postfix/outside-link"]
    link = paths[f"{etc}/postfix/outside-link"]
    assert link.type == "symlink" and link.target == str(outside)
    v = paths[f"{etc}/postfix/maps/virtual"]
    assert (v.type, v.mode, v.uid, v.gid, v.size) == ("file", 0o640, 0, 5000, 1)
    assert v.mtime_ns == os.stat(f"{etc}/postfix/maps/virtual").st_mtime_ns
    assert coll.missing == [f"{tmp_path}/missing"]
    assert coll.files == 2 and coll.bytes == 5


def test_a_configured_path_that_is_a_link_is_kept_and_followed(tmp_path):
    real = tmp_path / "opt" / "dovecot"
    put(f"{real}/dovecot.conf", b"protocols = imap\n")
    os.makedirs(tmp_path / "etc")
    os.symlink(real, tmp_path / "etc" / "dovecot")
    coll = appliance.collect([str(tmp_path / "etc" / "dovecot")])
    kinds = {i.path: i.type for i in coll.items}
    assert kinds[str(tmp_path / "etc" / "dovecot")] == "symlink"
    assert kinds[f"{real}/dovecot.conf"] == "file"
    assert coll.followed == {str(tmp_path / "etc" / "dovecot"): str(real)}


def test_manifest_fields(tmp_path):
    make_store(str(tmp_path))
    store = str(tmp_path / "vmail")
    os.chown(store, 5000, 5001)
    put(f"{tmp_path}/etc/postfix/main.cf")
    conf = tmp_path / "dovecot.conf"
    conf.write_text("mail_location = maildir:/srv/mail/%d/%n/Maildir\n")
    coll = appliance.collect([f"{tmp_path}/etc", f"{tmp_path}/nowhere"])
    t = utctime.parse_time("2026-11-28T02:30:00Z")
    m = appliance.build_manifest(hostname="mail.example.it", mail_store=store,
                                 config_paths=[f"{tmp_path}/etc", f"{tmp_path}/nowhere"],
                                 collection=coll, dovecot_config=str(conf), time=t)
    assert m["hostname"] == "mail.example.it"
    assert m["time"] == "2026-11-28T02:30:00Z"
    assert m["dmbackup_version"] == __version__
    assert (m["vmail_uid"], m["vmail_gid"]) == (5000, 5001)
    assert m["missing"] == [f"{tmp_path}/nowhere"]
    assert m["mailbox_count"] == 3
    if shutil.which("dovecot"):
        out = subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.strip()
        assert m["dovecot_version"] == out
    else:
        assert m["dovecot_version"] is None
    if shutil.which("postconf"):
        assert m["postfix_version"]
    else:
        assert m["postfix_version"] is None
    if shutil.which("doveconf"):
        assert (m["mail_location"], m["mail_location_source"]) == ("maildir:/srv/mail/%d/%n/Maildir", "doveconf")
    # configured ids win over the store's owner
    m2 = appliance.build_manifest(hostname="h", mail_store=store, config_paths=[], collection=coll,
                                  vmail_uid=8, vmail_gid=12)
    assert (m2["vmail_uid"], m2["vmail_gid"]) == (8, 12)


def test_manifest_without_the_mail_tools(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    coll = appliance.collect([])
    m = appliance.build_manifest(hostname="h", mail_store="/var/vmail-nowhere", config_paths=[],
                                 collection=coll)
    assert m["postfix_version"] is None and m["dovecot_version"] is None
    assert m["mail_location"] == "maildir:/var/vmail-nowhere/%d/%n/Maildir"
    assert m["mail_location_source"] == "dmbackup config"
    assert (m["vmail_uid"], m["vmail_gid"]) == (None, None)
    assert m["domains"] == []


def test_time_parsing():
    assert utctime.iso(utctime.parse_time("2026-11-28T03:30:00+01:00")) == "2026-11-28T02:30:00Z"
    assert utctime.iso(utctime.parse_time("2026-11-28")) == "2026-11-28T00:00:00Z"
    assert utctime.iso(utctime.parse_time("2026-11-28T02:30:00")) == "2026-11-28T02:30:00Z"
    with pytest.raises(ValueError):
        utctime.parse_time("yesterday")


def write_config(tmp_path, store, paths, mode="repokey") -> config.Config:
    pp = tmp_path / "passphrase"
    pp.write_bytes(PW + b"\n")
    pp.chmod(0o600)
    quoted = ", ".join(f'"{p}"' for p in paths)
    text = (f'hostname = "mail.example.it"\n[source]\nmail_store = "{store}"\n'
            f'config_paths = [{quoted}]\n[encryption]\nmode = "{mode}"\n')
    if mode != "none":
        text += f'passphrase_file = "{pp}"\n'
    return config.parse(text, str(tmp_path / "dmbackup.toml"))


def test_bundle_of_a_generated_store_lists_its_domains_and_mailboxes(tmp_path):
    expected = make_store(str(tmp_path))
    put(f"{tmp_path}/etc/postfix/main.cf", b"myhostname = mail.example.it\n")
    put(f"{tmp_path}/etc/dovecot/dovecot.conf", b"protocols = imap\n")
    cfg = write_config(tmp_path, tmp_path / "vmail",
                       [f"{tmp_path}/etc/postfix", f"{tmp_path}/etc/dovecot", f"{tmp_path}/etc/opendkim"])
    cb = configbundle.make_config_bundle(cfg, passphrase=PW)
    assert cb.files == 2 and cb.missing == [f"{tmp_path}/etc/opendkim"]
    manifest, entries = bundle.read_bundle(cb.data, passphrase=PW)
    assert manifest["id"] == cb.id and manifest["time"] == cb.time
    got = {b["address"]: (b["messages"], b["bytes"], b["folders"])
           for d in manifest["domains"] for b in d["mailboxes"]}
    assert got == expected
    assert [d["domain"] for d in manifest["domains"]] == ["example.it", "studio-rossi.it"]
    assert manifest["config_paths"] == [f"{tmp_path}/etc/postfix", f"{tmp_path}/etc/dovecot",
                                        f"{tmp_path}/etc/opendkim"]
    assert {e.path for e in entries if e.type == "file"} == {
        f"{tmp_path}/etc/postfix/main.cf", f"{tmp_path}/etc/dovecot/dovecot.conf"}


def test_config_bundle_with_a_repository_key(tmp_path):
    put(f"{tmp_path}/etc/postfix/main.cf", b"x = y\n")
    cfg = write_config(tmp_path, tmp_path / "vmail", [f"{tmp_path}/etc/postfix"])
    keys = crypto.Keys(os.urandom(64))
    data = configbundle.make_config_bundle(cfg, key=keys.bundle, context=b"repo-id").data
    manifest, entries = bundle.read_bundle(data, key=keys.bundle, context=b"repo-id")
    assert manifest["hostname"] == "mail.example.it"
    assert [e.data for e in entries if e.type == "file"] == [b"x = y\n"]
    # an unencrypted repository seals with the PlainSealer
    (tmp_path / "plain").mkdir()
    plain = write_config(tmp_path / "plain", tmp_path / "vmail", [f"{tmp_path}/etc/postfix"], mode="none")
    data = configbundle.make_config_bundle(plain, key=crypto.Keys(None).bundle).data
    assert bundle.parse_header(data).protection == bundle.PROT_NONE
    assert bundle.read_bundle(data, key=crypto.PlainSealer())[1][-1].data == b"x = y\n"


# --- config bundles in a repository (through the engine, as the CLI calls it) ----------------
def test_config_snapshots_in_a_repository(ready, monkeypatch):
    from dmbackup import engine
    from dmbackup.context import App
    from tests.world import tree

    etc = os.path.join(ready.tmp, "etc")
    put(f"{etc}/postfix/main.cf", b"first\n")
    os.chmod(f"{etc}/postfix/main.cf", 0o640)
    app = App(config.load(ready.config))
    clock = {"now": utctime.parse_time("2026-11-01T06:00:00Z")}    # the lock reads it too
    monkeypatch.setattr(utctime, "utc_now", lambda: clock["now"])
    first = engine.backup(app, "local", what="config").as_dict()
    put(f"{etc}/postfix/main.cf", b"second\n")
    clock["now"] = utctime.parse_time("2026-11-08T06:00:00Z")
    second = engine.backup(app, "local", what="config").as_dict()
    assert (first["id"], second["id"]) == ("20261101T060000Z-config", "20261108T060000Z-config")
    assert first["exit_code"] == 0 and first["files"] == 1
    assert os.path.exists(os.path.join(ready.repo_root, "config", "20261101T060000Z-config.bundle"))

    snaps = [s.as_dict() for s in engine.snapshots(app, "local") if s.kind == "config"]
    assert [(s["id"], s["time"], s["files"], s["chain"]) for s in snaps] == [
        ("20261101T060000Z-config", "2026-11-01T06:00:00Z", 1, None),
        ("20261108T060000Z-config", "2026-11-08T06:00:00Z", 1, None)]

    out = os.path.join(ready.tmp, "restored")
    res = engine.restore(app, "local", at="2026-11-05", what="config", to=out).as_dict()
    assert res["snapshot"] == first["id"] and res["destination"] == out
    with open(os.path.join(out, etc.lstrip("/"), "postfix/main.cf"), "rb") as f:
        assert f.read() == b"first\n"
    res = engine.restore(app, "local", what="config", to=os.path.join(ready.tmp, "r2")).as_dict()
    assert res["snapshot"] == second["id"]
    assert tree(os.path.join(ready.tmp, "r2", etc.lstrip("/"))) == tree(etc)

    # a bundle moved to another name in the repository no longer opens
    cfgdir = os.path.join(ready.repo_root, "config")
    os.replace(os.path.join(cfgdir, "20261101T060000Z-config.bundle"),
               os.path.join(cfgdir, "20261102T060000Z-config.bundle"))
    with pytest.raises(CorruptObject):
        engine.restore(app, "local", snapshot="20261102T060000Z-config", what="config",
                       to=os.path.join(ready.tmp, "r3"))


def test_mail_snapshot_carries_a_restorable_config_bundle(ready):
    from dmbackup import engine
    from dmbackup.context import App

    etc = os.path.join(ready.tmp, "etc")
    put(f"{etc}/dovecot/dovecot.conf", b"protocols = imap\n")
    app = App(config.load(ready.config))
    mail = engine.backup(app, "local", what="mail").as_dict()
    assert mail["config_bundle"] == f"config/{mail['id']}.bundle"
    out = os.path.join(ready.tmp, "restored")
    res = engine.restore(app, "local", mail["id"], what="config", to=out).as_dict()
    assert res["snapshot"] == mail["id"] and res["files"] == 2     # + the world's etc/postfix/main.cf
    assert [s.kind for s in engine.snapshots(app, "local")] == ["full"]   # not listed twice


def test_no_config_bundle_in_a_repository(ready):
    from dmbackup import engine
    from dmbackup.context import App

    app = App(config.load(ready.config))
    with pytest.raises(NotFound, match="no config bundle found") as ei:
        engine.restore(app, "local", what="config", to=os.path.join(ready.tmp, "r"))
    assert ei.value.exit_code == 7


def test_cli_config_backup_and_restore_on_a_repository(ready):
    put(os.path.join(ready.tmp, "etc", "postfix", "main.cf"), b"via the cli\n")
    r = ready.ok("backup", "--target", "local", "--what", "config", "--json")
    made = json.loads(r.out)
    assert made["kind"] == "config" and made["files"] == 1
    r = ready.ok("snapshots", "--target", "local", "--json")
    assert [s["id"] for s in json.loads(r.out) if s["kind"] == "config"] == [made["id"]]
    out = os.path.join(ready.tmp, "restored")
    ready.ok("restore", "--target", "local", "--what", "config", "--to", out)
    with open(os.path.join(out, ready.tmp.lstrip("/"), "etc", "postfix", "main.cf"), "rb") as f:
        assert f.read() == b"via the cli\n"
