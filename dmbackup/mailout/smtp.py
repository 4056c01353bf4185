"""Sending mail: the one SMTP client, for notifications (``[notify]``) and for config bundles
mailed off the box (the mailbox bundle store, ``dmbackup.mailout.mailbox``).

Security is not negotiable. With ``security = "starttls"`` a server that does not offer
STARTTLS is refused before any credential or byte of mail is sent; ``"tls"`` speaks TLS from
the first byte (SMTPS); certificates are verified against ``ca_file`` or the system store.
The password is read from its file (mode 0600) at send time, used only for AUTH, sent in
clear to nothing but the loopback interface, and never put into an error text or a log
record (every message is scrubbed of it). A message larger than the SIZE the server
announces is refused before DATA.

Every failure is a ``DmError`` that names the server and what to do: ``TargetUnavailable``
(exit 7) when the server cannot be reached or does not offer what is configured,
``AuthFailed`` (exit 7) when it refuses the login, ``OperationFailed`` (exit 3) when it refuses
the message for good, ``TransientTargetError`` (exit 7, worth a retry) when the connection
drops or the server says "try later", and ``ConfigError`` (exit 2) when the CA file cannot be
loaded. Callers that must not fail (notifications) turn these into their own error.
"""

from __future__ import annotations

import ipaddress
import smtplib
import ssl
from dataclasses import dataclass

from dmbackup import humanize
from dmbackup.credentials import read_secret_file
from dmbackup.errors import (AuthFailed, ConfigError, DmError, OperationFailed, TargetUnavailable,
                             TransientTargetError)


@dataclass(frozen=True)
class Server:
    """Where and how to submit mail, and how to name it in messages."""

    host: str
    port: int
    security: str = "starttls"          # "starttls" | "tls" | "none"
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    timeout: float = 30.0
    local_hostname: str | None = None   # the EHLO name (None: this machine's FQDN)
    label: str = "the relay"            # who configured it: "target 'offbox'", "[notify]"
    config_file: str | None = None      # for ConfigError
    section: str = ""                   # dotted config path of its keys: "targets.offbox", "notify"
    what: str = "the message"           # what is sent, in messages: "the config bundle message"
    size_hint: str = ""                 # what to do about a message over the server's SIZE

    def field(self, key: str) -> str:
        return f"{self.section}.{key}" if self.section else key

    @property
    def where(self) -> str:
        return f"smtp {self.host}:{self.port}"

    def tls(self) -> ssl.SSLContext:
        return tls_context(self.ca_file, file=self.config_file, field=self.field("ca_file"))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(ca_file: str | None, *, file: str | None = None, field: str | None = None) -> ssl.SSLContext:
    """Certificate checks against ``ca_file``, or the system store when it is not set (also
    for IMAP); ``file``/``field`` name the config key in the error."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA file {ca_file}: {exc}", file=file, field=field) from None


def tls_error(proto: str, host: str, port: int, exc: Exception, *, ca_file: str | None,
              label: str) -> TargetUnavailable:
    """A failed TLS handshake (SMTP or IMAP), saying what to do about an untrusted certificate."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = f"it is not trusted by {ca_file}" if ca_file else "set ca_file to the CA that signed it"
        return TargetUnavailable(f"TLS certificate of {proto} {host}:{port} failed verification "
                                 f"({exc.verify_message}); {hint} ({label})")
    return TargetUnavailable(f"TLS with {proto} {host}:{port} failed: {exc} ({label})")


def _reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error
    return f"{exc.smtp_code} {text.decode(errors='replace') if isinstance(text, bytes) else text}"


