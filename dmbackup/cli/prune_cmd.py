"""dmbackup prune [--target T] [--dry-run]: delete whole chains beyond keep_chains."""

from typing import Optional

import typer

from dmbackup import engine
from dmbackup.cli.common import complete_target, examples, handled, load_app, pick_target, show

EXAMPLES = examples(
    "What would be deleted",
    "dmbackup prune --target usb1 --dry-run",
    "Keep the newest 2 chains",
    "dmbackup prune --target usb1 --keep-chains 2",
)


def register(app: typer.Typer) -> None:
    @app.command("prune", epilog=EXAMPLES)
    def prune(target: Optional[str] = typer.Option(None, "--target", "-t", help="Target name.",
                                              autocompletion=complete_target),
              keep_chains: Optional[int] = typer.Option(None, "--keep-chains", min=1,
                                                        help="Override the jobs' keep_chains."),
              dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be deleted."),
              json_out: bool = typer.Option(False, "--json", help="Print a JSON summary.")):
        """Delete the oldest chains, keeping the newest keep_chains (never the current one)."""
        with handled():
            a = load_app()
        with handled(a):
            tname = pick_target(a, target)
            from dmbackup.engine.prune import keep_chains_for

            show(engine.prune(a, tname, keep_chains or keep_chains_for(a.config, tname), dry_run=dry_run), json_out)
