"""dmbackup daemon: the scheduler and the USB plug-in trigger."""

import typer

from dmbackup.cli.common import examples, handled, load_app

EXAMPLES = examples(
    "Normally started by systemd",
    "systemctl enable --now dmbackup.service",
)


def register(app: typer.Typer) -> None:
    @app.command("daemon", epilog=EXAMPLES)
    def daemon():
        """Run jobs on their schedules (and on USB plug-in) until SIGTERM."""
        with handled():
            from dmbackup import gcpause

            gcpause.long_lived()        # collections between jobs (main() made them rare)
            a = load_app()
            from dmbackup.daemon import scheduler
            raise typer.Exit(scheduler.run_daemon(a))
