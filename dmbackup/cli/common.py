"""What every command shares: loading config into an App, choosing a target, printing a
``Result`` (``show``), and turning errors into one line on stderr plus the documented exit
code (no traceback).

A bug (any exception that is not a DmError) is exit 70, never 1: units count 1 as success.
The administrator gets one line; the traceback goes to the log and to a crash report file
(``<state_dir>/crash/``, mode 0600), because on a terminal, or with --quiet, there is no log.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import typer

from dmbackup.context import App
from dmbackup.engine.result import Result
from dmbackup.errors import DmError, UsageError, EXIT_INTERNAL, EXIT_INTERRUPTED
from dmbackup.log import Logger, Progress, terminal_safe
from dmbackup.system import stopping
from dmbackup.system.childenv import check_config_file

if TYPE_CHECKING:
    from dmbackup.config import Config


class State:
    config_file: str | None = None
    quiet: bool = False


STATE = State()


def load_app(*, progress: bool = False, json_out: bool = False) -> App:
    from dmbackup import config as config_mod     # late: `--help` reads no config (issue 17)

    check_config_file(config_mod.config_path(STATE.config_file))
    cfg = config_mod.load(STATE.config_file)
    tty = sys.stderr.isatty()
    log = Logger(None if (tty or STATE.quiet) else sys.stderr)
    prog = Progress()
    app = App(cfg, log=log, progress=prog)
    if progress and tty and not json_out and not STATE.quiet:
        from dmbackup.cli.progress import attach

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


LONG_LIST = 100                 # a list of more objects than this is printed one object a line
_ONE_LINE = json.JSONEncoder(default=str, ensure_ascii=True)     # (no indent: the C encoder)


def to_json(obj) -> str:
    """``--json`` text: indented by two, except that a long list of objects at the top level
    or in a top-level member (the messages of ``find``, the snapshots of ``snapshots``) has
    one object a line: as easy to read and to ``grep``, and written by the C encoder (29,814
    messages: 0.36 s instead of 0.67-0.76 s). ASCII escapes keep any file name (even
    undecodable bytes) valid JSON."""
    return "".join(json_pieces(obj))


JSON_PIECE_LINES = 1000         # lines of a long list written at a time


def json_pieces(obj) -> Iterator[str]:
    """``to_json(obj)`` in pieces, a long list ``JSON_PIECE_LINES`` objects at a time: printed
    piece by piece, an answer of 100,000 messages is never one string in memory (nor two,
    with its bytes)."""
    def long(v) -> bool:
        return type(v) is list and len(v) > LONG_LIST and all(type(x) is dict for x in v)

    def lines(v: list, pad: str) -> Iterator[str]:
        enc, sep = _ONE_LINE.encode, ",\n" + pad + "  "
        for i in range(0, len(v), JSON_PIECE_LINES):
            yield ("[\n" if i == 0 else ",\n") + pad + "  " + sep.join(enc(x) for x in v[i:i + JSON_PIECE_LINES])
        yield "\n" + pad + "]"

    if long(obj):
        yield from lines(obj, "")
        return
    if type(obj) is dict and any(long(v) for v in obj.values()):
        first = True
        for k, v in obj.items():
            yield f"{'{' if first else ','}\n  {_ONE_LINE.encode(str(k))}: "
            first = False
            if long(v):
                yield from lines(v, "  ")
            else:
                yield json.dumps(v, indent=2, default=str, ensure_ascii=True).replace("\n", "\n  ")
        yield "\n}"
        return
    yield json.dumps(obj, indent=2, default=str, ensure_ascii=True)


def emit(obj, json_out: bool, text: str | None = None) -> None:
    try:
        if json_out:
            for piece in json_pieces(obj):
                typer.echo(piece, nl=False)
            typer.echo("")
        elif text is not None:
            echo(text)
    except BrokenPipeError:
        _reader_gone()


def _reader_gone() -> None:
    """The reader of stdout went away (``dmbackup find --json | head``): it chose to stop, so
    this is no error; the rest is not printed (what is buffered goes nowhere at exit) and the
    command ends as it would have, with its own exit code."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(fd, sys.stdout.fileno())
        finally:
            os.close(fd)
    except (OSError, ValueError):       # (no file descriptor: a test's captured stdout)
        pass


def show(res: Result, json_out: bool, *, after: str | None = None) -> None:
    """Print an engine ``Result``: its notes (warnings) on stderr, then its summary, or its
    ``--json``, on stdout; ``after``, an error line, on stderr last; exit with its code."""
    for line in res.notes():
        echo(line, err=True)
    emit(res.as_json(), json_out, None if json_out else res.summary())     # (find: 30k lines of text)
    if after:
        echo(f"dmbackup: {after}", err=True)
    if res.exit_code:
        raise typer.Exit(res.exit_code)


def fail(err: DmError) -> None:
    msg = terminal_safe(str(err).replace("\n", " "))
    typer.echo(f"dmbackup: {msg}", err=True)
    raise typer.Exit(err.exit_code)