def send(server: Server, sender: str, recipients: list[str], raw: bytes) -> list[str]:
    """Submit ``raw`` (a whole message, CRLF line ends) from ``sender`` to ``recipients``.

    Returns the recipients the server refused when it accepted the others; refusing every
    one of them is an ``OperationFailed``. See the module docstring for the rest."""
    password = None
    if server.username:
        if not server.password_file:
            raise ConfigError(f"username is set but password_file is not ({server.label})",
                              file=server.config_file, field=server.field("password_file"))
        if server.security == "none" and not is_loopback(server.host):
            raise TargetUnavailable(
                f"refusing to send the SMTP password to {server.host} over an unencrypted connection: "
                f"set {server.field('security')} = \"starttls\" or \"tls\"")
        password = read_secret_file(server.password_file, "SMTP password").decode("utf-8")
    try:
        return _submit(server, password, sender, recipients, raw)
    except DmError as exc:
        if password and password in exc.message:        # a server that echoes what it was sent
            exc.args = (exc.message.replace(password, "***"),)
        raise
    finally:
        password = None


def _connect(server: Server) -> smtplib.SMTP:
    try:
        if server.security == "tls":
            return smtplib.SMTP_SSL(server.host, server.port, local_hostname=server.local_hostname,
                                    timeout=server.timeout, context=server.tls())
        return smtplib.SMTP(server.host, server.port, local_hostname=server.local_hostname,
                            timeout=server.timeout)
    except ssl.SSLError as exc:
        raise tls_error("smtp", server.host, server.port, exc, ca_file=server.ca_file,
                        label=server.label) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise TargetUnavailable(f"cannot connect to {server.where} of {server.label}: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None


def _submit(server: Server, password: str | None, sender: str, recipients: list[str], raw: bytes) -> list[str]:
    where = server.where
    smtp = _connect(server)
    try:
        try:
            smtp.ehlo()
            if server.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise TargetUnavailable(
                        f"{where} does not offer STARTTLS, which {server.label} requires "
                        "(security = \"starttls\"): refusing to send the password or "
                        f"{server.what} in clear text; fix the server, or use its SMTPS port with "
                        "security = \"tls\"")
                smtp.starttls(context=server.tls())
                smtp.ehlo()
            if server.username:
                _login(smtp, server, password)
            limit = smtp.esmtp_features.get("size", "")
            if limit.isdigit() and 0 < int(limit) < len(raw):
                raise OperationFailed(
                    f"{where} accepts messages up to {humanize.size(int(limit))}, {server.what} is "
                    f"{humanize.size(len(raw))}; " + (f"{server.size_hint}; " if server.size_hint else "")
                    + "nothing was sent")
            refused = smtp.sendmail(sender, list(recipients), raw)
        except ssl.SSLError as exc:
            raise tls_error("smtp", server.host, server.port, exc, ca_file=server.ca_file,
                            label=server.label) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise OperationFailed(
                f"{where} refused every recipient of {server.label}: "
                + "; ".join(f"{r}: {code} {msg.decode(errors='replace')}"
                            for r, (code, msg) in exc.recipients.items())) from None
        except smtplib.SMTPSenderRefused as exc:
            if exc.smtp_code == 530:
                raise AuthFailed(f"{where} requires authentication: set username and password_file "
                                 f"of {server.label}") from None
            raise OperationFailed(f"{where} refused the sender {sender}: {_reply(exc)}") from None
        except smtplib.SMTPDataError as exc:
            err = TransientTargetError if 400 <= exc.smtp_code < 500 else OperationFailed
            raise err(f"{where} did not accept {server.what}: {_reply(exc)}") from None
        except smtplib.SMTPServerDisconnected as exc:
            raise TransientTargetError(f"{where} closed the connection: {exc}") from None
        except smtplib.SMTPResponseException as exc:
            raise TargetUnavailable(f"{where} answered {_reply(exc)}") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientTargetError(f"talking to {where} failed: {exc}") from None
    finally:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()
    return sorted(refused)


def _login(smtp: smtplib.SMTP, server: Server, password: str | None) -> None:
    if not smtp.has_extn("auth"):
        raise TargetUnavailable(f"{server.where} does not offer AUTH, but {server.label} "
                                f"is configured to log in as {server.username}")
    try:
        smtp.login(server.username, password)
    except smtplib.SMTPAuthenticationError as exc:
        raise AuthFailed(
            f"authentication failed for user {server.username} on smtp {server.host} "
            f"(port {server.port}, {server.label}): the server refused the login ({_reply(exc)}); "
            f"check the password in {server.password_file}") from None
