"""The mailbox target against real servers: aiosmtpd (STARTTLS + AUTH, or SMTPS) hands each
bundle message to a private Dovecot through its LDA, and dmbackup fetches it back over IMAP
with TLS, so every byte travels the way it does on the appliance.

Dovecot's fixture serves plain IMAP; a mailbox target only speaks IMAP over TLS, so
``tls_dovecot`` (tests/fixtures/mailbox.py) turns TLS on in the generated configuration with a
self-signed certificate for 127.0.0.1 that ``ca_file`` trusts.
"""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import hashlib
import os
import stat
import time

import pytest

from dmbackup import config, engine, utctime

from dmbackup.archive import bundle

from dmbackup.engine import configbundle

from dmbackup.source import appliance

from dmbackup.archive import crypto
from dmbackup.context import App
from dmbackup.errors import (EXIT_DAMAGE, EXIT_FAILED, EXIT_KEY, EXIT_TARGET, EXIT_USAGE, AuthFailed,
                             ConfigError, CorruptObject, NotFound, OperationFailed, TargetUnavailable,
                             WrongPassphrase)
from dmbackup.mailout import mailbox
from tests.fixtures.dovecot import DovecotServer, free_port
from tests.fixtures.mailbox import RCPT

PASSPHRASE = b"Off-box passphrase 1"
HOST = "mail.example.it"


@pytest.fixture(autouse=True)
def _isolate(monkeypatch):
    monkeypatch.setattr(crypto, "SCRYPT_N", 1 << 10)
    monkeypatch.delenv("DMBACKUP_PASSPHRASE", raising=False)
    monkeypatch.delenv("DMBACKUP_CONFIG", raising=False)


def secret(path, value: str | bytes) -> str:
    with open(path, "wb") as f:
        f.write(value.encode() if isinstance(value, str) else value)
    os.chmod(path, 0o600)
    return str(path)


def make_live(root) -> str:
    """Config files with modes and owners that matter; returns the /etc stand-in."""
    etc = os.path.join(root, "etc")
    files = {
        "postfix/main.cf": (b"myhostname = mail.example.it\nrelayhost = [smtp.example.net]:587\n", 0o644, 0, 0),
        "postfix/sasl_passwd": (b"[smtp.example.net]:587 relay:pw\n", 0o600, 0, 0),
        "dovecot/dovecot.conf": (b"protocols = imap pop3\n", 0o644, 0, 0),
        "dovecot/private/users": (b"alice@example.it:{SHA512-CRYPT}$6$x\n", 0o640, 0, 114),
        "opendkim/keys/example.it/mail.private": (os.urandom(1700), 0o600, 111, 111),
    }
    for rel, (data, mode, uid, gid) in files.items():
        p = os.path.join(etc, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)
        os.chown(p, uid, gid)
        os.utime(p, ns=(1_650_000_000_000_000_001, 1_650_000_000_000_000_001))
    os.chmod(f"{etc}/dovecot/private", 0o750)
    os.chown(f"{etc}/opendkim/keys", 111, 111)
    os.symlink("example.it/mail.private", f"{etc}/opendkim/keys/default.private")
    store = os.path.join(root, "vmail")
    for user, n in (("alice", 3), ("bob", 1)):
        d = f"{store}/example.it/{user}/Maildir/cur"
        os.makedirs(d)
        for i in range(n):
            with open(f"{d}/17000000{i}.M{i}.mail:2,S", "wb") as f:
                f.write(b"Subject: hi\r\n\r\nbody\r\n")
    return etc


