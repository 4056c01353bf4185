"""dmbackup init TARGET: create (or enrol) the repository on a target, and show what it is."""

import typer

from dmbackup import engine
from dmbackup.cli.common import complete_target, examples, handled, load_app, show

EXAMPLES = examples(
    "Create the repository on a new disk, or enrol a disk after a disaster",
    "dmbackup init usb1",
)


def register(app: typer.Typer) -> None:
    @app.command("init", epilog=EXAMPLES)
    def init(target: str = typer.Argument(..., help="Target name from the config.",
                                           autocompletion=complete_target),
             json_out: bool = typer.Option(False, "--json", help="Print a JSON summary.")):
        """Create the repository on TARGET (or enrol an existing one on this machine)."""
        with handled():
            a = load_app()
        with handled(a):
            show(engine.init_repo(a, target), json_out)
