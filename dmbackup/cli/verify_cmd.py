"""dmbackup verify [--target T] [SNAPSHOT] [--read-data]."""

from typing import Optional

import typer

from .. import engine
from .common import emit, handled, load_app, pick_target, echo


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify(snapshot: Optional[str] = typer.Argument(None, help="Snapshot id (default: all)."),
               target: Optional[str] = typer.Option(None, "--target", "-t", help="Target name."),
               read_data: bool = typer.Option(False, "--read-data", help="Read and authenticate every stored byte."),
               json_out: bool = typer.Option(False, "--json", help="Print a JSON report.")):
        """Check that snapshots are complete and intact (exit 4 on damage)."""
        with handled():
            a = load_app(progress=True, json_out=json_out)
        with handled(a):
            res = engine.verify(a, pick_target(a, target), snapshot=snapshot, read_data=read_data)
            d = res.as_dict() if hasattr(res, "as_dict") else res
            text = res.summary() if hasattr(res, "summary") else _mailbox_summary(d)
            if json_out:
                emit(d, True)
            elif d.get("exit_code", 0):
                echo(f"dmbackup: {text}", err=True)
                for p in d.get("problems", [])[1:20]:
                    echo(f"  {p}", err=True)
                for snap, files in (d.get("damaged_files") or {}).items():
                    for f in files[:20]:
                        echo(f"  damaged in {snap}: {f}", err=True)
            else:
                typer.echo(text)
            if d.get("exit_code", 0):
                raise typer.Exit(d["exit_code"])


def _mailbox_summary(d: dict) -> str:
    if d.get("exit_code", 0):
        return f"verify found damage: {'; '.join(map(str, d.get('problems') or [d.get('error', 'see --json')]))}"
    return (f"verify ok: config bundle {d.get('id') or d.get('snapshot') or ''} fetched, decrypted and "
            f"matches its manifest ({d.get('files', '?')} files)")
