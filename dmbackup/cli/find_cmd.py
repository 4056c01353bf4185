"""dmbackup find [--target T] [--mailbox M] [--folder F] [--from TEXT] [--to TEXT] [--subject TEXT]
[--message-id ID] [--since DATE] [--before DATE] [--json]; and ``restore_messages``, what
``dmbackup restore --message-id/--from/--rcpt/...`` runs (wired by cli/restore_cmd.py)."""

from typing import Optional

import typer

from dmbackup.cli.common import complete_target, examples, handled, load_app, pick_target, show

EXAMPLES = examples(
    "The mail from a sender, in every snapshot",
    "dmbackup find --from rossi",
    "Where did it go: one mailbox, a subject word, since a date (UTC)",
    "dmbackup find --mailbox anna@example.it --subject fattura --since 2026-11-01",
    "One message by its Message-ID, as JSON (first_seen/last_seen: the snapshots that hold it)",
    "dmbackup find --target usb1 --message-id '<abc@example.it>' --json",
    "Then restore it into the live mailbox (folder Restored-DATE/...)",
    "dmbackup restore --target usb1 --mailbox anna@example.it --message-id '<abc@example.it>'",
)

FROM_HELP = "Sender contains TEXT (case and accents ignored)."
SUBJECT_HELP = "Subject contains TEXT (case and accents ignored)."
MSGID_HELP = "Message-ID contains ID (angle brackets optional)."
SINCE_HELP = "Date header at or after DATE (ISO 8601, UTC: 2026-11-28 or 2026-11-28T08:00)."
BEFORE_HELP = "Date header before DATE (ISO 8601, UTC)."


def register(app: typer.Typer) -> None:
    @app.command("find", epilog=EXAMPLES)
    def find(
        target: Optional[str] = typer.Option(None, "--target", "-t", help="Target name.",
                                             autocompletion=complete_target),
        mailbox: Optional[str] = typer.Option(None, "--mailbox", help="Only this mailbox (USER@DOMAIN)."),
        folder: Optional[str] = typer.Option(None, "--folder", help="Only this IMAP folder (INBOX, Archivio/2024)."),
        from_: Optional[str] = typer.Option(None, "--from", help=FROM_HELP),
        to: Optional[str] = typer.Option(None, "--to", help="To or Cc contains TEXT (case and accents ignored)."),
        subject: Optional[str] = typer.Option(None, "--subject", help=SUBJECT_HELP),
        message_id: Optional[str] = typer.Option(None, "--message-id", help=MSGID_HELP),
        since: Optional[str] = typer.Option(None, "--since", help=SINCE_HELP),
        before: Optional[str] = typer.Option(None, "--before", help=BEFORE_HELP),
        json_out: bool = typer.Option(False, "--json", help="Print JSON: messages, not_indexed snapshots."),
    ):
        """Find messages by header: folder, flags, first and last snapshot holding each."""
        with handled():
            a = load_app()
        with handled(a):
            from dmbackup.engine.find import Filters, find_messages

            filters = Filters(mailbox=mailbox, folder=folder, from_=from_, to=to, subject=subject,
                              message_id=message_id, since=since, before=before)
            show(find_messages(a, pick_target(a, target), filters), json_out)


def restore_messages(a, target: Optional[str], *, snapshot: Optional[str] = None, at: Optional[str] = None,
                     mailbox: Optional[str] = None, folder: Optional[str] = None, from_: Optional[str] = None,
                     rcpt: Optional[str] = None, subject: Optional[str] = None, message_id: Optional[str] = None,
                     since: Optional[str] = None, before: Optional[str] = None, to: Optional[str] = None,
                     fmt: str = "maildir", dry_run: bool = False, json_out: bool = False) -> None:
    """``dmbackup restore`` with a message filter: call inside the command's ``handled(a)``.

    ``rcpt`` is ``find --to`` (in ``restore``, ``--to`` is the destination directory)."""
    from dmbackup.engine.msgrestore import run_restore_messages

    from dmbackup.engine.find import Filters

    filters = Filters(mailbox=mailbox, folder=folder, from_=from_, to=rcpt, subject=subject,
                      message_id=message_id, since=since, before=before)
    res = run_restore_messages(a, pick_target(a, target), filters, snapshot=snapshot, at=at, to=to, fmt=fmt,
                               dry_run=dry_run)
    show(res, json_out, after=res.incomplete())


def has_message_filter(*, from_=None, rcpt=None, subject=None, message_id=None, since=None, before=None) -> bool:
    """Whether ``restore`` was given a message filter (then it restores messages, not a tree)."""
    return any(v for v in (from_, rcpt, subject, message_id, since, before))
