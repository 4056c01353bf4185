"""dmbackup reindex [SNAPSHOT] [--target T] [--json]: header indexes (for ``find``) for snapshots
made before they existed."""

from typing import Optional

import typer

from dmbackup.cli.common import complete_target, examples, handled, load_app, pick_target, show

EXAMPLES = examples(
    "Index every snapshot that has no header index yet (find lists them as not_indexed)",
    "dmbackup reindex --target usb1",
    "Only one snapshot",
    "dmbackup reindex --target usb1 20261128T023000Z-full",
)


def register(app: typer.Typer) -> None:
    @app.command("reindex", epilog=EXAMPLES)
    def reindex_cmd(
        snapshot: Optional[str] = typer.Argument(None, help="Snapshot id (default: every snapshot not indexed)."),
        target: Optional[str] = typer.Option(None, "--target", "-t", help="Target name.",
                                             autocompletion=complete_target),
        json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    ):
        """Build the header indexes (for find) of snapshots that have none."""
        with handled():
            a = load_app(progress=True, json_out=json_out)
        with handled(a):
            from dmbackup.engine.reindex import reindex

            show(reindex(a, pick_target(a, target), snapshot), json_out)
