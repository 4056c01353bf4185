"""dmbackup init TARGET: create (or enrol) the repository on a target."""

import typer

from .. import engine
from .common import emit, handled, load_app


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(target: str = typer.Argument(..., help="Target name from the config."),
             json_out: bool = typer.Option(False, "--json", help="Print a JSON summary.")):
        """Create the repository on TARGET (or enrol an existing one on this machine)."""
        with handled():
            a = load_app()
        with handled(a):
            res = engine.init_repo(a, target)
            verb = "created" if res["created"] else "enrolled existing"
            emit(res, json_out, f"{verb} repository {res['repository']} on target {target} "
                                f"(encryption: {res['encryption']})")
