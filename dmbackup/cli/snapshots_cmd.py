"""dmbackup snapshots [--target T] [--json]: snapshots and chains."""

from typing import Optional

import typer

from dmbackup import engine
from dmbackup.cli.common import complete_target, examples, handled, load_app, show

EXAMPLES = examples(
    "Snapshots on every target",
    "dmbackup snapshots",
    "One target, as JSON (id, chain, kind, time, files, bytes, stored_bytes, ...)",
    "dmbackup snapshots --target usb1 --json",
)


def register(app: typer.Typer) -> None:
    @app.command("snapshots", epilog=EXAMPLES)
    def snapshots(target: Optional[str] = typer.Option(None, "--target", "-t", help="Target name (default: all).",
                                              autocompletion=complete_target),
                  json_out: bool = typer.Option(False, "--json", help="JSON list of snapshots.")):
        """List snapshots: id, chain, kind, time, files, logical and stored bytes."""
        with handled():
            a = load_app()
        with handled(a):
            show(engine.snapshots(a, target), json_out)
