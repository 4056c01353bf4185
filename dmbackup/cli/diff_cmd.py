"""dmbackup diff SNAP_A SNAP_B [--target T] [--mailbox M] [--long] [--json]: messages added,
removed, moved and re-flagged between two snapshots, per mailbox and folder."""

from typing import Optional

import typer

from dmbackup.cli.common import complete_target, examples, handled, load_app, pick_target, show

EXAMPLES = examples(
    "What changed in the mail between two nights",
    "dmbackup diff 20261127T023000Z-inc 20261128T023000Z-inc",
    "One mailbox, listing the messages (date, sender, subject)",
    "dmbackup diff 20261121T023000Z-full latest --mailbox anna@example.it --long",
    "As JSON (per folder: added, removed, moved_in, moved_out, reflagged)",
    "dmbackup diff --target usb1 20261127T023000Z-inc latest --json",
)


def register(app: typer.Typer) -> None:
    @app.command("diff", epilog=EXAMPLES)
    def diff(
        snap_a: str = typer.Argument(..., help="The older snapshot (id, unique prefix, or latest)."),
        snap_b: str = typer.Argument(..., help="The newer snapshot (id, unique prefix, or latest)."),
        target: Optional[str] = typer.Option(None, "--target", "-t", help="Target name.",
                                             autocompletion=complete_target),
        mailbox: Optional[str] = typer.Option(None, "--mailbox", help="Only this mailbox (USER@DOMAIN)."),
        long: bool = typer.Option(False, "--long", "-l", help="List the messages of each change."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    ):
        """Compare the mail of two snapshots: per folder, messages added, removed, moved, re-flagged."""
        with handled():
            a = load_app()
        with handled(a):
            from dmbackup.engine.msgdiff import diff_snapshots

            show(diff_snapshots(a, pick_target(a, target), snap_a, snap_b, mailbox=mailbox, long=long), json_out)
