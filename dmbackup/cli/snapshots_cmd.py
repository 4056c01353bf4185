"""dmbackup snapshots [--target T] [--json]: snapshots and chains."""

from typing import Optional

import typer

from dmbackup import engine
from dmbackup.errors import DmError
from dmbackup import humanize
from dmbackup.cli.common import complete_target, emit, examples, handled, load_app, echo

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
            names = [target] if target else sorted(a.config.targets)
            rows, worst = [], 0
            for name in names:
                warnings: list[str] = []
                try:
                    infos = engine.snapshots(a, name, warnings)
                except DmError as exc:
                    if target:
                        raise
                    echo(f"dmbackup: {name}: {exc}", err=True)
                    worst = max(worst, exc.exit_code)     # listed the others; still not "all fine"
                    continue
                for w in warnings:
                    echo(f"warning: {name}: {w}", err=True)
                for s in infos:
                    d = s.as_dict()
                    d["target"] = name
                    rows.append(d)
            if json_out:
                emit(rows, True)
            elif not rows:
                echo("no snapshots")
            else:
                _table(rows)
            if worst:
                raise typer.Exit(worst)


def _table(rows) -> None:
    echo(f"{'target':<10} {'chain':<22} {'id':<24} {'kind':<11} {'time':<20} {'files':>8} "
         f"{'bytes':>10} {'stored':>10}")
    for d in rows:
        echo(f"{d['target']:<10} {str(d['chain'] or '-'):<22} {d['id']:<24} {d['kind']:<11} "
             f"{d['time']:<20} {d['files']:>8} {humanize.size(d['bytes']):>10} "
             f"{humanize.size(d['stored_bytes']):>10}")
