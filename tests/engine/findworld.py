"""Helpers for the find / ls / diff / reindex / restore-by-message tests (issue 15).

``MailStore`` writes a Maildir++ store file by file the way Dovecot would and keeps a model
of it (which message is where, with which flags), so a test can script days of deliveries,
expunges, moves and flag changes and know what ``diff`` must report. ``awkward_store`` spreads
tests/data/awkward-mail/ over three mailboxes and four folders (one with a non-ASCII name),
with flags, keywords and messages in new/.

``restore_msgs`` runs restore by message through ``dmbackup restore`` once that command has
``--message-id``; until then through a stand-in command with exactly the options
/tmp/coord/restore-options.md asks ``restore`` to grow, calling the same adapter
(``dmbackup.cli.find_cmd.restore_messages``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dmbackup.quickstart import maildir_gen as mg
from tests.world import Result

DATA = Path(__file__).resolve().parent.parent / "data" / "awkward-mail"
EXPECTED: dict = json.loads((DATA / "EXPECTED.json").read_text(encoding="utf-8"))["files"]
AWKWARD = sorted(EXPECTED)
BOXES = ["anna@example.it", "mario@example.it", "luca@other.it"]
FOLDERS = ["INBOX", "Archivio/2024", "Posta inviàta", "Trash"]
FLAGS = ["S", "FS", "RSa", ""]
T0 = 1762000000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


@dataclass
class Msg:
    mailbox: str
    folder: str
    sub: str
    base: str
    flags: str
    data: bytes
    mtime: int
    tag: str = ""

    @property
    def name(self) -> str:
        return mg.message_name(self.base, self.sub, self.flags)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.mailbox, self.folder, sha(self.data))


class MailStore:
    def __init__(self, root: str, *, uid: int | None = None):
        self.root = root
        self.uid = uid
        self.msgs: dict[str, Msg] = {}
        self.n = 0

    def maildir(self, mailbox: str) -> str:
        return mg.mailbox_dir(self.root, mailbox)

    def folder_dir(self, mailbox: str, folder: str) -> str:
        md = self.maildir(mailbox)
        d = mg.folder_path(md, folder)
        if not os.path.isdir(os.path.join(d, "cur")):
            mg.make_folder(md, folder, marker=folder != "INBOX")
            if self.uid is not None:
                self._chown(self.root)
        return d

    def path(self, m: Msg) -> str:
        return os.path.join(self.folder_dir(m.mailbox, m.folder), m.sub, m.name)

    def _chown(self, top: str) -> None:
        for dp, dns, fns in os.walk(top):
            os.lchown(dp, self.uid, self.uid)
            for n in dns + fns:
                os.lchown(os.path.join(dp, n), self.uid, self.uid)

    def _base(self, size: int) -> str:
        self.n += 1
        return mg.message_base(T0 + self.n, self.n, 1000 + self.n, "mx", size)

    def add(self, tag: str, mailbox: str, folder: str, data: bytes, *, flags: str = "", sub: str = "cur") -> Msg:
        m = Msg(mailbox, folder, sub, self._base(len(data)), mg.flags_sorted(flags) if sub == "cur" else "",
                data, T0 + self.n, tag)
        d = self.folder_dir(mailbox, folder)
        mg.write_message(d, sub, m.base, data, flags=m.flags, mtime=m.mtime)
        if self.uid is not None:
            os.lchown(self.path(m), self.uid, self.uid)
        self.msgs[tag] = m
        return m

    def expunge(self, tag: str) -> Msg:
        m = self.msgs.pop(tag)
        os.unlink(self.path(m))
        return m

    def move(self, tag: str, folder: str) -> Msg:
        """An IMAP MOVE: same bytes and mtime, a new base name in the other folder."""
        old = self.msgs[tag]
        os.unlink(self.path(old))
        m = Msg(old.mailbox, folder, "cur", self._base(len(old.data)), old.flags, old.data, old.mtime, tag)
        d = self.folder_dir(m.mailbox, folder)
        mg.write_message(d, "cur", m.base, m.data, flags=m.flags, mtime=m.mtime)
        if self.uid is not None:
            os.lchown(self.path(m), self.uid, self.uid)
        self.msgs[tag] = m
        return m

    def reflag(self, tag: str, flags: str) -> Msg:
        """A flag change: a rename in cur/ (a message in new/ moves to cur/)."""
        m = self.msgs[tag]
        old = self.path(m)
        m.sub, m.flags = "cur", mg.flags_sorted(flags)
        os.rename(old, self.path(m))
        return m


def awkward_store(root: str, *, uid: int | None = None) -> MailStore:
    """Every awkward-mail file, spread over BOXES x FOLDERS, with flags (``Msg.tag`` = file name)."""
    s = MailStore(root, uid=uid)
    for mailbox in BOXES:
        for folder in FOLDERS:
            s.folder_dir(mailbox, folder)
            d = mg.folder_path(s.maildir(mailbox), folder)
            with open(os.path.join(d, "dovecot-keywords"), "w") as f:
                f.write("0 $Label1\n")
    for i, name in enumerate(AWKWARD):
        flags = FLAGS[(i // 2) % 4]
        s.add(name, BOXES[i % 3], FOLDERS[i % 4], (DATA / name).read_bytes(), flags=flags,
              sub="new" if not flags and i % 2 else "cur")
    if uid is not None:
        s._chown(root)
    return s


# --- restore by message through the CLI ------------------------------------------------------

def _restore_has_message_options() -> bool:
    import typer

    from dmbackup.cli.main import app

    cmd = typer.main.get_command(app).commands["restore"]
    return any("--message-id" in p.opts for p in cmd.params)


def _stand_in():
    """``restore`` with the message options /tmp/coord/restore-options.md proposes, and only those."""
    import typer

    from dmbackup.cli.common import STATE, handled, load_app
    from dmbackup.cli.find_cmd import restore_messages

    app = typer.Typer(add_completion=False)

    @app.callback()
    def root(config: Optional[str] = typer.Option(None, "--config", "-c")):
        STATE.config_file = config

    @app.command("restore")
    def restore(snapshot: Optional[str] = typer.Argument(None), target: Optional[str] = typer.Option(None, "--target"),
                at: Optional[str] = typer.Option(None, "--at"), mailbox: Optional[str] = typer.Option(None, "--mailbox"),
                folder: Optional[str] = typer.Option(None, "--folder"), to: Optional[str] = typer.Option(None, "--to"),
                message_id: Optional[str] = typer.Option(None, "--message-id"),
                from_: Optional[str] = typer.Option(None, "--from"), rcpt: Optional[str] = typer.Option(None, "--rcpt"),
                subject: Optional[str] = typer.Option(None, "--subject"), since: Optional[str] = typer.Option(None, "--since"),
                before: Optional[str] = typer.Option(None, "--before"), fmt: str = typer.Option("maildir", "--format"),
                dry_run: bool = typer.Option(False, "--dry-run"), json_out: bool = typer.Option(False, "--json")):
        with handled():
            a = load_app(json_out=json_out)
        with handled(a):
            restore_messages(a, target, snapshot=snapshot, at=at, mailbox=mailbox, folder=folder, from_=from_,
                             rcpt=rcpt, subject=subject, message_id=message_id, since=since, before=before, to=to,
                             fmt=fmt, dry_run=dry_run, json_out=json_out)

    return app


def restore_msgs(world, *args) -> Result:
    if _restore_has_message_options():
        return world.run("restore", *args)
    from typer.testing import CliRunner

    res = CliRunner().invoke(_stand_in(), ["--config", world.config, "restore", *args], catch_exceptions=False)
    return Result(res.exit_code, res.stdout, res.stderr)