# typer/click signal their own exits with exceptions: those are not bugs
def _cli_exit_types() -> tuple:
    """typer.Exit/Abort and the click exceptions of whichever click typer uses (typer >= 0.28
    carries its own as typer._click): looked up, not imported, so no second click is loaded."""
    found = [typer.Exit, typer.Abort]
    for name in ("click.exceptions", "typer._click.exceptions"):
        mod = sys.modules.get(name)
        if mod is not None:
            found += [getattr(mod, n) for n in ("Exit", "Abort", "ClickException") if hasattr(mod, n)]
    return tuple(found)


_CLI_EXITS = _cli_exit_types()
CRASH_FALLBACK_DIR = "/var/tmp"     # when there is no config (and so no state_dir) to write to


def _crash_report(app: App | None, text: str) -> str | None:
    """Write ``text`` (a traceback) to a new private file; its path, or None."""
    dirs = []
    if app is not None:
        dirs.append(os.path.join(app.config.state_dir, "crash"))
    dirs.append(CRASH_FALLBACK_DIR)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for d in dirs:
        try:
            if d != CRASH_FALLBACK_DIR:
                os.makedirs(d, mode=0o700, exist_ok=True)
            # mkstemp: O_EXCL and mode 0600, safe even in a world-writable directory
            import tempfile   # late: tempfile imports random, ~3 ms on every start-up

            fd, path = tempfile.mkstemp(prefix=f"dmbackup-crash-{stamp}-", suffix=".txt", dir=d)
            with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return None


def internal_error(app: App | None, exc: BaseException) -> None:
    """A bug: traceback to the log and a crash report, one line to the person, exit 70."""
    tb = "".join(traceback.format_exception(exc))
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if app is not None:
        log = app.log
    else:
        log = Logger(None if (STATE.quiet or sys.stderr.isatty()) else sys.stderr)
    log.error("internal_error", error=what, traceback=tb)
    path = _crash_report(app, f"dmbackup {' '.join(sys.argv[1:])}\n\n{tb}")
    where = f"the traceback is in {path} and in the log" if path else "the traceback is in the log"
    msg = terminal_safe(f"internal error (a bug): {what}: {where}; please report it".replace("\n", " "))
    typer.echo(f"dmbackup: {msg}", err=True)
    raise typer.Exit(EXIT_INTERNAL)


@contextmanager
def handled(app: App | None = None):
    """Run a command body: DmError -> one line + exit code; Ctrl-C -> 130; a bug -> 70.

    The first SIGINT/SIGTERM asks the run to stop at a safe point (``app.stop``). A run stuck
    in a system call never gets there, so the signal is sent again to this thread every
    ``STOP_GRACE`` seconds and a repeated signal raises KeyboardInterrupt, which aborts the
    blocked call; post hooks are never cut short that way (``hooks.tearing_down``).
    """
    asked: dict = {"stop": False, "kicker": None}
    if app is not None:
        from dmbackup.engine import hooks      # here, not in the signal handler

    def on_int(signum, frame):
        if not asked["stop"]:
            asked["stop"] = True
            app.stop.set()
            asked["kicker"] = stopping.Kicker(signum, stopping.STOP_GRACE).start()
            return
        if hooks.tearing_down():
            return
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, on_int) if app is not None and main else None
    old_term = signal.signal(signal.SIGTERM, on_int) if app is not None and main else None
    try:
        yield
    except DmError as err:
        if app is not None:
            app.log.error("failed", message=str(err), exit_code=err.exit_code)
        fail(err)
    except KeyboardInterrupt:
        typer.echo("dmbackup: interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    except _CLI_EXITS:
        raise
    except Exception as exc:
        internal_error(app, exc)
    finally:
        if asked["kicker"] is not None:
            asked["kicker"].cancel()          # no signal may arrive after the handlers go
        if old is not None:
            signal.signal(signal.SIGINT, old)
            signal.signal(signal.SIGTERM, old_term)


def examples(*pairs: str) -> str:
    """A command's ``--help`` epilog: "Examples:" then (what, command) pairs, one per line.

    Help is plain click formatting (no rich: start-up time, issue 17), which rewraps
    paragraphs: each example is a paragraph opened by click's ``\\b`` (keep these lines as
    they are). No square brackets (they would be markup if rich formatting came back)."""
    assert not any("[" in p for p in pairs), "no square brackets in --help examples"
    return "\n\n".join(["Examples:"] + [f"\b\n{what}:\n    {cmd}" for what, cmd in zip(pairs[0::2], pairs[1::2])])


def _config_for_completion(ctx) -> "Config | None":
    """The config named by --config (or the default) while the shell completes a word; None
    when it cannot be read (e.g. not root): completion then offers no names, never an error."""
    path = None
    while ctx is not None and path is None:
        path = (ctx.params or {}).get("config")
        ctx = ctx.parent
    try:
        from dmbackup import config as config_mod

        return config_mod.load(path)
    except Exception:
        return None


def complete_target(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of target names (``--target``, ``init TARGET``)."""
    cfg = _config_for_completion(ctx)
    return [n for n in sorted(cfg.targets) if n.startswith(incomplete)] if cfg else []


def complete_job(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of job names (``backup JOB``)."""
    cfg = _config_for_completion(ctx)
    return [n for n in sorted(cfg.jobs) if n.startswith(incomplete)] if cfg else []
