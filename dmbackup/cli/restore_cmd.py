"""dmbackup restore --target T [SNAPSHOT | --at TIME] [--what] [--mailbox] [--folder] [--to DIR]."""

from typing import Optional

import typer

from .. import engine
from ..errors import UsageError
from .common import emit, handled, human_bytes, load_app, pick_target


def register(app: typer.Typer) -> None:
    @app.command("restore")
    def restore(
        snapshot: Optional[str] = typer.Argument(None, help="Snapshot id (default: the newest)."),
        target: Optional[str] = typer.Option(None, "--target", "-t", help="Target name."),
        at: Optional[str] = typer.Option(None, "--at", help="Newest snapshot at or before TIME (ISO 8601, UTC)."),
        what: str = typer.Option("mail", "--what", help="mail or config."),
        mailbox: Optional[str] = typer.Option(None, "--mailbox", help="Only this mailbox (USER@DOMAIN)."),
        folder: Optional[str] = typer.Option(None, "--folder", help="Only this IMAP folder of --mailbox."),
        to: Optional[str] = typer.Option(None, "--to", help="Restore into this (empty) directory."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Allow writing over existing files."),
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
            res = engine.restore(a, pick_target(a, target), snapshot, at=at, what=what, mailbox=mailbox,
                                 folder=folder, to=to, overwrite=overwrite)
            d = res.as_dict() if hasattr(res, "as_dict") else res
            for w in d.get("warnings", [])[:20]:
                typer.echo(f"warning: {w}", err=True)
            emit(d, json_out, f"restored {d.get('files')} files ({human_bytes(d.get('bytes'))}) from "
                              f"{d.get('snapshot')} into {d.get('destination')}")
            if d.get("exit_code", 0):
                raise typer.Exit(d["exit_code"])
