"""dmbackup restore --target T [SNAPSHOT | --at TIME] [--what] [--mailbox] [--folder] [--to DIR]
[--overwrite] [--resume] [--uid-gap N]; dmbackup restore --resync; and restore by message:
[--message-id ID] [--from TEXT] [--rcpt TEXT] [--subject TEXT] [--since DATE] [--before DATE]
[--format maildir|eml] [--dry-run] (dmbackup.engine.msgrestore)."""

from typing import Optional

import typer

from dmbackup import engine
from dmbackup.cli.common import complete_target, examples, handled, load_app, pick_target, show
from dmbackup.cli.find_cmd import has_message_filter, restore_messages
from dmbackup.errors import UsageError

EXAMPLES = examples(
    "Disaster, the whole newest snapshot into an empty directory (then move it into place)",
    "dmbackup restore --target usb1 --to /var/vmail.new --uid-gap 1000",
    "The same, as it was at a time (UTC)",
    "dmbackup restore --target usb1 --at 2026-11-27T23:00 --to /var/vmail.new --uid-gap 1000",
    "After the restored store is in place and Dovecot runs on it",
    "dmbackup restore --resync",
    "Disaster, straight into the empty live store served by Dovecot",
    "dmbackup restore --target usb1 --overwrite",
    "Finish a restore that died half way (disk full, power cut)",
    "dmbackup restore --target usb1 --to /var/vmail.new --uid-gap 1000 --resume",
    "One mailbox into a directory",
    "dmbackup restore --target usb1 --mailbox anna@example.it --to /tmp/anna",
    "One folder into a directory",
    "dmbackup restore --target usb1 --mailbox anna@example.it --folder Archivio/2024 --to /tmp/a",
    "One mailbox into the live server (new folders Restored-DATE/..., nothing live touched)",
    "dmbackup restore --target usb1 --mailbox anna@example.it --at 2026-11-27T23:00",
    "One message deleted last week, back into the live mailbox (Restored-DATE/<folder>)",
    "dmbackup restore --target usb1 --mailbox anna@example.it --message-id '<abc@example.it>'",
    "A sender's messages of November as .eml files (see first: --dry-run)",
    "dmbackup restore --target usb1 --from rossi --since 2026-11-01 --before 2026-12-01 --to /tmp/eml --format eml",
    "The configuration: preflight, then apply",
    "dmbackup restore --target offbox --what config; dmbackup restore --target offbox --what config --overwrite",
    "The configuration and its user databases (see the preflight first: without --overwrite)",
    "dmbackup restore --target offbox --what config --overwrite --databases",
)


def register(app: typer.Typer) -> None:
    @app.command("restore", epilog=EXAMPLES)
    def restore(
        snapshot: Optional[str] = typer.Argument(None, help="Snapshot id (default: the newest)."),
        target: Optional[str] = typer.Option(None, "--target", "-t", help="Target name.",
                                              autocompletion=complete_target),
        at: Optional[str] = typer.Option(None, "--at", help="Newest snapshot at or before TIME (ISO 8601, UTC)."),
        what: str = typer.Option("mail", "--what", help="mail or config."),
        mailbox: Optional[str] = typer.Option(None, "--mailbox", help="Only this mailbox (USER@DOMAIN)."),
        folder: Optional[str] = typer.Option(None, "--folder", help="Only this IMAP folder of --mailbox."),
        to: Optional[str] = typer.Option(None, "--to", help="Restore into this (empty) directory."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Allow writing over existing files."),
        databases: bool = typer.Option(False, "--databases", help="With --what config --overwrite: also apply the "
                                       "bundle's database dumps to the live databases (a dump of what each "
                                       "replaces is kept under state_dir/replaced/)."),
        resume: bool = typer.Option(False, "--resume", help="Finish an interrupted restore into the same --to DIR "
                                    "(or store): complete files are kept."),
        uid_gap: Optional[int] = typer.Option(None, "--uid-gap", help="Raise every folder's next UID by N (default "
                                              "1000 for --overwrite or --to the mail store, else 0)."),
        resync: bool = typer.Option(False, "--resync", help="After a store restored with --to was moved into place "
                                    "and Dovecot started: resync it and raise mod-sequences for clients."),
        message_id: Optional[str] = typer.Option(None, "--message-id", help="Restore the messages whose "
                                                  "Message-ID contains ID (see `dmbackup find`)."),
        from_: Optional[str] = typer.Option(None, "--from", help="Restore the messages whose From contains TEXT."),
        rcpt: Optional[str] = typer.Option(None, "--rcpt", help="Restore the messages whose To or Cc contains TEXT."),
        subject: Optional[str] = typer.Option(None, "--subject", help="Restore the messages whose Subject "
                                               "contains TEXT."),
        since: Optional[str] = typer.Option(None, "--since", help="Messages dated at or after DATE (ISO 8601)."),
        before: Optional[str] = typer.Option(None, "--before", help="Messages dated before DATE (ISO 8601)."),
        fmt: str = typer.Option("maildir", "--format", help="With a message filter and --to DIR: maildir or eml "
                                "(one .eml file per message)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="With a message filter: list what would be "
                                     "restored, write nothing."),
        json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    ):
        """Restore a snapshot, a mailbox or a folder."""
        with handled():
            a = load_app(progress=True, json_out=json_out)
        with handled(a):
            if snapshot and at:
                raise UsageError("give either SNAPSHOT or --at, not both")
            if what not in ("mail", "config"):
                raise UsageError(f"--what must be mail or config, not {what!r}")
            if has_message_filter(from_=from_, rcpt=rcpt, subject=subject, message_id=message_id, since=since,
                                  before=before):
                if what != "mail" or overwrite or resume or resync or uid_gap is not None or databases:
                    raise UsageError("--message-id/--from/--rcpt/--subject/--since/--before restore messages: they "
                                     "do not combine with --what config, --overwrite, --databases, --resume, --resync "
                                 "or --uid-gap")
                restore_messages(a, target, snapshot=snapshot, at=at, mailbox=mailbox, folder=folder, from_=from_,
                                 rcpt=rcpt, subject=subject, message_id=message_id, since=since, before=before,
                                 to=to, fmt=fmt, dry_run=dry_run, json_out=json_out)
                return
            if fmt != "maildir" or dry_run:
                raise UsageError("--format and --dry-run go with a message filter (--message-id, --from, --rcpt, "
                                 "--subject, --since, --before)")
            if resync:
                if snapshot or at or to or overwrite or resume or mailbox or folder or uid_gap is not None \
                        or databases:
                    raise UsageError("--resync takes no other restore option: it finishes a store that is already "
                                     "in place and served by Dovecot")
                show(engine.resync(a), json_out)
                return
            res = engine.run_restore(a, pick_target(a, target), snapshot, at=at, what=what, mailbox=mailbox,
                                     folder=folder, to=to, overwrite=overwrite, resume=resume, uid_gap=uid_gap,
                                     databases=databases)
            show(res, json_out, after=res.incomplete())