def write_config(tmp_path, smtp, dovecot, *, target: dict | None = None, mode: str = "repokey",
                 hostname: str = HOST, drop: tuple[str, ...] = ()) -> config.Config:
    etc = os.path.join(tmp_path, "live", "etc")
    if not os.path.isdir(etc):
        make_live(os.path.join(tmp_path, "live"))
    ca = tmp_path / "ca.pem"
    ca.write_bytes(smtp.cert_file.read_bytes() + dovecot.cert_file.read_bytes())
    t = {
        "type": "mailbox",
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "username": smtp.username,
        "password_file": secret(tmp_path / "smtp.pw", smtp.password + "\n"),
        "from": f"dmbackup@{hostname}",
        "to": RCPT,
        "ca_file": str(ca),
        "imap_port": dovecot.imaps_port,
        "imap_username": RCPT,
        "imap_password_file": secret(tmp_path / "imap.pw", dovecot.password(RCPT)),
    }
    t.update(target or {})
    for k in drop:
        t.pop(k, None)
    pp = secret(tmp_path / "passphrase", PASSPHRASE + b"\n")

    def val(v):
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return str(v)

    lines = [f"hostname = {val(hostname)}", "[source]", f"mail_store = {val(str(tmp_path / 'live' / 'vmail'))}",
             f"config_paths = {val([etc + '/postfix', etc + '/dovecot', etc + '/opendkim', etc + '/nothing'])}",
             "[encryption]", f"mode = {val(mode)}"]
    if mode != "none":
        lines.append(f"passphrase_file = {val(pp)}")
    lines.append("[targets.offbox]")
    lines += [f"{k} = {val(v)}" for k, v in t.items()]
    path = tmp_path / "dmbackup.toml"
    path.write_text("\n".join(lines) + "\n")
    return config.load(str(path))


def app(cfg: config.Config) -> App:
    """A fresh App (nothing cached: a changed passphrase file is read again) for ``cfg``, its
    state_dir beside the config file (never /var/lib/dmbackup)."""
    return App(dataclasses.replace(cfg, state_dir=os.path.join(os.path.dirname(cfg.file), "state")))


