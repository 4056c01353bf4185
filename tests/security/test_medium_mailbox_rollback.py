"""Rollback of mailed config bundles (issue 13, item 3): whoever controls the external
mailbox can delete the newest bundle messages; "restore the newest" must then not restore an
older configuration in silence. The machine remembers the newest bundle it saw (state_dir),
and a restore of "the newest" is exit 4 when it is gone; naming an older one still works.
Real servers: aiosmtpd delivering through Dovecot's LDA, IMAP over TLS (tests/mailout/test_mailbox).
"""

from __future__ import annotations

import json
import os

from typer.testing import CliRunner

from dmbackup import utctime
from dmbackup.cli.main import app as cli_app
from tests.security.conftest import one_line
from tests.fixtures.mailbox import RCPT
from tests.mailout.test_mailbox import write_config
from tests.world import Result


def _cli(path: str, *args) -> Result:
    r = CliRunner().invoke(cli_app, ["--config", path, *args], catch_exceptions=False)
    return Result(r.exit_code, r.stdout, r.stderr)


def test_deleted_newest_mailed_bundle_is_noticed(tmp_path, smtp, tls_dovecot, monkeypatch):
    write_config(tmp_path, smtp, tls_dovecot)
    path = str(tmp_path / "dmbackup.toml")
    text = open(path).read()
    with open(path, "w") as f:                       # a private state_dir, never /var/lib/dmbackup
        f.write(f'state_dir = "{tmp_path}/state"\n' + text)
    sent = []
    for day in ("2026-11-01", "2026-11-08"):
        t = utctime.parse_time(f"{day}T06:00:00Z")
        monkeypatch.setattr(utctime, "utc_now", lambda t=t: t)
        r = _cli(path, "backup", "--target", "offbox", "--what", "config", "--json")
        assert r.code in (0, 1), r.err           # 1: the fixture configures a missing path
        sent.append(json.loads(r.out)["id"])
    r = _cli(path, "restore", "--target", "offbox", "--what", "config", "--to", str(tmp_path / "a"), "--json")
    assert r.code in (0, 1) and json.loads(r.out)["id"] == sent[1], r.err

    imap = tls_dovecot.imap(RCPT)                    # someone with the mailbox deletes the newest
    imap.select("INBOX")
    _, data = imap.search(None, "ALL")
    newest = data[0].split()[-1]
    imap.store(newest, "+FLAGS", "\\Deleted")
    imap.expunge()
    imap.logout()

    r = _cli(path, "restore", "--target", "offbox", "--what", "config", "--to", str(tmp_path / "b"))
    line = one_line(r)
    assert r.code == 4 and "older than" in line, (r.code, line)
    assert not os.path.exists(tmp_path / "b" / "MANIFEST.json")
    r = _cli(path, "restore", "--target", "offbox", "--what", "config", sent[0], "--to", str(tmp_path / "c"))
    assert r.code in (0, 1) and os.path.exists(tmp_path / "c" / "MANIFEST.json"), r.err
