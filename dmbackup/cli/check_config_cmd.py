"""dmbackup check-config: parse and validate the config file."""

import typer

from dmbackup.cli.common import examples, handled, load_app, echo

EXAMPLES = examples(
    "Check the installed config, or another file",
    "dmbackup check-config; dmbackup --config /tmp/new.toml check-config",
)


def register(app: typer.Typer) -> None:
    @app.command("check-config", epilog=EXAMPLES)
    def check_config():
        """Validate the config file; exit 2 with the file and field on error."""
        with handled():
            a = load_app()
            c = a.config
            echo(f"{c.file}: ok ({len(c.targets)} target(s), {len(c.jobs)} job(s), "
                       f"encryption {c.encryption.mode})")
