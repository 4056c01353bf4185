"""dmbackup status [--json]: last success per job, age, next run, overdue."""

import typer

from dmbackup.cli.common import echo, emit, examples, handled, load_app

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
            from dmbackup.daemon import status as status_mod
            report = status_mod.status(a)
            if a.config.monitoring.textfile:
                from dmbackup.daemon import monitoring
                problem = monitoring.after_status(a, report)
                if problem:
                    echo(f"warning: {problem}", err=True)
            emit(report, json_out, status_mod.render_text(report) if hasattr(status_mod, "render_text") else None)
            if not json_out and not hasattr(status_mod, "render_text"):
                emit(report, True)
            code = status_mod.exit_code(report)
            if code:
                raise typer.Exit(code)