def tree(root) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            s = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(s.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(s.st_mode):
                out[rel] = ("dir", stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid, s.st_mtime_ns,
                                hashlib.sha256(f.read()).digest())
    return out


def folder_count(dovecot, user=RCPT, folder="INBOX") -> int:
    conn = dovecot.imap(user)
    try:
        typ, data = conn.select(folder, readonly=True)
        return int(data[0])
    finally:
        conn.logout()


# --- the whole trip ---------------------------------------------------------------------------
def test_bundle_goes_out_by_smtp_and_comes_back_by_imap(tmp_path, smtp, tls_dovecot):
    cfg = write_config(tmp_path, smtp, tls_dovecot)
    etc = str(tmp_path / "live" / "etc")
    summary = configbundle.backup_config(app(cfg), "offbox").as_dict()
    assert summary["kind"] == "config" and summary["chain"] is None
    assert summary["files"] == 5 and summary["to"] == [RCPT] and summary["refused"] == []
    assert summary["missing"] == [f"{etc}/nothing"]

    [got] = smtp.messages
    assert got.tls and got.login == smtp.username and got.rcpt_tos == [RCPT]
    assert got.mail_from == f"dmbackup@{HOST}"
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    assert msg["Subject"] == f"[dmbackup] config bundle of {HOST} at {summary['time']}"
    assert msg["X-Dmbackup-Bundle"] == summary["id"]
    body = msg.get_body(("plain",)).get_content()
    assert f"dmbackup restore --target offbox --what config --to DIR" in body
    assert HOST in body and summary["time"] in body and f"{etc}/postfix" in body
    [att] = list(msg.iter_attachments())
    name = att.get_filename()
    assert name == f"dmbackup-config-{HOST}-{summary['time'].replace('-', '').replace(':', '')}.dmbundle"
    assert "passphrase" not in name.lower() and "relay" not in got.data.decode("ascii", "replace")
    assert summary["bundle_bytes"] == len(att.get_content())
    assert summary["stored_bytes"] == len(got.data)

    listed = [b.as_dict() for b in engine.snapshots(app(cfg), "offbox")]
    assert len(listed) == 1
    entry = listed[0]
    assert {k: entry[k] for k in ("id", "chain", "kind", "time", "files", "bytes")} == {
        "id": summary["id"], "chain": None, "kind": "config", "time": summary["time"],
        "files": 5, "bytes": summary["bytes"]}
    assert entry["stored_bytes"] > summary["bundle_bytes"]

    out = tmp_path / "restored"
    result = configbundle.restore_config(app(cfg), "offbox", to=str(out)).as_dict()
    assert result["id"] == summary["id"] and result["files"] == 5 and result["mode"] == "directory"
    assert tree(out / etc.lstrip("/")) == tree(etc)         # bytes, modes, owners, mtimes, links
    manifest = (out / "MANIFEST.json").read_text()
    assert summary["id"] in manifest and "example.it" in manifest

    verified = configbundle.verify_bundles(app(cfg), "offbox").as_dict()
    assert verified["ok"] and verified["id"] == summary["id"] and verified["files"] == 5
    assert verified["bundles"] == 1


def test_smtps_and_imap_starttls(tmp_path, smtp_factory, tls_dovecot):  # noqa: F811
    smtps = smtp_factory(tls="implicit", deliver_to=tls_dovecot)
    cfg = write_config(tmp_path, smtps, tls_dovecot, target={
        "security": "tls", "imap_security": "starttls", "imap_port": tls_dovecot.port})
    tcfg = cfg.target("offbox")
    assert (tcfg.smtp_port, tcfg.imap_host) == (smtps.port, "127.0.0.1")
    summary = configbundle.backup_config(app(cfg), "offbox").as_dict()
    assert smtps.messages[0].tls
    result = configbundle.restore_config(app(cfg), "offbox", to=str(tmp_path / "r")).as_dict()
    assert result["id"] == summary["id"]


def test_restore_picks_the_bundle_at_or_before_a_time(tmp_path, smtp, tls_dovecot, monkeypatch):
    cfg = write_config(tmp_path, smtp, tls_dovecot)
    main_cf = tmp_path / "live" / "etc" / "postfix" / "main.cf"
    sent = []
    for day, text in (("2026-11-01", "first\n"), ("2026-11-08", "second\n"), ("2026-11-15", "third\n")):
        main_cf.write_text(text)
        t = utctime.parse_time(f"{day}T06:00:00Z")
        monkeypatch.setattr(utctime, "utc_now", lambda t=t: t)
        sent.append(configbundle.backup_config(app(cfg), "offbox").as_dict())
    assert [b.time for b in engine.snapshots(app(cfg), "offbox")] == [
        "2026-11-01T06:00:00Z", "2026-11-08T06:00:00Z", "2026-11-15T06:00:00Z"]
    rel = str(main_cf).lstrip("/")
    r = configbundle.restore_config(app(cfg), "offbox", at="2026-11-10T00:00:00Z", to=str(tmp_path / "a")).as_dict()
    assert r["id"] == sent[1]["id"] and (tmp_path / "a" / rel).read_text() == "second\n"
    r = configbundle.restore_config(app(cfg), "offbox", at="2026-11-08T06:00:00Z", to=str(tmp_path / "b")).as_dict()
    assert r["id"] == sent[1]["id"]
    r = configbundle.restore_config(app(cfg), "offbox", to=str(tmp_path / "c")).as_dict()
    assert r["id"] == sent[2]["id"] and (tmp_path / "c" / rel).read_text() == "third\n"
    with pytest.raises(NotFound, match="no config bundle at or before 2026-10-01T00:00:00Z") as ei:
        configbundle.restore_config(app(cfg), "offbox", at="2026-10-01", to=str(tmp_path / "d"))
    assert ei.value.exit_code == EXIT_TARGET and "oldest is from 2026-11-01T06:00:00Z" in str(ei.value)


def test_restore_without_to_is_a_preflight_until_overwrite(tmp_path, smtp, tls_dovecot, monkeypatch):
    cfg = write_config(tmp_path, smtp, tls_dovecot)
    etc = tmp_path / "live" / "etc"
    configbundle.backup_config(app(cfg), "offbox")
    (etc / "postfix" / "main.cf").write_text("broken by hand\n")
    os.unlink(etc / "postfix" / "sasl_passwd")
    before = tree(etc)
    report = configbundle.restore_config(app(cfg), "offbox").as_dict()
    actions = {c["path"]: c["action"] for c in report["changes"]}
    assert actions[f"{etc}/postfix/main.cf"] == "replace"
    assert actions[f"{etc}/postfix/sasl_passwd"] == "create"
    assert report["mode"] == "live" and report["applied"] is False
    assert tree(etc) == before
    t = utctime.parse_time("2026-12-01T10:00:00Z")
    monkeypatch.setattr(utctime, "utc_now", lambda: t)
    report = configbundle.restore_config(app(cfg), "offbox", overwrite=True).as_dict()
    assert report["applied"] is True
    assert (etc / "postfix" / "main.cf").read_text().startswith("myhostname")
    assert (etc / "postfix" / "main.cf.dmbackup-20261201T100000Z").read_text() == "broken by hand\n"
    assert stat.S_IMODE(os.stat(etc / "postfix" / "sasl_passwd").st_mode) == 0o600


# --- failures -----------------------------------------------------------------------------------
def test_wrong_smtp_password_sends_nothing(tmp_path, smtp, tls_dovecot):
    cfg = write_config(tmp_path, smtp, tls_dovecot)
    secret(tmp_path / "smtp.pw", "not the password")
    with pytest.raises(AuthFailed) as ei:
        configbundle.backup_config(app(cfg), "offbox")
    assert ei.value.exit_code == EXIT_TARGET
    assert f"authentication failed for user {smtp.username} on smtp 127.0.0.1" in str(ei.value)
    assert "not the password" not in str(ei.value)
    assert smtp.messages == [] and smtp.auth_failures >= 1   # smtplib tries PLAIN, then LOGIN
    assert folder_count(tls_dovecot) == 0


def test_server_without_starttls_is_refused_before_auth(tmp_path, smtp_factory, tls_dovecot):  # noqa: F811
    plain = smtp_factory(tls="none", deliver_to=tls_dovecot)
    cfg = write_config(tmp_path, plain, tls_dovecot)
    with pytest.raises(TargetUnavailable, match="does not offer STARTTLS") as ei:
        configbundle.backup_config(app(cfg), "offbox")
    assert ei.value.exit_code == EXIT_TARGET
    assert plain.messages == [] and plain.auth_failures == 0


def test_untrusted_certificate_is_refused(tmp_path, smtp, tls_dovecot):
    cfg = write_config(tmp_path, smtp, tls_dovecot, drop=("ca_file",))
    with pytest.raises(TargetUnavailable, match="certificate") as ei:
        configbundle.backup_config(app(cfg), "offbox")
    assert ei.value.exit_code == EXIT_TARGET and smtp.messages == []


def test_bundle_over_max_size_fails_before_connecting(tmp_path, smtp, tls_dovecot):
    cfg = write_config(tmp_path, smtp, tls_dovecot, target={"max_size": "2K", "smtp_port": free_port()})
    # Nothing listens on that port: connecting would be exit 7, not this clear exit 3.
    with pytest.raises(OperationFailed, match="over max_size 2.0 KiB of target 'offbox'") as ei:
        configbundle.backup_config(app(cfg), "offbox")
    assert ei.value.exit_code == EXIT_FAILED
    assert "nothing was sent" in str(ei.value)


def test_unreachable_smtp_server_is_exit_7(tmp_path, smtp, tls_dovecot):
    cfg = write_config(tmp_path, smtp, tls_dovecot, target={"smtp_port": free_port()})
    with pytest.raises(TargetUnavailable, match="cannot connect to smtp 127.0.0.1") as ei:
        configbundle.backup_config(app(cfg), "offbox")
    assert ei.value.exit_code == EXIT_TARGET


def test_folder_without_bundle(tmp_path, smtp, tls_dovecot):
    cfg = write_config(tmp_path, smtp, tls_dovecot)
    tls_dovecot.lda(RCPT, b"From: x@y.it\r\nTo: backup@example.net\r\nSubject: not a bundle\r\n"
                          b"Message-ID: <1@y.it>\r\n\r\nhello\r\n")
    for call in (lambda: configbundle.restore_config(app(cfg), "offbox", to=str(tmp_path / "r")),
                 lambda: configbundle.verify_bundles(app(cfg), "offbox")):
        with pytest.raises(NotFound, match="no config bundle found in folder 'INBOX'") as ei:
            call()
        assert ei.value.exit_code == EXIT_TARGET
    assert [b.as_dict() for b in engine.snapshots(app(cfg), "offbox")] == []
    assert not (tmp_path / "r").exists()


def test_bundles_of_other_hosts_are_not_restored(tmp_path, smtp, tls_dovecot):
    other = write_config(tmp_path, smtp, tls_dovecot, hostname="mx2.example.it")
    configbundle.backup_config(app(other), "offbox")
    cfg = write_config(tmp_path, smtp, tls_dovecot)
    with pytest.raises(NotFound, match="bundles of other hosts: mx2.example.it"):
        configbundle.restore_config(app(cfg), "offbox", to=str(tmp_path / "r"))


def test_missing_imap_folder_and_wrong_imap_password(tmp_path, smtp, tls_dovecot):
    cfg = write_config(tmp_path, smtp, tls_dovecot, target={"imap_folder": "Backups"})
    with pytest.raises(TargetUnavailable, match="IMAP folder 'Backups' does not exist") as ei:
        engine.snapshots(app(cfg), "offbox")
    assert ei.value.exit_code == EXIT_TARGET
    cfg = write_config(tmp_path, smtp, tls_dovecot)
    secret(tmp_path / "imap.pw", "wrong")
    with pytest.raises(AuthFailed, match=f"authentication failed for user {RCPT} on imap 127.0.0.1"):
        engine.snapshots(app(cfg), "offbox")


def test_imap_server_without_starttls_is_refused(tmp_path, smtp, tls_dovecot):
    plain = DovecotServer(None, {RCPT: "Imap-pw-9"})        # the fixture as is: ssl = no
    try:
        plain.start()
        cfg = write_config(tmp_path, smtp, tls_dovecot, target={
            "imap_security": "starttls", "imap_port": plain.port})
        # The fixture's readiness probe logged in once; wait for its line so it is not
        # mistaken for ours (Dovecot's log process writes asynchronously).
        for _ in range(500):
            logins = plain.log_file.read_text().count("Info: Login:")
            if logins:
                break
            time.sleep(0.02)
        with pytest.raises(TargetUnavailable, match="does not offer STARTTLS") as ei:
            engine.snapshots(app(cfg), "offbox")
        assert ei.value.exit_code == EXIT_TARGET
        assert plain.log_file.read_text().count("Info: Login:") == logins
    finally:
        plain.close()


def _append(dovecot, raw: bytes) -> None:
    conn = dovecot.imap(RCPT)
    try:
        typ, _ = conn.append("INBOX", None, None, raw)
        assert typ == "OK"
    finally:
        conn.logout()


def _fetch_raw(dovecot) -> bytes:
    conn = dovecot.imap(RCPT)
    try:
        conn.select("INBOX", readonly=True)
        typ, data = conn.fetch("1", "(BODY.PEEK[])")
        return data[0][1]
    finally:
        conn.logout()


def _replace_attachment(raw: bytes, change) -> bytes:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    [att] = list(msg.iter_attachments())
    data = change(att.get_content())
    att.set_payload(base64.encodebytes(data).decode("ascii"))
    return msg.as_bytes(policy=email.policy.SMTP)


def test_tampered_attachment_is_damage(tmp_path, smtp, tls_dovecot):
    cfg = write_config(tmp_path, smtp, tls_dovecot)
    configbundle.backup_config(app(cfg), "offbox")
    raw = _fetch_raw(tls_dovecot)

    def flip(data: bytes) -> bytes:
        b = bytearray(data)
        b[len(b) - 50] ^= 0x01
        return bytes(b)

    _append(tls_dovecot, _replace_attachment(raw, flip))    # the newer UID wins the tie
    with pytest.raises(CorruptObject) as ei:
        configbundle.restore_config(app(cfg), "offbox", to=str(tmp_path / "r"))
    assert ei.value.exit_code == EXIT_DAMAGE
    assert not (tmp_path / "r").exists()
    with pytest.raises(CorruptObject):
        configbundle.verify_bundles(app(cfg), "offbox")


def test_old_bundle_with_a_forged_newer_date_is_damage(tmp_path, smtp, tls_dovecot):
    cfg = write_config(tmp_path, smtp, tls_dovecot)
    configbundle.backup_config(app(cfg), "offbox")
    raw = _fetch_raw(tls_dovecot)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    msg.replace_header("X-Dmbackup-Time", "2099-01-01T00:00:00Z")
    _append(tls_dovecot, msg.as_bytes(policy=email.policy.SMTP))
    with pytest.raises(CorruptObject, match="headers were altered"):
        configbundle.restore_config(app(cfg), "offbox", to=str(tmp_path / "r"))


def test_attachment_swapped_between_messages_is_damage(tmp_path, smtp, tls_dovecot):
    cfg = write_config(tmp_path, smtp, tls_dovecot)
    configbundle.backup_config(app(cfg), "offbox")
    raw = _fetch_raw(tls_dovecot)
    other = configbundle.make_config_bundle(cfg, passphrase=PASSPHRASE).data
    _append(tls_dovecot, _replace_attachment(raw, lambda _: other))
    with pytest.raises(CorruptObject, match="was altered"):
        configbundle.restore_config(app(cfg), "offbox", to=str(tmp_path / "r"))


def test_wrong_passphrase_is_exit_6(tmp_path, smtp, tls_dovecot):
    cfg = write_config(tmp_path, smtp, tls_dovecot)
    configbundle.backup_config(app(cfg), "offbox")
    secret(tmp_path / "passphrase", b"another passphrase\n")
    with pytest.raises(WrongPassphrase) as ei:
        configbundle.restore_config(app(cfg), "offbox", to=str(tmp_path / "r"))
    assert ei.value.exit_code == EXIT_KEY
    assert not (tmp_path / "r").exists()


def test_unencrypted_mode_is_refused_for_a_mailbox_target(tmp_path, smtp, tls_dovecot):
    # refused when the config is read (so `check-config` catches it), before any operation
    with pytest.raises(ConfigError, match="target 'offbox'") as ei:
        write_config(tmp_path, smtp, tls_dovecot, mode="none")
    assert ei.value.exit_code == EXIT_USAGE and "encryption.mode" in str(ei.value)
    assert smtp.messages == []


# --- configuration --------------------------------------------------------------------------
def parse(tmp_path, body: str) -> config.Config:
    pw = secret(tmp_path / "pw", "x")
    text = f'hostname = "h.example"\n[targets.offbox]\ntype = "mailbox"\n' + body.replace("PW", pw)
    return config.parse(text, "/etc/dmbackup/dmbackup.toml")


def test_config_defaults(tmp_path):
    t = parse(tmp_path, 'smtp_host = "smtp.example.net"\nto = ["a@example.net", "b@example.net"]\n'
                        'username = "u"\npassword_file = "PW"\n').target("offbox")
    assert isinstance(t, mailbox.MailboxConfig) and not config.holds_repository(t) and t.type == "mailbox"
    assert (t.smtp_port, t.security, t.max_size, t.to) == (587, "starttls", 10 << 20, ("a@example.net", "b@example.net"))
    assert (t.imap_host, t.imap_port, t.imap_security, t.imap_username, t.imap_folder) == (
        "smtp.example.net", 993, "tls", "u", "INBOX")
    assert t.imap_password_file == t.password_file
    t = parse(tmp_path, 'smtp_host = "s"\nto = "a@b.it"\nsecurity = "tls"\nimap_security = "starttls"\n'
                        'max_size = "5M"\nfrom = "dm@h.example"\n').target("offbox")
    assert (t.smtp_port, t.imap_port, t.max_size, t.sender) == (465, 143, 5 << 20, "dm@h.example")


@pytest.mark.parametrize("body,field", [
    ('smtp_host = "s"\n', "targets.offbox.to"),
    ('to = "a@b.it"\n', "targets.offbox.smtp_host"),
    ('smtp_host = "s"\nto = "not-an-address"\n', "targets.offbox.to[0]"),
    ('smtp_host = "s"\nto = "a@b.it"\nsecurity = "none"\n', "targets.offbox.security"),
    ('smtp_host = "s"\nto = "a@b.it"\nimap_security = "plain"\n', "targets.offbox.imap_security"),
    ('smtp_host = "s"\nto = "a@b.it"\nusername = "u"\n', "targets.offbox.password_file"),
    ('smtp_host = "s"\nto = "a@b.it"\npassword_file = "PW"\n', "targets.offbox.username"),
    ('smtp_host = "s"\nto = "a@b.it"\nmax_size = "lots"\n', "targets.offbox.max_size"),
    ('smtp_host = "s"\nto = "a@b.it"\nca_file = "/nonexistent/ca.pem"\n', "targets.offbox.ca_file"),
    ('smtp_host = "s"\nto = "a@b.it"\nsmtp_prot = 25\n', "targets.offbox.smtp_prot"),
    ('smtp_host = "s"\nto = "a@b.it"\nusername = "u"\npassword_file = "/nonexistent/pw"\n',
     "targets.offbox.password_file"),
])
def test_config_errors_name_the_field(tmp_path, body, field):
    with pytest.raises(ConfigError) as ei:
        parse(tmp_path, body)
    assert f"{field}:" in str(ei.value) and ei.value.exit_code == EXIT_USAGE


def test_a_mail_job_cannot_target_a_mailbox(tmp_path):
    with pytest.raises(ConfigError, match="only takes config bundles"):
        parse(tmp_path, 'smtp_host = "s"\nto = "a@b.it"\n[jobs.nightly]\nwhat = "mail"\ntarget = "offbox"\n')
    cfg = parse(tmp_path, 'smtp_host = "s"\nto = "a@b.it"\n[jobs.weekly]\nwhat = "config"\ntarget = "offbox"\n')
    assert cfg.jobs["weekly"].target == "offbox"


def test_message_layout_without_a_server(tmp_path):
    t = parse(tmp_path, 'smtp_host = "s"\nto = ["a@b.it", "c@d.it"]\n').target("offbox")
    target = mailbox.Mailbox(t, hostname="h.example")
    coll = appliance.Collection()
    manifest = appliance.build_manifest(hostname="h.example", mail_store=str(tmp_path / "none"),
                                        config_paths=[], collection=coll)
    data, info = bundle.bundle_bytes(coll, manifest, passphrase=PASSPHRASE)
    raw = target.build_message(data, dict(info, files=3, bytes=1234, config_paths=["/etc/postfix"],
                                          domains=[{"domain": "x.it", "mailboxes": [{}, {}]}]))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["To"] == "a@b.it, c@d.it" and msg["From"] == "dmbackup@h.example"
    assert msg["X-Dmbackup-Time"] == info["time"] and msg["X-Dmbackup-Files"] == "3"
    assert "1 domain(s) and 2 mailbox(es)" in msg.get_body(("plain",)).get_content()
    assert target.extract_attachment(raw) == data
    forged = raw.replace(f"X-Dmbackup-Bundle: {info['id']}".encode(), b"X-Dmbackup-Bundle: " + b"0" * 32)
    with pytest.raises(CorruptObject, match="altered"):
        target.extract_attachment(forged)
    with pytest.raises(CorruptObject, match="0 bundle attachments"):
        target.extract_attachment(b"Subject: x\r\n\r\nno attachment\r\n")
