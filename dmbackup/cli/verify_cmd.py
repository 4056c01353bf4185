"""dmbackup verify [--target T] [SNAPSHOT] [--read-data] | --restore-drill [--mailbox USER@DOMAIN]."""

from typing import Optional

import typer

from dmbackup import engine
from dmbackup.errors import UsageError
from dmbackup.cli.common import complete_target, emit, examples, handled, load_app, pick_target, echo

EXAMPLES = examples(
    "Every snapshot restorable (catalogs, names, extents)",
    "dmbackup verify --target usb1",
    "Also read and authenticate every stored byte",
    "dmbackup verify --target usb1 --read-data",
    "Restore one mailbox of the newest snapshot to scratch and check it",
    "dmbackup verify --target usb1 --restore-drill",
    "The same for a chosen mailbox",
    "dmbackup verify --target usb1 --restore-drill --mailbox anna@example.it",
)


def register(app: typer.Typer) -> None:
    @app.command("verify", epilog=EXAMPLES)
    def verify(snapshot: Optional[str] = typer.Argument(None, help="Snapshot id (default: all)."),
               target: Optional[str] = typer.Option(None, "--target", "-t", help="Target name.",
                                              autocompletion=complete_target),
               read_data: bool = typer.Option(False, "--read-data", help="Read and authenticate every stored byte."),
               json_out: bool = typer.Option(False, "--json", help="Print a JSON report."),
               restore_drill: bool = typer.Option(
                   False, "--restore-drill",
                   help="Restore one mailbox of the newest (or the given) snapshot to a scratch directory, check "
                        "every file against the catalog and let Dovecot open its folders; a different mailbox "
                        "each run unless --mailbox."),
               mailbox: Optional[str] = typer.Option(None, "--mailbox", "-m", metavar="USER@DOMAIN",
                                                     help="With --restore-drill: the mailbox to drill.")):
        """Check that snapshots are complete and intact (exit 4 on damage)."""
        with handled():
            a = load_app(progress=True, json_out=json_out)
        with handled(a):
            if mailbox is not None and not restore_drill:
                raise UsageError("--mailbox goes with --restore-drill: dmbackup verify --restore-drill --mailbox "
                                 f"{mailbox}")
            if restore_drill:
                if read_data:
                    raise UsageError("--restore-drill and --read-data are separate checks: run them one after the "
                                     "other")
                _drill(a, pick_target(a, target), snapshot, mailbox, json_out)
                return
            _show_verify(engine.verify(a, pick_target(a, target), snapshot=snapshot, read_data=read_data), json_out)


def _show_verify(res, json_out: bool) -> None:
    """Damage is an error: its summary and details go to stderr, not a report on stdout."""
    d = res.as_dict()
    if json_out:
        emit(d, True)
    elif res.exit_code:
        echo(f"dmbackup: {res.summary()}", err=True)
        for p in d.get("problems", [])[1:20]:
            echo(f"  {p}", err=True)
        for snap, files in (d.get("damaged_files") or {}).items():
            for f in files[:20]:
                echo(f"  damaged in {snap}: {f}", err=True)
    else:
        echo(res.summary())
    if res.exit_code:
        raise typer.Exit(res.exit_code)


def _drill(a, target: str, snapshot: Optional[str], mailbox: Optional[str], json_out: bool) -> None:
    from dmbackup.engine.drill import restore_drill

    res = restore_drill(a, target, snapshot=snapshot, mailbox=mailbox)
    d = res.as_dict()
    if json_out:
        emit(d, True)
    elif res.problems:
        echo(f"dmbackup: {res.summary()}", err=True)
        for p in res.problems[1:20]:
            echo(f"  {p}", err=True)
        if len(res.problems) > 20:
            echo(f"  ... and {len(res.problems) - 20} more (all of them with --json)", err=True)
    else:
        echo(res.summary())
        for w in res.warnings[:20]:
            echo(f"  warning: {w}", err=True)
    if res.exit_code:
        raise typer.Exit(res.exit_code)
