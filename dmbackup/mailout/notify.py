"""E-mail to the administrator: failed jobs, overdue jobs, and (optionally) successes.

Mail goes through the relay named in ``[notify]`` (``smtp_host``, ``smtp_port``, ``security``
= starttls | tls | none, ``username`` + ``password_file``, ``from``, ``ca_file``), not blindly
through the local Postfix: when the appliance's own mail system is what broke, the report
must still leave the box. Certificates are checked against ``ca_file`` or the system store.

The connection, TLS, AUTH and the password are ``dmbackup.mailout.smtp``'s, the client the
mailbox bundle store uses too: the password is read from its file (mode 0600) at send time,
never put into a message, a log record or an error text, and never sent over an unencrypted
connection to anything but the loopback interface.

Sending never raises into the caller's control flow through ``notify()``: a notification
that cannot be delivered is logged (event ``notify_failed``) and the job's own result stays
what it was. ``send()`` raises ``NotifyFailed`` for callers (tests, a future ``dmbackup
notify --test``) that want to know.
"""

from __future__ import annotations

import email.policy
import json
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from dmbackup.errors import DmError, OperationFailed
from dmbackup.mailout import smtp

SMTP_TIMEOUT = 30.0
EXIT_MEANING = {
    0: "ok",
    1: "done with warnings",
    2: "usage or configuration error",
    3: "operation failed, nothing committed",
    4: "verify found damage in the repository",
    5: "locked by another run",
    6: "wrong passphrase or key",
    7: "target unavailable (disk absent, share unreachable)",
    130: "interrupted",
}
EXIT_HINT = {
    2: "Run `dmbackup check-config` and fix the file it names.",
    4: "Run `dmbackup verify --read-data` on the target and keep the disk: it may be failing.",
    5: "Another dmbackup run holds the repository lock; the message above says who.",
    6: "Check encryption.passphrase_file (or $DMBACKUP_PASSPHRASE) against the repository.",
    7: "Plug in / mount the backup disk or share and check it is reachable; nothing was written.",
}


class NotifyFailed(OperationFailed):
    """The notification e-mail could not be sent."""


def sender_of(config) -> str:
    return config.notify.sender or f"dmbackup@{config.hostname}"


def build_message(config, subject: str, body: str, *, headers: dict[str, str] | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender_of(config)
    msg["To"] = ", ".join(config.notify.to)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=config.hostname)
    msg["Auto-Submitted"] = "auto-generated"        # RFC 3834: no auto-replies to this
    for k, v in (headers or {}).items():
        msg[k] = v
    # file names in log lines may hold bytes that are not UTF-8: never let them stop the mail
    msg.set_content(body.encode("utf-8", "backslashreplace").decode("utf-8"))
    return msg


def relay(config) -> smtp.Server:
    """``[notify]`` as an SMTP server to submit to (``dmbackup.mailout.smtp``)."""
    n = config.notify
    return smtp.Server(host=n.smtp_host, port=n.smtp_port, security=n.security, username=n.username,
                       password_file=n.password_file, ca_file=n.ca_file, timeout=SMTP_TIMEOUT,
                       local_hostname=config.hostname, label="[notify]", config_file=config.file,
                       section="notify", what="the notification")


def send(config, subject: str, body: str, *, headers: dict[str, str] | None = None) -> None:
    """Send one message to ``[notify] to``; raises ``NotifyFailed`` (password never in it)."""
    n = config.notify
    if not n.to:
        raise NotifyFailed("no recipients: set [notify] to in " + config.file)
    if not n.smtp_host:
        raise NotifyFailed("no relay: set [notify] smtp_host in " + config.file)
    msg = build_message(config, subject, body, headers=headers)
    try:
        refused = smtp.send(relay(config), sender_of(config), list(n.to), msg.as_bytes(policy=email.policy.SMTP))
    except DmError as exc:
        raise NotifyFailed(exc.message) from None
    if refused:
        raise NotifyFailed("the relay refused some recipients: " + ", ".join(sorted(refused)))


def notify(app, subject: str, body: str, *, kind: str, headers: dict[str, str] | None = None) -> bool:
    """Send if notifications are configured; log either way. True when a message left."""
    n = app.config.notify
    if not n.to:
        app.log.info("notify_skipped", kind=kind, reason="no [notify] to configured")
        return False
    try:
        send(app.config, subject, body, headers=headers)
    except NotifyFailed as exc:
        app.log.error("notify_failed", kind=kind, error=str(exc))
        return False
    app.log.info("notify_sent", kind=kind, to=list(n.to), subject=subject)
    return True


# --- what the messages say ---------------------------------------------------------------

