"""dmbackup daemon: the scheduler and the USB plug-in trigger."""

import typer

from .common import handled, load_app


def register(app: typer.Typer) -> None:
    @app.command("daemon")
    def daemon():
        """Run jobs on their schedules (and on USB plug-in) until SIGTERM."""
        with handled():
            a = load_app()
            from .. import scheduler

            raise typer.Exit(scheduler.run_daemon(a))
