"""What every command shares: loading config into an App, choosing a target, printing, and
turning errors into one line on stderr plus the documented exit code (no traceback)."""

from __future__ import annotations

import json
import signal
import sys
from contextlib import contextmanager

import typer

from .. import config as config_mod
from ..app import App
from ..errors import DmError, UsageError, EXIT_INTERRUPTED
from ..log import Logger, Progress, terminal_safe


class State:
    config_file: str | None = None
    quiet: bool = False


STATE = State()


def load_app(*, progress: bool = False, json_out: bool = False) -> App:
    cfg = config_mod.load(STATE.config_file)
    tty = sys.stderr.isatty()
    log = Logger(None if (tty or STATE.quiet) else sys.stderr)
    prog = Progress()
    app = App(cfg, log=log, progress=prog)
    if progress and tty and not json_out and not STATE.quiet:
        from .progress import attach

        attach(prog)
    return app


def pick_target(app: App, target: str | None) -> str:
    if target:
        app.config.target(target)
        return target
    names = sorted(app.config.targets)
    if len(names) == 1:
        return names[0]
    if not names:
        raise UsageError(f"no targets configured in {app.config.file}: add a [targets.NAME] section")
    raise UsageError(f"several targets configured ({', '.join(names)}): choose one with --target")


def printable(text: str) -> str:
    """File names may hold any bytes (surrogate-escaped) and any control character: show
    them escaped, never crash on them, never let them drive the terminal."""
    return terminal_safe(str(text), multiline=True)


def echo(text: str, err: bool = False) -> None:
    # the one place human text leaves the CLI: names in it are attacker data
    typer.echo(printable(text), err=err)


def emit(obj, json_out: bool, text: str | None = None) -> None:
    if json_out:
        # ASCII escapes keep any file name (even undecodable bytes) valid JSON
        typer.echo(json.dumps(obj, indent=2, default=str, ensure_ascii=True))
    elif text is not None:
        echo(text)


def fail(err: DmError) -> None:
    msg = terminal_safe(str(err).replace("\n", " "))
    typer.echo(f"dmbackup: {msg}", err=True)
    raise typer.Exit(err.exit_code)


@contextmanager
def handled(app: App | None = None):
    """Run a command body: DmError -> one line + exit code; Ctrl-C -> 130."""
    def on_int(signum, frame):
        if app is not None and not app.stop.is_set():
            app.stop.set()
        else:
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, on_int) if app is not None else None
    old_term = signal.signal(signal.SIGTERM, on_int) if app is not None else None
    try:
        yield
    except DmError as err:
        if app is not None:
            app.log.error("failed", message=str(err), exit_code=err.exit_code)
        fail(err)
    except KeyboardInterrupt:
        typer.echo("dmbackup: interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
            signal.signal(signal.SIGTERM, old_term)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
