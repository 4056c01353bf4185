"""dmbackup backup JOB | --target T --what mail|config [--full]."""

from typing import Optional

import typer

from dmbackup import engine
from dmbackup.cli.common import complete_job, complete_target, echo, examples, handled, load_app, pick_target, show
from dmbackup.errors import UsageError

EXAMPLES = examples(
    "Run the job jobs.nightly of the config now (hooks, backup, prune, verify, notify)",
    "dmbackup backup nightly",
    "Start a new chain with a full backup",
    "dmbackup backup nightly --full",
    "A one-off incremental of the mail store to a target",
    "dmbackup backup --target usb1",
    "A config-only bundle (the mailbox target mails it off the box)",
    "dmbackup backup --target offbox --what config",
)


def register(app: typer.Typer) -> None:
    @app.command("backup", epilog=EXAMPLES)
    def backup(
        job: Optional[str] = typer.Argument(None, help="A job from the config ([jobs.NAME]).",
                                            autocompletion=complete_job),
        target: Optional[str] = typer.Option(None, "--target", "-t", help="Target name.",
                                              autocompletion=complete_target),
        what: str = typer.Option("mail", "--what", help="mail or config."),
        full: bool = typer.Option(False, "--full", help="Start a new chain with a full backup."),
        json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
        on_plug_device: Optional[str] = typer.Option(
            None, "--on-plug-device", metavar="DEVNAME",
            help="Run the on_plug jobs of the USB disk at DEVNAME (used by the udev rule)."),
    ):
        """Back up the mail store (full or incremental) or the configuration."""
        with handled():
            a = load_app(progress=True, json_out=json_out)
        with handled(a):
            if what not in ("mail", "config"):
                raise UsageError(f"--what must be mail or config, not {what!r}")
            if on_plug_device:
                from dmbackup.daemon import plug

                res = plug.run_plugged(a, on_plug_device)
                if res.note:                # nothing ran: said in words, even with --json
                    echo(res.summary())
                    return
            elif job:
                if target:
                    raise UsageError("give either a JOB or --target, not both")
                from dmbackup.daemon.jobs import run_job

                res = run_job(a, job, full=full)
            else:
                res = engine.run_backup(a, pick_target(a, target), what=what, full=full)
            show(res, json_out)
