"""Self-check of the real-server fixtures: a private Dovecot filled through its own
tools survives a plain `cp -a` of its vmail tree into a fresh instance with an identical
IMAP-visible state; a day of changes shows up in `diff_states`; the aiosmtpd server
demands STARTTLS and AUTH (or offers neither TLS nor STARTTLS when asked) and hands
mail to Dovecot's LDA so it comes back over IMAP byte for byte.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import socket
import ssl
import subprocess
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

import pytest

from tests.fixtures.dovecot import (  # noqa: F401
    DovecotError,
    DovecotServer,
    dovecot_factory,
    live_group_members,
)
from tests.fixtures.imapstate import (
    capture_state,
    count_uid_mismatches,
    diff_states,
    fetch_items,
    imap_utf7_decode,
    imap_utf7_encode,
    message_count,
    quote_mailbox,
)
from tests.fixtures.mailgen import populate, mutate
from tests.fixtures.smtp import smtp_factory  # noqa: F401

USERS = ["alice@example.it", "bob@example.it", "carla@studio-rossi.it", "dan@negozio.net"]


def test_modified_utf7_names():
    assert imap_utf7_encode("Posta inviàta") == "Posta invi&AOA-ta"
    assert imap_utf7_encode("Rossi & Figli") == "Rossi &- Figli"
    for name in ["Posta inviàta", "Rossi & Figli", "日本語/メール", "Offerte ⭐ 2024", "INBOX"]:
        assert imap_utf7_decode(imap_utf7_encode(name)) == name
    assert quote_mailbox('a"b') == '"a\\"b"'


def test_store_survives_plain_copy_into_fresh_dovecot(dovecot_factory):
    server = dovecot_factory(USERS)
    made = populate(server, seed=11, n_messages=20, big_messages=2)
    before = capture_state(server)

    assert message_count(before) == made.messages
    assert made.big == 2 and made.by_method.keys() == {"imap-append", "doveadm-save", "lda"}
    alice = before["alice@example.it"]
    assert {"INBOX", "Sent", "Archivio/2024", "Posta inviàta", "Clienti/Rossi & Figli"} <= set(alice["folders"])
    assert "Cartella rimossa" in alice["subscriptions"] and "Junk" not in alice["subscriptions"]
    keywords = {k for f in alice["folders"].values() for m in f.get("messages", []) for k in m[3]}
    assert keywords, "populate must set keywords"
    all_ids = [m[1] for u in before.values() for f in u["folders"].values() for m in f.get("messages", [])]
    assert len(set(all_ids)) == len(all_ids) and None not in all_ids

    # The on-disk layout the backup code will walk: Maildir++ with modified UTF-7.
    md = server.maildir("alice@example.it")
    for sub in [".Sent", ".Archivio.2024", ".Posta invi&AOA-ta", ".Clienti.Rossi &- Figli"]:
        assert (md / sub / "cur").is_dir(), sub
    assert (md / "subscriptions").is_file() and (md / "dovecot-uidlist").is_file()
    assert any(md.glob("**/dovecot-keywords"))
    assert len(os.listdir(md / "new")) == 3, "LDA mail stays unread in new/ (EXAMINE does not move it)"
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in [server.vmail_root, *server.vmail_root.rglob("*")]}
    assert owners == {(5000, 5000)}

    server.stop()
    copy_root = dovecot_factory.tmpdir("dmb-restored-") / "vmail"
    subprocess.run(["cp", "-a", str(server.vmail_root), str(copy_root)], check=True)
    fresh = dovecot_factory(USERS, vmail_root=copy_root)
    after = capture_state(fresh)

    assert diff_states(before, after) == []
    assert count_uid_mismatches(before, after) == 0


def test_day_of_changes_is_visible_in_diff(dovecot_factory):
    server = dovecot_factory(USERS[:2])
    populate(server, seed=3, n_messages=12, big_messages=0)
    before = capture_state(server)
    changed = mutate(server, seed=4)
    after = capture_state(server)

    diff = diff_states(before, after)
    text = "\n".join(diff)
    assert changed.flag_changes and changed.moved and changed.expunged and changed.messages
    assert "'Archivio/2024': extra uid" in text  # moved in
    assert "'INBOX': missing uid" in text  # moved out / expunged
    assert "'INBOX': changed uid" in text  # flags
    assert "'Clienti/Bianchi (chiuso)': extra folder" in text
    assert "subscriptions differ" in text
    assert count_uid_mismatches(before, after) > 0
    assert diff_states(after, after) == []


def test_server_checks_and_lifecycle(dovecot_factory, tmp_path):
    # A vmail root under pytest's 0700 tmp dir is unreachable for uid 5000: say so.
    (tmp_path / "vmail").mkdir()
    with pytest.raises(DovecotError, match="not traversable"):
        DovecotServer(tmp_path / "vmail", USERS[:1])

    server = dovecot_factory(USERS[:1])
    with pytest.raises(imaplib.IMAP4.error):
        server.imap(USERS[0], "wrong password")
    server.add_user("eve@nuovo.it", "Eve-pw-2")
    conn = server.imap("eve@nuovo.it")
    conn.logout()

    port, pgid = server.port, server.pid
    server.stop()
    assert live_group_members(pgid) == []  # zombies may linger: PID 1 reaps slowly here
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    server.start()  # same port, same store
    assert server.port == port
    server.imap("eve@nuovo.it").logout()
    assert server.doveadm("mailbox", "list", "-u", "eve@nuovo.it").stdout.split() == ["INBOX"]


def _message(size: int) -> bytes:
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = "dmbackup@mail.example.it"
    msg["To"] = "alice@example.it"
    msg["Subject"] = "dmbackup config bundle – prova"
    msg["Message-ID"] = "<bundle-1@mail.example.it>"
    msg.set_content("Config bundle attached.\n")
    msg.add_attachment(os.urandom(size), maintype="application", subtype="octet-stream", filename="config.bundle")
    return msg.as_bytes()


def test_smtp_starttls_auth_delivers_to_dovecot(dovecot_factory, smtp_factory):
    dovecot = dovecot_factory(USERS[:1])
    smtp = smtp_factory(deliver_to=dovecot)
    raw = _message(1_500_000)

    with smtplib.SMTP(smtp.host, smtp.port, timeout=30) as client:
        client.ehlo()
        assert client.has_extn("starttls") and not client.has_extn("auth")
        with pytest.raises(smtplib.SMTPSenderRefused):  # no mail before STARTTLS
            client.sendmail("dmbackup@mail.example.it", ["alice@example.it"], raw)
    with smtplib.SMTP(smtp.host, smtp.port, timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=str(smtp.cert_file)))
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login(smtp.username, "wrong")
        client.login(smtp.username, smtp.password)
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("dmbackup@mail.example.it", ["nobody@example.it"], raw)
        client.sendmail("dmbackup@mail.example.it", ["alice@example.it"], raw)

    assert len(smtp.messages) == 1
    got = smtp.messages[0]
    assert got.tls and got.login == smtp.username and got.rcpt_tos == ["alice@example.it"]
    assert got.data == raw

    conn = dovecot.imap("alice@example.it")
    try:
        conn.select("INBOX", readonly=True)
        [fields] = fetch_items(conn, "1:*", "(UID BODY.PEEK[])")
    finally:
        conn.logout()
    assert fields["BODY[]"] == raw


def test_smtp_plain_and_implicit_tls_modes(smtp_factory):
    raw = b"From: a@b.it\r\nTo: c@d.it\r\nSubject: x\r\nMessage-ID: <x@b.it>\r\n\r\nbody\r\n"
    plain = smtp_factory(tls="none")
    with smtplib.SMTP(plain.host, plain.port, timeout=30) as client:
        client.ehlo()
        assert not client.has_extn("starttls") and client.has_extn("auth")
        client.login(plain.username, plain.password)
        client.sendmail("a@b.it", ["c@d.it"], raw)
    assert plain.messages[0].data == raw and not plain.messages[0].tls

    implicit = smtp_factory(tls="implicit")
    ctx = implicit.client_context()
    with smtplib.SMTP_SSL(implicit.host, implicit.port, context=ctx, timeout=30) as client:
        client.login(implicit.username, implicit.password)
        client.sendmail("a@b.it", ["c@d.it"], raw)
    assert implicit.messages[0].data == raw
    # An untrusted certificate is refused by a verifying client.
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL(implicit.host, implicit.port, context=ssl.create_default_context(), timeout=30)