def _iso(t: datetime | None) -> str:
    if t is None:
        return "-"
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def human_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 3 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def _shorten(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "\u2026"


def format_log_line(line: str) -> str:
    """A JSON log record as ``HH:MM:SS level event key=value ...`` for a person to read."""
    try:
        rec = json.loads(line)
    except ValueError:
        return line
    if not isinstance(rec, dict):
        return line
    t = str(rec.pop("time", ""))[11:19]
    level, event = rec.pop("level", ""), rec.pop("event", "")
    fields = " ".join(f"{k}={v if isinstance(v, (int, float)) else json.dumps(v, ensure_ascii=False)}"
                      for k, v in rec.items() if v not in (None, [], ""))
    return f"{t} {level} {event} {fields}".rstrip()


def job_result_message(app, result, log_lines: list[str]) -> tuple[str, str, dict[str, str]]:
    """(subject, body, headers) for a finished job (``jobs.JobResult``)."""
    host = app.config.hostname
    failed = result.status == "failed"
    word = {"failed": "FAILED", "warning": "finished with warnings", "ok": "ok"}.get(result.status, result.status)
    short = _shorten((result.error or "").splitlines()[0], 90) if failed and result.error else ""
    subject = f"[dmbackup] {host}: job {result.job} {word}" + (f": {short}" if short else "")
    lines = [
        f"dmbackup on {host}: job \"{result.job}\" {word}.",
        "",
        f"Job:        {result.job} ({result.what} backup to target \"{result.target}\")",
        f"Trigger:    {result.trigger}",
        f"Started:    {_iso(result.started)}",
        f"Finished:   {_iso(result.finished)}",
        f"Exit code:  {result.exit_code} ({EXIT_MEANING.get(result.exit_code, 'error')})",
    ]
    if result.snapshot_id:
        lines.append(f"Snapshot:   {result.snapshot_id}")
    if result.error:
        lines += ["", "Error:", f"  {result.error}"]
    hint = EXIT_HINT.get(result.exit_code) if failed else None
    if hint:
        lines += ["", "What to do:", f"  {hint}"]
    if result.warnings:
        lines += ["", "Warnings:"] + [f"  - {w}" for w in result.warnings]
    if log_lines:
        lines += ["", f"Last {len(log_lines)} log lines:"] + [f"  {format_log_line(x)}" for x in log_lines]
    lines += ["", f"Status of all jobs: dmbackup status  (config {app.config.file})", ""]
    headers = {"X-Dmbackup-Job": result.job, "X-Dmbackup-Status": result.status,
               "X-Dmbackup-Exit-Code": str(result.exit_code)}
    return subject, "\n".join(lines), headers


def notify_job_result(app, result, log_lines: list[str]) -> bool:
    """Mail a failed job always, a successful one only with ``[notify] on_success``."""
    if result.status in ("skipped", "interrupted"):
        return False
    if result.status in ("ok", "warning") and not app.config.notify.on_success:
        return False
    subject, body, headers = job_result_message(app, result, log_lines)
    return notify(app, subject, body, kind=f"job_{result.status}", headers=headers)


def overdue_message(app, job, *, now: datetime, last_success: datetime | None,
                    since: datetime, interval_seconds: int, last_run: dict | None) -> tuple[str, str, dict]:
    host = app.config.hostname
    age = (now - since).total_seconds()
    if last_success is None:
        what = f"has never succeeded in {human_age(age)} since it was first scheduled"
    else:
        what = f"has not succeeded for {human_age(age)}"
    subject = f"[dmbackup] {host}: job {job.name} OVERDUE: no successful backup for {human_age(age)}"
    lines = [
        f"dmbackup on {host}: job \"{job.name}\" {what}.",
        "",
        f"Job:           {job.name} ({job.what} backup to target \"{job.target}\")",
        f"Schedule:      {job.schedule} (a success is expected every {human_age(interval_seconds)};",
        "               overdue after twice that)",
        f"Last success:  {_iso(last_success)}",
    ]
    if last_run:
        lines.append(f"Last run:      {last_run.get('time', '-')} status {last_run.get('status', '?')} "
                     f"exit {last_run.get('exit_code', '?')}")
        if last_run.get("error"):
            lines += ["", "Last error:", f"  {last_run['error']}"]
    lines += ["", "Check that the dmbackup daemon (or its timers) runs, that the backup disk is",
              "plugged in and that the target is reachable: dmbackup status", ""]
    return subject, "\n".join(lines), {"X-Dmbackup-Job": job.name, "X-Dmbackup-Status": "overdue"}


def notify_overdue(app, job, **kw) -> bool:
    subject, body, headers = overdue_message(app, job, **kw)
    return notify(app, subject, body, kind="overdue", headers=headers)
