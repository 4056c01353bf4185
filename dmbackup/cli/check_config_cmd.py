"""dmbackup check-config: parse and validate the config file, and reach each user database."""

import typer

from dmbackup.cli.common import examples, handled, load_app, echo
from dmbackup.errors import EXIT_USAGE

EXAMPLES = examples(
    "Check the installed config, or another file",
    "dmbackup check-config; dmbackup --config /tmp/new.toml check-config",
)


def register(app: typer.Typer) -> None:
    @app.command("check-config", epilog=EXAMPLES)
    def check_config():
        """Validate the config file and reach each [[source.databases]] entry; exit 2 with the file and field on
        error."""
        with handled():
            a = load_app()
            c = a.config
            from dmbackup.engine import configdb

            problems = configdb.check_all(c)
            for p in problems:
                echo(f"dmbackup: {p}", err=True)
            if problems:
                raise typer.Exit(EXIT_USAGE)
            dbs = f", {len(c.source.databases)} database(s) reachable" if c.source.databases else ""
            echo(f"{c.file}: ok ({len(c.targets)} target(s), {len(c.jobs)} job(s), "
                 f"encryption {c.encryption.mode}{dbs})")
