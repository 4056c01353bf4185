"""dmbackup ls [SNAPSHOT] [PATH] [--target T] [--json]: what a snapshot holds, by mailbox and folder."""

from typing import Optional

import typer

from dmbackup.cli.common import complete_target, examples, handled, load_app, pick_target, show

EXAMPLES = examples(
    "The mailboxes of the newest snapshot, with folders, messages and bytes",
    "dmbackup ls latest",
    "The IMAP folders of one mailbox in a given snapshot",
    "dmbackup ls 20261128T023000Z-inc anna@example.it",
    "The messages of one folder (flags, Date, From, Subject when indexed)",
    "dmbackup ls latest anna@example.it/Archivio/2024",
    "A directory of the stored tree, as JSON",
    "dmbackup ls latest example.it/anna/Maildir --json",
)


def register(app: typer.Typer) -> None:
    @app.command("ls", epilog=EXAMPLES)
    def ls(
        snapshot: str = typer.Argument(..., help="Snapshot id, a unique prefix of it, or latest."),
        path: Optional[str] = typer.Argument(None, help="USER@DOMAIN, USER@DOMAIN/FOLDER, or a directory "
                                             "of the stored tree."),
        target: Optional[str] = typer.Option(None, "--target", "-t", help="Target name.",
                                             autocompletion=complete_target),
        json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    ):
        """List a snapshot: mailboxes, their IMAP folders (messages and sizes), a folder's messages."""
        with handled():
            a = load_app()
        with handled(a):
            from dmbackup.engine.ls import list_snapshot

            show(list_snapshot(a, pick_target(a, target), snapshot, path), json_out)
