"""One contract for every bundle store (dmbackup.engine.bundlestore): a repository's ``config/``
on a dir target, and a mailbox behind real servers (aiosmtpd delivering into Dovecot, IMAP over
TLS: tests/fixtures/mailbox.py). The config-bundle operations are written once over the
interface, so both must back up, list, choose (newest, ``--at``, by id), verify, restore, and
notice a deleted newest bundle the same way."""

from __future__ import annotations

import dataclasses
import os

import pytest

from dmbackup import config, engine, utctime
from dmbackup.context import App
from dmbackup.engine import configbundle
from dmbackup.engine.bundlestore import open_store
from dmbackup.errors import CorruptObject
from tests.fixtures.mailbox import RCPT
from tests.mailout.test_mailbox import write_config
from tests.world import base_config

TIMES = ("2026-11-01T06:00:00Z", "2026-11-08T06:00:00Z")


class Repository:
    name = "local"

    def __init__(self, tmp_path, request):
        pp = tmp_path / "passphrase"
        pp.write_text("contract passphrase\n")
        pp.chmod(0o600)
        text = base_config(tmp_path).replace('mode = "none"', f'mode = "repokey"\npassphrase_file = "{pp}"')
        (tmp_path / "etc" / "main.cf").write_text("first\n")
        self.cfg = config.parse(text, str(tmp_path / "dmbackup.toml"))
        self.main_cf = tmp_path / "etc" / "main.cf"
        engine.init_repo(self.app(), self.name)

    def app(self) -> App:
        return App(self.cfg)

    def delete(self, bid: str) -> None:
        os.unlink(os.path.join(self.cfg.target(self.name).path, "dmbackup", "mail.test", "config", f"{bid}.bundle"))


class Mailbox:
    name = "offbox"

    def __init__(self, tmp_path, request):
        self.dovecot = request.getfixturevalue("tls_dovecot")
        cfg = write_config(tmp_path, request.getfixturevalue("smtp"), self.dovecot)
        self.cfg = dataclasses.replace(cfg, state_dir=str(tmp_path / "state"))
        self.main_cf = tmp_path / "live" / "etc" / "postfix" / "main.cf"
        self.main_cf.write_text("first\n")

    def app(self) -> App:
        return App(self.cfg)

    def delete(self, bid: str) -> None:
        imap = self.dovecot.imap(RCPT)
        try:
            imap.select("INBOX")
            _, data = imap.search(None, "HEADER", "X-Dmbackup-Bundle", bid)
            for num in data[0].split():
                imap.store(num, "+FLAGS", "\\Deleted")
            imap.expunge()
        finally:
            imap.logout()


@pytest.fixture(params=[Repository, Mailbox], ids=["repository", "mailbox"])
def store(request, tmp_path, monkeypatch):
    clock = {"now": utctime.parse_time(TIMES[0])}
    monkeypatch.setattr(utctime, "utc_now", lambda: clock["now"])
    s = request.param(tmp_path, request)
    s.clock = clock
    return s


def test_every_store_keeps_lists_chooses_verifies_and_restores(store, tmp_path):
    made = []
    for when, text in zip(TIMES, ("first\n", "second\n")):
        store.clock["now"] = utctime.parse_time(when)
        store.main_cf.write_text(text)
        res = configbundle.backup_config(store.app(), store.name)
        d = res.as_dict()
        assert (d["target"], d["kind"], d["chain"], d["time"]) == (store.name, "config", None, when)
        assert res.snapshot_id == d["id"] and d["files"] >= 1 and d["stored_bytes"] > 0
        made.append(d["id"])

    with open_store(store.app(), store.name, keyed=False) as st:
        listed = st.listing()
    assert [(b.id, b.time) for b in listed] == list(zip(made, TIMES))
    assert [s.id for s in engine.snapshots(store.app(), store.name)] == made

    rel = str(store.main_cf).lstrip("/")
    for kw, want, text in (({}, 1, "second\n"), ({"at": "2026-11-05T00:00:00Z"}, 0, "first\n"),
                           ({"snapshot": made[0][:12]}, 0, "first\n")):
        out = tmp_path / f"out-{len(os.listdir(tmp_path))}"
        res = configbundle.restore_config(store.app(), store.name, to=str(out), **kw)
        assert res.snapshot_id == made[want] and res.exit_code in (0, 1)
        assert (out / rel).read_text() == text

    v = configbundle.verify_bundles(store.app(), store.name)
    assert v.exit_code == 0 and v.as_dict()["bundles"] == 2 and v.id == made[1]


def test_every_store_notices_its_newest_bundle_deleted(store, tmp_path):
    made = []
    for when in TIMES:
        store.clock["now"] = utctime.parse_time(when)
        made.append(configbundle.backup_config(store.app(), store.name).snapshot_id)
    configbundle.restore_config(store.app(), store.name, to=str(tmp_path / "seen"))
    store.delete(made[1])
    with pytest.raises(CorruptObject, match="older than what this machine saw last") as ei:
        configbundle.restore_config(store.app(), store.name, to=str(tmp_path / "newest"))
    assert ei.value.exit_code == 4 and not (tmp_path / "newest" / "MANIFEST.json").exists()
    res = configbundle.restore_config(store.app(), store.name, snapshot=made[0], to=str(tmp_path / "named"))
    assert res.snapshot_id == made[0]
