"""The dmbackup command line: one module per command, composed here.

Exit codes: 0 ok, 1 warnings, 2 usage/config, 3 failed (nothing committed), 4 damage found,
5 locked, 6 wrong passphrase/key, 7 target unavailable, 70 internal error (a bug),
130 interrupted.
"""

from __future__ import annotations

import os
from typing import Optional

import typer

from dmbackup import gcpause
from dmbackup.cli import (
    backup_cmd,
    check_config_cmd,
    daemon_cmd,
    init_cmd,
    prune_cmd,
    restore_cmd,
    snapshots_cmd,
    status_cmd,
    usb_cmd,
    verify_cmd,
)
from dmbackup.cli.common import STATE, internal_error

# the libraries whose versions ``--version`` reports (a bug report needs them)
VERSION_LIBRARIES = ("typer", "smbprotocol", "pyudev", "zstandard", "cryptography", "schedule")


def version_text() -> str:
    """Program, repository format, Python and library versions, one per line. Reads package
    metadata only: no config, no target, nothing imported just for this."""
    import platform
    from importlib import metadata

    from dmbackup import __version__
    from dmbackup.archive import FORMAT_VERSION

    lines = [f"dmbackup {__version__}", f"repository format {FORMAT_VERSION}",
             f"Python {platform.python_version()} ({platform.python_implementation()})"]
    for name in VERSION_LIBRARIES:
        try:
            v = metadata.version(name)
        except metadata.PackageNotFoundError:
            v = "not installed"
        lines.append(f"{name} {v}")
    return "\n".join(lines)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit(0)

app = typer.Typer(
    name="dmbackup",
    help="Backup and restore for a Postfix + Dovecot mail appliance.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,   # locals hold passphrases
    add_completion=False,
    # plain help and usage errors: rich formatting made ``--help`` take 0.21 s instead of
    # 0.12 s (issue 17); administrators read them in terminals, logs and scripts alike
    rich_markup_mode=None,
)


@app.callback()
def _root(
    config: Optional[str] = typer.Option(
        None, "--config", "-c", metavar="FILE",
        help="Config file (default $DMBACKUP_CONFIG or /etc/dmbackup/dmbackup.toml)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No log lines on stderr."),
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, expose_value=False,
        help="Show the program, repository format, Python and library versions and exit."),
):
    STATE.config_file = config
    STATE.quiet = quiet


for mod in (init_cmd, backup_cmd, snapshots_cmd, verify_cmd, restore_cmd, prune_cmd, status_cmd,
            daemon_cmd, check_config_cmd):
    mod.register(app)
app.add_typer(usb_cmd.usb_app, name="usb")
from dmbackup.cli import diff_cmd, find_cmd, ls_cmd, reindex_cmd  # noqa: E402 (issue 15: find, ls, diff, reindex)
for mod in (find_cmd, ls_cmd, diff_cmd, reindex_cmd):
    mod.register(app)


COMPLETE_VAR = "_DMBACKUP_COMPLETE"    # set by the bash completion (packaging/bash-completion/dmbackup)


def main() -> None:
    gcpause.one_shot()                  # the daemon puts the interpreter's thresholds back
    if COMPLETE_VAR in os.environ:
        # typer registers its shell classes only with add_completion, which would add
        # --install-completion to every help; register them only when a shell asks
        from typer.completion import completion_init

        completion_init()
    try:
        app(complete_var=COMPLETE_VAR)     # the same variable however dmbackup was started
    except Exception as exc:
        # a bug outside a command body (option parsing, typer itself): still exit 70, one line
        try:
            internal_error(None, exc)
        except typer.Exit as done:
            raise SystemExit(done.exit_code) from None


if __name__ == "__main__":
    main()
