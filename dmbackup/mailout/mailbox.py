"""The mailbox: config bundles mailed to an address outside the appliance, and fetched back.

It holds no repository; it is the bundle store behind ``type = "mailbox"`` targets
(``dmbackup.engine.bundlestore``). Each config bundle travels as one MIME message, submitted
with ``dmbackup.mailout.smtp`` (STARTTLS on the submission port, or TLS from the first byte,
and AUTH), and comes back over IMAP for a restore. Messages carry ``X-Dmbackup-Bundle: <id>``,
``X-Dmbackup-Host`` and ``X-Dmbackup-Time`` headers; listing searches the configured folder
for them. The headers are only an index: the bundle itself is authenticated (see
``dmbackup.archive.bundle``) and its id must match the header, so a forged or edited message is
damage, never a restore.

Security is not negotiable here: STARTTLS is required when configured (a server that does
not offer it is refused before any credential or byte of mail is sent), certificates are
verified against ``ca_file`` or the system store, and the size limit is checked before
connecting. The bundle is encrypted by the caller (``dmbackup.engine.configbundle``) before it
reaches this module.

Config keys (``[targets.NAME]``, type = "mailbox")::

    smtp_host, smtp_port (587, or 465 with security = "tls"), security = "starttls" | "tls",
    username, password_file, from, to (string or list), max_size (10M), ca_file, timeout (60),
    imap_host (smtp_host), imap_port (993, or 143 with imap_security = "starttls"),
    imap_security = "tls" | "starttls", imap_username (username),
    imap_password_file (password_file), imap_folder ("INBOX")
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import os
import re
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from dmbackup import humanize, utctime
from dmbackup.archive import bundle
from dmbackup.configsection import MiB, Section, check_secret_file
from dmbackup.credentials import read_secret_file
from dmbackup.errors import (AuthFailed, ConfigError, CorruptObject, NotFound, OperationFailed,
                             TargetUnavailable, TransientTargetError)
from dmbackup.mailout import smtp

HEADER_ID = "X-Dmbackup-Bundle"
HEADER_HOST = "X-Dmbackup-Host"
HEADER_TIME = "X-Dmbackup-Time"
HEADER_FILES = "X-Dmbackup-Files"
HEADER_BYTES = "X-Dmbackup-Bytes"
ATTACHMENT_SUFFIX = ".dmbundle"
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SAFE = re.compile(r"[^A-Za-z0-9.-]+")


@dataclass(frozen=True)
class MailboxConfig:
    name: str
    type: str
    smtp_host: str
    to: tuple[str, ...]
    smtp_port: int = 587
    security: str = "starttls"
    username: str | None = None
    password_file: str | None = None
    sender: str | None = None           # the "from" key
    max_size: int = 10 * MiB
    ca_file: str | None = None
    timeout: int = 60
    imap_host: str | None = None
    imap_port: int = 993
    imap_security: str = "tls"
    imap_username: str | None = None
    imap_password_file: str | None = None
    imap_folder: str = "INBOX"
    file: str = "<config>"              # the config file, for error messages

    def field(self, key: str) -> str:
        return f"targets.{self.name}.{key}"


def _address(s: Section, key: str, value: str) -> str:
    if "@" not in value or any(c in value for c in " <>,\r\n"):
        raise s.error(key, f"expected an e-mail address such as admin@example.net, got {value!r}")
    return value


def parse_config(name: str, s: Section, kind: str) -> MailboxConfig:
    security = s.str("security", "starttls", choices=("starttls", "tls"))
    smtp_host = s.str("smtp_host")
    smtp_port = s.int("smtp_port", 465 if security == "tls" else 587, min=1, max=65535)
    username = s.str("username", None)
    password_file = s.abs_path("password_file", None)
    if username and not password_file:
        raise s.error("password_file", f"missing; needed to log in to {smtp_host} as {username}")
    if password_file and not username:
        raise s.error("username", "missing; password_file is set but no user name to log in with")
    sender = s.str("from", None)
    if sender is not None:
        _address(s, "from", sender)
    to = s.str_list("to")
    if not to:
        raise s.error("to", "must name at least one address")
    for i, addr in enumerate(to):
        _address(s, f"to[{i}]", addr)
    max_size = s.size("max_size", 10 * MiB)
    ca_file = s.abs_path("ca_file", None)
    timeout = s.int("timeout", 60, min=1, max=3600)
    imap_security = s.str("imap_security", "tls", choices=("tls", "starttls"))
    imap_host = s.str("imap_host", None) or smtp_host
    imap_port = s.int("imap_port", 993 if imap_security == "tls" else 143, min=1, max=65535)
    imap_username = s.str("imap_username", None) or username
    imap_password_file = s.abs_path("imap_password_file", None) or password_file
    imap_folder = s.str("imap_folder", "INBOX")
    if ca_file is not None:
        if not os.path.isfile(ca_file):
            raise s.error("ca_file", f"{ca_file} does not exist or is not a file")
    for key, path in (("password_file", password_file), ("imap_password_file", imap_password_file)):
        if path and (key == "password_file" or path != password_file):
            check_secret_file(path, file=s.file, field=s._f(key), what="password")
    return MailboxConfig(
        name=name, type=kind, smtp_host=smtp_host, to=tuple(to), smtp_port=smtp_port,
        security=security, username=username, password_file=password_file, sender=sender,
        max_size=max_size, ca_file=ca_file, timeout=timeout, imap_host=imap_host,
        imap_port=imap_port, imap_security=imap_security, imap_username=imap_username,
        imap_password_file=imap_password_file, imap_folder=imap_folder, file=s.file,
    )


def _quote(mailbox: str) -> str:
    """An IMAP quoted string (ASCII folder names; others must be given in modified UTF-7)."""
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Mailbox:
    """Sends bundle messages and finds them again; one connection per operation."""

    def __init__(self, cfg: MailboxConfig, *, hostname: str | None = None):
        self.cfg = cfg
        self.name = cfg.name
        self.hostname = hostname or socket.gethostname()

    def describe(self) -> str:
        return f"mailbox target {self.name!r}"

    # -- TLS and secrets -----------------------------------------------------------------
    def _context(self) -> ssl.SSLContext:
        return smtp.tls_context(self.cfg.ca_file, file=self.cfg.file, field=self.cfg.field("ca_file"))

    def _password(self, path: str) -> str:
        return read_secret_file(path, "password").decode("utf-8")

    def _tls_error(self, proto: str, host: str, port: int, exc: Exception) -> TargetUnavailable:
        return smtp.tls_error(proto, host, port, exc, ca_file=self.cfg.ca_file, label=f"target {self.name!r}")

    # -- the message ------------------------------------------------------------------------
    def attachment_name(self, time: str) -> str:
        stamp = time.replace("-", "").replace(":", "")
        return f"dmbackup-config-{_SAFE.sub('_', self.hostname)}-{stamp}{ATTACHMENT_SUFFIX}"

    def sender(self) -> str:
        return self.cfg.sender or f"dmbackup@{self.hostname}"

    def build_message(self, data: bytes, info: dict) -> bytes:
        """The whole message as sent; ``info`` has id, time, files, bytes, config_paths, ..."""
        host, time, bid = self.hostname, info["time"], info["id"]
        name = self.attachment_name(time)
        paths = info.get("config_paths") or []
        domains = info.get("domains") or []
        boxes = sum(len(d.get("mailboxes", [])) for d in domains)
        body = "\n".join([
            f"This message was sent by dmbackup on {host} at {time} (UTC).",
            "",
            f"It carries a CONFIGURATION bundle of the mail server {host}: the files under",
            *[f"    {p}" for p in paths],
            f"({info.get('files', 0)} files, {humanize.size(int(info.get('bytes', 0)))}), and a manifest "
            "describing the server:",
            "Postfix and Dovecot versions, where the mail store is, its vmail owner, and its",
            f"{len(domains)} domain(s) and {boxes} mailbox(es) with their sizes. It contains no mail.",
            "",
            f"The attachment {name} is encrypted with the dmbackup passphrase of {host}",
            "(encryption.passphrase_file in its dmbackup.toml). Without that passphrase it cannot",
            "be opened; keep a copy of the passphrase somewhere other than the server.",
            "",
            "To restore, on a machine with dmbackup configured with this mailbox as target "
            f"{self.name!r}:",
            "",
            f"    dmbackup restore --target {self.name} --what config --to DIR",
            "",
            "writes every file under DIR with its original mode and owner (DIR/etc/postfix/main.cf, ...)",
            "and the manifest as DIR/MANIFEST.json. Add --at TIME for an older bundle. Without --to,",
            "dmbackup shows what would change on the running system and changes nothing.",
            "",
            f"Bundle id: {bid}",
            "",
        ])
        msg = EmailMessage()
        msg["Subject"] = f"[dmbackup] config bundle of {host} at {time}"
        msg["From"] = self.sender()
        msg["To"] = ", ".join(self.cfg.to)
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = make_msgid(idstring=bid[:12], domain=_SAFE.sub("-", host) or "dmbackup")
        msg["Auto-Submitted"] = "auto-generated"
        msg[HEADER_ID] = bid
        msg[HEADER_HOST] = host
        msg[HEADER_TIME] = time
        msg[HEADER_FILES] = str(int(info.get("files", 0)))
        msg[HEADER_BYTES] = str(int(info.get("bytes", 0)))
        msg.set_content(body)
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
        return msg.as_bytes(policy=email.policy.SMTP)

    # -- SMTP -------------------------------------------------------------------------------
    def check_size(self, raw: bytes) -> None:
        if len(raw) > self.cfg.max_size:
            raise OperationFailed(
                f"the config bundle message is {humanize.size(len(raw))}, over max_size "
                f"{humanize.size(self.cfg.max_size)} of target {self.name!r}: remove large paths from "
                f"source.config_paths, or raise {self.cfg.field('max_size')} if the mail servers "
                "on the way accept bigger messages; nothing was sent")

    def server(self) -> smtp.Server:
        c = self.cfg
        return smtp.Server(host=c.smtp_host, port=c.smtp_port, security=c.security, username=c.username,
                           password_file=c.password_file, ca_file=c.ca_file, timeout=c.timeout,
                           label=f"target {self.name!r}", config_file=c.file, section=f"targets.{self.name}",
                           what="the config bundle message",
                           size_hint=f"lower {c.field('max_size')} to match and remove large paths from "
                                     "source.config_paths")

    def send(self, data: bytes, info: dict) -> dict:
        """Send one bundle; returns {"message_bytes", "recipients", "refused"}."""
        raw = self.build_message(data, info)
        self.check_size(raw)    # before connecting: a doomed upload wastes the uplink
        refused = smtp.send(self.server(), self.sender(), list(self.cfg.to), raw)
        return {"message_bytes": len(raw), "recipients": [r for r in self.cfg.to if r not in refused],
                "refused": refused}

    # -- IMAP -------------------------------------------------------------------------------
    def _imap_login(self) -> imaplib.IMAP4:
        c = self.cfg
        if not c.imap_username or not c.imap_password_file:
            raise ConfigError(
                "missing; target needs an IMAP user name and password file to list and fetch bundles",
                file=c.file, field=c.field("imap_username"))
        password = self._password(c.imap_password_file)
        host, port = c.imap_host or c.smtp_host, c.imap_port
        where = f"imap {host}:{port}"
        try:
            if c.imap_security == "tls":
                conn = imaplib.IMAP4_SSL(host, port, ssl_context=self._context(), timeout=c.timeout)
            else:
                conn = imaplib.IMAP4(host, port, timeout=c.timeout)
        except ssl.SSLError as exc:
            raise self._tls_error("imap", host, port, exc) from None
        except (OSError, imaplib.IMAP4.error) as exc:
            raise TargetUnavailable(f"cannot connect to {where} of target {self.name!r}: "
                                    f"{getattr(exc, 'strerror', None) or exc}") from None
        try:
            if c.imap_security == "starttls":
                if "STARTTLS" not in conn.capabilities:
                    raise TargetUnavailable(
                        f"{where} does not offer STARTTLS, which target {self.name!r} requires "
                        "(imap_security = \"starttls\"): refusing to send the password in clear text")
                try:
                    conn.starttls(ssl_context=self._context())
                except ssl.SSLError as exc:
                    raise self._tls_error("imap", host, port, exc) from None
            try:
                conn.login(c.imap_username, password)
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error:
                raise AuthFailed(
                    f"authentication failed for user {c.imap_username} on imap {host} (port {port}, "
                    f"target {self.name!r}): check the password in {c.imap_password_file}") from None
            typ, _ = conn.select(_quote(c.imap_folder), readonly=True)
            if typ != "OK":
                raise TargetUnavailable(f"IMAP folder {c.imap_folder!r} does not exist for user "
                                        f"{c.imap_username} on {where} (target {self.name!r}): "
                                        f"check {c.field('imap_folder')}")
            return conn
        except (OSError, imaplib.IMAP4.error) as exc:
            self._shutdown(conn)
            raise self._imap_error(exc) from None
        except BaseException:
            self._shutdown(conn)
            raise

    @staticmethod
    def _shutdown(conn: imaplib.IMAP4) -> None:
        try:
            conn.shutdown()
        except OSError:
            pass

    def _imap_error(self, exc: Exception) -> TargetUnavailable:
        c = self.cfg
        return TransientTargetError(f"imap {c.imap_host}:{c.imap_port} failed: {exc} "
                                    f"(target {self.name!r})")

    @staticmethod
    def _close(conn: imaplib.IMAP4) -> None:
        try:
            conn.logout()
        except (OSError, imaplib.IMAP4.error):
            pass

    def where(self) -> str:
        c = self.cfg
        return f"folder {c.imap_folder!r} of {c.imap_username} on imap {c.imap_host}"

    def scan(self, all_hosts: bool = False) -> tuple[list[dict], list[str]]:
        """(bundles, other_hosts): this host's bundle messages in the folder, oldest first,
        each {uid, id, host, time, files, bytes, size}; and the other hosts that have
        bundles there (every host's bundles are listed with ``all_hosts``)."""
        conn = self._imap_login()
        try:
            return self._list(conn, all_hosts)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise self._imap_error(exc) from None
        finally:
            self._close(conn)

    def list_bundles(self, all_hosts: bool = False) -> list[dict]:
        return self.scan(all_hosts)[0]

    def _list(self, conn: imaplib.IMAP4, all_hosts: bool) -> tuple[list[dict], list[str]]:
        typ, data = conn.uid("SEARCH", "HEADER", HEADER_ID, '""')
        if typ != "OK":
            raise TargetUnavailable(f"IMAP search failed in {self.where()}: {data!r}")
        uids = [u for u in b" ".join(d for d in data if d).split() if u.isdigit()]
        found = []
        fields = " ".join(h.upper() for h in (HEADER_ID, HEADER_HOST, HEADER_TIME, HEADER_FILES, HEADER_BYTES))
        others = set()
        for start in range(0, len(uids), 200):
            batch = b",".join(uids[start:start + 200]).decode()
            typ, data = conn.uid("FETCH", batch, f"(RFC822.SIZE BODY.PEEK[HEADER.FIELDS ({fields})])")
            if typ != "OK":
                raise TargetUnavailable(f"IMAP fetch failed in {self.where()}: {data!r}")
            for item in data:
                if not isinstance(item, tuple) or len(item) < 2:
                    continue
                meta = item[0].decode("ascii", "replace")
                m_uid = re.search(r"\bUID (\d+)", meta)
                m_size = re.search(r"\bRFC822\.SIZE (\d+)", meta)
                if not m_uid:
                    continue
                hdr = email.message_from_bytes(item[1], policy=email.policy.compat32)
                bid = (hdr.get(HEADER_ID) or "").strip().lower()
                host = (hdr.get(HEADER_HOST) or "").strip()
                time = (hdr.get(HEADER_TIME) or "").strip()
                if not _ID_RE.match(bid):
                    continue
                try:
                    time = utctime.iso(utctime.parse_time(time))
                except ValueError:
                    continue
                if host != self.hostname and not all_hosts:
                    others.add(host)
                    continue

                def num(v):
                    v = (v or "").strip()
                    return int(v) if v.isdigit() else None

                found.append({"uid": int(m_uid.group(1)), "id": bid, "host": host, "time": time,
                              "files": num(hdr.get(HEADER_FILES)), "bytes": num(hdr.get(HEADER_BYTES)),
                              "size": int(m_size.group(1)) if m_size else None})
        found.sort(key=lambda b: (b["time"], b["uid"]))
        return found, sorted(others)

    def fetch(self, uid: int, expected_id: str | None = None) -> bytes:
        """The bundle attachment of message ``uid``; checks its id against the header."""
        conn = self._imap_login()
        try:
            typ, data = conn.uid("FETCH", str(int(uid)), "(BODY.PEEK[])")
        except (OSError, imaplib.IMAP4.error) as exc:
            raise self._imap_error(exc) from None
        finally:
            self._close(conn)
        raw = next((item[1] for item in data or [] if isinstance(item, tuple) and len(item) > 1), None)
        if typ != "OK" or raw is None:
            raise NotFound(f"message UID {uid} vanished from {self.where()}")
        return self.extract_attachment(raw, uid, expected_id)

    def extract_attachment(self, raw: bytes, uid=None, expected_id: str | None = None) -> bytes:
        what = f"message UID {uid} in {self.where()}" if uid is not None else "the bundle message"
        try:
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            header_id = (msg.get(HEADER_ID) or "").strip().lower()
            parts = [p for p in msg.iter_attachments()
                     if (p.get_filename() or "").endswith(ATTACHMENT_SUFFIX)]
            if len(parts) != 1:
                raise CorruptObject(f"{what} has {len(parts)} bundle attachments instead of one")
            data = parts[0].get_payload(decode=True)
        except CorruptObject:
            raise
        except Exception as exc:    # email parsing of a damaged message
            raise CorruptObject(f"{what} cannot be parsed: {exc}") from None
        if not data:
            raise CorruptObject(f"{what} has an empty bundle attachment")
        bid = bundle.parse_header(data).id
        if bid != header_id or (expected_id and bid != expected_id):
            raise CorruptObject(f"{what} says it holds bundle {header_id or '?'} but its attachment "
                                f"is bundle {bid}: the message was altered")
        return data
