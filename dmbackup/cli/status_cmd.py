"""dmbackup status [--json]: last success per job, age, next run, overdue."""

import typer

from dmbackup.cli.common import examples, handled, load_app, show

EXAMPLES = examples(
    "A table for people (exit 1 when a job is overdue or failed)",
    "dmbackup status",
    "For monitoring (schema: docs/status-json.md)",
    "dmbackup status --json",
)


def register(app: typer.Typer) -> None:
    @app.command("status", epilog=EXAMPLES)
    def status(json_out: bool = typer.Option(False, "--json", help="JSON report (schema: docs/status-json.md).")):
        """Per job: last run, result, last success and its age, next run, overdue (exit 1 if any)."""
        with handled():
            a = load_app()
        with handled(a):
            from dmbackup.daemon import monitoring      # late: `--help` loads no scheduler (issue 17)

            show(monitoring.status_report(a), json_out)
