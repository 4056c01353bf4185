"""Notifications through a real SMTP relay (aiosmtpd with STARTTLS / TLS and AUTH).

A failing job sends exactly one message that names the job and the error; an overdue job is
reported once per overdue period; successes are mailed only with ``on_success``; the SMTP
password never appears in a message or a log line, and is never sent in clear off the box.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.world import base_config
from dmbackup.mailout import notify
from dmbackup.context import App
from dmbackup.config import parse
from dmbackup.daemon.jobs import run_job
from dmbackup.log import Logger
from dmbackup.daemon.scheduler import Daemon

PASSWORD = "relay-Pw-1"


def make_app(tmp_path: Path, server, *, security: str = "starttls", on_success: bool = False,
             password: str = PASSWORD, target_path: str | None = None, schedule: str = "daily at 02:30") -> App:
    pw = tmp_path / "smtp.pw"
    pw.write_text(password + "\n")
    os.chmod(pw, 0o600)
    toml = base_config(tmp_path, target_path=target_path) + textwrap.dedent(f"""
        [jobs.nightly]
        what = "mail"
        target = "local"
        schedule = "{schedule}"
        [notify]
        to = ["admin@example.test"]
        from = "dmbackup@mail.test"
        smtp_host = "127.0.0.1"
        smtp_port = {server.port}
        security = "{security}"
        username = "{server.username}"
        password_file = "{pw}"
        ca_file = "{server.cert_file}"
        on_success = {"true" if on_success else "false"}
    """)
    return App(parse(toml, str(tmp_path / "dmbackup.toml")), log=Logger(None, keep=500))


def parsed(msg) -> email.message.EmailMessage:
    return email.message_from_bytes(msg.data, policy=email.policy.default)


def assert_no_password(app: App, server) -> None:
    for m in server.messages:
        assert PASSWORD.encode() not in m.data
    for line in app.log.recent:
        assert PASSWORD not in line


def engine_ready() -> bool:
    try:
        from dmbackup import engine
    except ImportError:
        return False
    return hasattr(engine, "backup")


needs_engine = pytest.mark.skipif(not engine_ready(), reason="dmbackup.engine has not landed yet")


@needs_engine
def test_failed_job_sends_one_message_naming_job_and_error(tmp_path, smtp_factory):
    server = smtp_factory()
    # The target directory does not exist: the real engine refuses it (exit 7).
    app = make_app(tmp_path, server, target_path=str(tmp_path / "unplugged-disk"))
    result = run_job(app, "nightly", trigger="schedule")
    assert result.status == "failed"
    assert result.exit_code == 7
    assert result.notified
    assert len(server.messages) == 1
    m = server.messages[0]
    assert m.tls and m.login == server.username
    assert m.rcpt_tos == ["admin@example.test"]
    msg = parsed(m)
    assert "nightly" in msg["Subject"] and "FAILED" in msg["Subject"]
    assert msg["X-Dmbackup-Job"] == "nightly"
    assert msg["Auto-Submitted"] == "auto-generated"
    body = msg.get_content()
    assert 'job "nightly"' in body
    assert result.error in body
    assert "Exit code:  7" in body
    assert "Last " in body and "log lines" in body and "job_start" in body
    assert_no_password(app, server)


@needs_engine
def test_success_is_mailed_only_when_asked(tmp_path, smtp_factory):
    server = smtp_factory()
    app = make_app(tmp_path, server)
    (tmp_path / "vmail" / "example.test" / "u" / "Maildir" / "cur").mkdir(parents=True)
    (tmp_path / "vmail" / "example.test" / "u" / "Maildir" / "cur" / "1.host:2,S").write_text("Subject: x\n\nhi\n")
    _init_repo(app)
    r = run_job(app, "nightly")
    assert r.status in ("ok", "warning"), r.error
    assert server.messages == []

    app2 = make_app(tmp_path, server, on_success=True)
    r = run_job(app2, "nightly")
    assert r.status in ("ok", "warning"), r.error
    assert len(server.messages) == 1
    assert r.snapshot_id in parsed(server.messages[0])["Subject"] or r.snapshot_id in parsed(
        server.messages[0]).get_content()


def _init_repo(app: App) -> None:
    from dmbackup import engine

    engine.init_repo(app, "local")


def test_implicit_tls_relay(tmp_path, smtp_factory):
    server = smtp_factory(tls="implicit")
    app = make_app(tmp_path, server, security="tls")
    notify.send(app.config, "subject", "body")
    assert len(server.messages) == 1 and server.messages[0].tls


def test_wrong_password_is_logged_without_the_password(tmp_path, smtp_factory):
    server = smtp_factory()
    app = make_app(tmp_path, server, password="Wrong-Secret-42")
    assert notify.notify(app, "s", "b", kind="test") is False
    assert server.messages == []
    failed = [json.loads(x) for x in app.log.recent if '"notify_failed"' in x]
    assert failed and "refused the login" in failed[0]["error"]
    assert all("Wrong-Secret-42" not in x for x in app.log.recent)


def test_no_password_in_clear_off_the_box(tmp_path, smtp_factory):
    server = smtp_factory(tls="none")
    app = make_app(tmp_path, server, security="none")
    cfg = app.config
    off_box = cfg.notify.__class__(**{**cfg.notify.__dict__, "smtp_host": "smtp.example.net"})
    cfg2 = cfg.__class__(**{**cfg.__dict__, "notify": off_box})
    with pytest.raises(notify.NotifyFailed, match="unencrypted"):
        notify.send(cfg2, "s", "b")
    # to the loopback relay (a local Postfix), plain SMTP with AUTH is allowed
    notify.send(cfg, "s", "b")
    assert len(server.messages) == 1 and not server.messages[0].tls


def test_certificate_is_checked(tmp_path, smtp_factory):
    server = smtp_factory()
    app = make_app(tmp_path, server)
    cfg = app.config
    no_ca = cfg.notify.__class__(**{**cfg.notify.__dict__, "ca_file": None})
    cfg2 = cfg.__class__(**{**cfg.__dict__, "notify": no_ca})
    with pytest.raises(notify.NotifyFailed, match="certificate"):
        notify.send(cfg2, "s", "b")
    assert server.messages == []


class FakeClock:
    def __init__(self, t: datetime):
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw) -> None:
        self.t += timedelta(**kw)


def test_overdue_job_is_reported_once_per_period(tmp_path, smtp_factory, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()
    server = smtp_factory()
    app = make_app(tmp_path, server)
    clock = FakeClock(datetime(2026, 11, 2, 12, 0, tzinfo=timezone.utc))
    app.state.record_run("nightly", {"time": "2026-10-30T02:30:00Z", "status": "ok", "exit_code": 0,
                                     "snapshot": "S-old"})
    ran = []
    d = Daemon(app, clock=clock, runner=lambda app, name, **kw: ran.append(name), usb=False, inhibit=False)
    d._build_schedule()
    assert d.check_overdue() == ["nightly"]           # 3.4 days > 2 x 1 day
    assert len(server.messages) == 1
    msg = parsed(server.messages[0])
    assert "OVERDUE" in msg["Subject"] and "nightly" in msg["Subject"]
    assert "2026-10-30 02:30:00 UTC" in msg.get_content()
    for _ in range(5):                                # the same overdue period: no more mail
        clock.advance(hours=6)
        assert d.check_overdue() == []
    assert len(server.messages) == 1
    clock.advance(days=2)                             # still overdue two intervals later: remind
    assert d.check_overdue() == ["nightly"]
    assert len(server.messages) == 2
    # a success ends the overdue period; a new one mails again
    app.state.record_run("nightly", {"time": "2026-11-04T02:30:00Z", "status": "ok", "exit_code": 0})
    clock.t = datetime(2026, 11, 5, 12, 0, tzinfo=timezone.utc)
    assert d.check_overdue() == []
    clock.t = datetime(2026, 11, 6, 3, 0, tzinfo=timezone.utc)
    assert d.check_overdue() == ["nightly"]
    assert len(server.messages) == 3
    assert_no_password(app, server)
