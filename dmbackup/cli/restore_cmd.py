"""dmbackup restore --target T [SNAPSHOT | --at TIME] [--what] [--mailbox] [--folder] [--to DIR]."""

from typing import Optional

import typer

from .. import engine
from ..errors import UsageError
from .common import emit, handled, human_bytes, load_app, pick_target, echo


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
            from .. import hooks

            tname = pick_target(a, target)
            ctx = hooks.HookContext(action="restore", target=tname, what=what)
            res = None
            with hooks.around(a, ctx):
                res = engine.restore(a, tname, snapshot, at=at, what=what, mailbox=mailbox,
                                     folder=folder, to=to, overwrite=overwrite)
                ctx.snapshot = getattr(res, "snapshot_id", None) or (res.get("snapshot") if isinstance(res, dict) else None)
            if res is None:
                echo(f"restore from {tname} skipped by a pre-restore hook")
                return
            d = res.as_dict() if hasattr(res, "as_dict") else res
            for w in d.get("warnings", [])[:20]:
                echo(f"warning: {w}", err=True)
            if what == "config" and not to:
                text = _preflight_text(d)
            else:
                text = (f"restored {d.get('files')} files ({human_bytes(d.get('bytes'))}) from "
                        f"{d.get('snapshot')} into {d.get('destination')}")
            emit(d, json_out, text)
            if d.get("exit_code", 0):
                raise typer.Exit(d["exit_code"])


def _preflight_text(d: dict) -> str:
    """A config restore into the live system: what would change, and whether it was applied."""
    lines = []
    for c in (d.get("changes") or [])[:200]:
        if isinstance(c, dict) and c.get("action") != "unchanged":
            lines.append(f"  {c.get('action', '?'):<9} {c.get('path', '?')}")
    counts = d.get("counts") or {}
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    head = (f"applied config bundle {d.get('snapshot')}: {summary or 'nothing to change'}" if d.get("applied")
            else f"preflight of config bundle {d.get('snapshot')}: {summary or 'nothing to change'}; "
                 "nothing written (add --overwrite to apply; replaced files are kept as <file>.dmbackup-<time>)")
    return "\n".join([head] + lines)
