"""User hooks: executables in ``<hooks_dir>/<phase>.d`` run around backups and restores.

Phases: ``pre-backup``, ``post-backup``, ``on-failure``, ``pre-restore``, ``post-restore``.
Within a phase the files run one after another in byte order of their names (like run-parts),
each with ``config.hook_timeout`` seconds, stdin from /dev/null, stdout and stderr merged and
copied line by line into the log (event ``hook_output``). Ignored: sub-directories, files that
are not executable, hidden files, and leftovers of editors and package managers (``*~``,
``*.dpkg-*``, ``*.ucf-*``, ``*.rpmnew``, ``*.rpmsave``, ``*.swp``, ``*.bak``, ``*.orig``,
``*.rej``, ``#*#``), so a half-edited copy never runs.

A hook runs as root, so it is refused (a failure of that hook: exit 3 before a backup, a
warning after one) unless the hook file, its ``<phase>.d``, ``hooks_dir`` and every directory
above them are owned by root, writable by nobody else and not symlinks; the same holds for the
``hooks.conf`` the shipped hooks source (``$DMBACKUP_HOOKS_CONF`` or
``/etc/dmbackup/hooks.conf``) when it exists. Anyone who could write any of them, or rename a
directory on the way, could otherwise run code as root (``dmbackup.system.childenv.untrusted``).

What a hook sees in its environment (plus dmbackup's own, without $DMBACKUP_PASSPHRASE or any
other secret: ``dmbackup.system.childenv``):
``DMBACKUP_ACTION`` (backup|restore), ``DMBACKUP_PHASE``, ``DMBACKUP_JOB`` (empty for an ad-hoc
run), ``DMBACKUP_TARGET``, ``DMBACKUP_WHAT`` (mail|config), ``DMBACKUP_SNAPSHOT`` (empty until
known), ``DMBACKUP_STATUS`` (``running`` in pre hooks; ``ok``, ``warning``, ``failed``,
``interrupted`` or ``skipped`` afterwards), ``DMBACKUP_EXIT_CODE`` and ``DMBACKUP_ERROR`` (after
a failure), ``DMBACKUP_HOSTNAME``, ``DMBACKUP_CONFIG``, ``DMBACKUP_STATE_DIR``.

Semantics, modelled on borgmatic's before/after/on-error command hooks with one deliberate
difference:
- a ``pre-*`` hook that fails (non-zero exit, timeout, refused) aborts the run with
  ``HookFailed`` (exit 3) before anything is written; the remaining pre hooks do not run.
  Exit status 75 (EX_TEMPFAIL, borgmatic's "soft failure") means "skip this run": ``RunSkipped``
  (exit 0), recorded as skipped, not an error.
- ``post-*`` hooks run after EVERY run that got past its first pre hook: on success and also
  after a failure, an interruption or a skip, told which by ``DMBACKUP_STATUS``. borgmatic runs
  "after" hooks only on success; here they are the teardown of what pre hooks set up (an LVM
  snapshot, a stopped service), which must happen whatever the outcome, so they must tolerate
  "nothing to clean up". A failing post hook after a successful backup turns the result into a
  warning (exit 1): the snapshot is committed, so "failed, nothing committed" would be a lie.
- ``on-failure`` hooks run after the post hooks when the run failed (including a failed pre
  hook), not when it was interrupted or skipped; their own failures are only logged.

The daemon's stop request (``app.stop``, a threading.Event set by SIGTERM) terminates a running
pre hook (its whole process group) and raises ``Interrupted``; post and on-failure hooks are
never cut short by it, only by their timeout, because they clean up. ``tearing_down()`` tells
the forced stop (``dmbackup.daemon.scheduler``: a run stuck in a system call after SIGTERM or its
job_timeout) to leave that teardown alone.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from dmbackup.system import stopping
from dmbackup.system.childenv import child_env, untrusted
from dmbackup.errors import EXIT_INTERRUPTED, EXIT_OK, DmError, HookFailed, Interrupted

tearing_down = stopping.tearing_down   # True while post or on-failure hooks run (never forced)


PHASES = ("pre-backup", "post-backup", "on-failure", "pre-restore", "post-restore")
SKIP_EXIT = 75                      # EX_TEMPFAIL: "skip this run", as in borgmatic
OUTPUT_TAIL_LINES = 40              # kept per hook for messages and notifications
MAX_LOGGED_LINES = 2000             # per hook run; a runaway hook cannot flood the journal
MAX_LINE = 2000                     # characters of one output line that reach the log
KILL_GRACE = 5.0                    # seconds between SIGTERM and SIGKILL to a hook's group
_IGNORED_SUFFIXES = ("~", ".rpmnew", ".rpmsave", ".swp", ".bak", ".orig", ".rej", ".disabled")
_IGNORED_PARTS = (".dpkg-", ".ucf-")
HOOKS_CONF_ENV = "DMBACKUP_HOOKS_CONF"
DEFAULT_HOOKS_CONF = "/etc/dmbackup/hooks.conf"     # what the shipped hooks source by default


class RunSkipped(DmError):
    """A pre hook asked to skip this run (exit status 75)."""

    exit_code = EXIT_OK


@dataclass
class HookContext:
    """What hooks are told about the run; the caller fills in snapshot/status as it goes."""

    action: str                     # "backup" | "restore"
    target: str
    what: str = "mail"
    job: str | None = None
    snapshot: str | None = None
    status: str = "running"
    error: str | None = None
    exit_code: int | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class HookRun:
    phase: str
    path: str
    exit_code: int | None           # None: timed out, refused or could not start
    seconds: float
    output: list[str]               # the last OUTPUT_TAIL_LINES lines
    problem: str | None = None      # why it counts as failed, in words

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def ok(self) -> bool:
        return self.problem is None and self.exit_code == 0


def is_ignored_name(name: str) -> bool:
    return (name.startswith(".") or name.startswith("#") or name.endswith(_IGNORED_SUFFIXES)
            or any(p in name for p in _IGNORED_PARTS))


def scripts(hooks_dir: str, phase: str) -> list[str]:
    """The hooks of ``phase`` that would run, in order (absolute paths)."""
    if phase not in PHASES:
        raise ValueError(f"unknown hook phase {phase!r}")
    d = os.path.join(hooks_dir, f"{phase}.d")
    try:
        names = sorted(os.listdir(d), key=os.fsencode)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        if is_ignored_name(name):
            continue
        path = os.path.join(d, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK):
            out.append(path)
    return out


def hooks_conf_path() -> str:
    return os.environ.get(HOOKS_CONF_ENV) or DEFAULT_HOOKS_CONF


def _insecure(path: str) -> str | None:
    """Why running ``path`` as root would be unsafe, or None (see the module docstring)."""
    why = untrusted(path)
    if why:
        return why
    conf = hooks_conf_path()
    if os.path.lexists(conf):
        return untrusted(conf, what="hooks.conf (sourced by the hooks)")
    return None


def hook_env(app, phase: str, ctx: HookContext) -> dict[str, str]:
    cfg = app.config
    return child_env({
        "DMBACKUP_ACTION": ctx.action,
        "DMBACKUP_PHASE": phase,
        "DMBACKUP_JOB": ctx.job or "",
        "DMBACKUP_TARGET": ctx.target or "",
        "DMBACKUP_WHAT": ctx.what or "",
        "DMBACKUP_SNAPSHOT": ctx.snapshot or "",
        "DMBACKUP_STATUS": ctx.status,
        "DMBACKUP_EXIT_CODE": "" if ctx.exit_code is None else str(ctx.exit_code),
        "DMBACKUP_ERROR": ctx.error or "",
        "DMBACKUP_HOSTNAME": cfg.hostname,
        "DMBACKUP_CONFIG": cfg.file,
        "DMBACKUP_STATE_DIR": cfg.state_dir,
    })


def _stop_event(app) -> threading.Event | None:
    ev = getattr(app, "stop", None)
    return ev if isinstance(ev, threading.Event) else None


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the hook's process group, SIGKILL it if it lingers."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_one(app, phase: str, path: str, ctx: HookContext, *, interruptible: bool) -> HookRun:
    """Run one hook to completion (or timeout); never raises for the hook's own failure."""
    log = app.log
    name = os.path.basename(path)
    timeout = app.config.hook_timeout
    start = time.monotonic()
    why = _insecure(path)
    if why:
        log.error("hook_refused", phase=phase, hook=name, reason=why)
        return HookRun(phase, path, None, 0.0, [], problem=f"refused: {why}")

    log.info("hook_start", phase=phase, hook=name)
    try:
        proc = subprocess.Popen(
            [path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=hook_env(app, phase, ctx), cwd="/", start_new_session=True, close_fds=True)
    except OSError as exc:
        log.error("hook_failed", phase=phase, hook=name, reason=f"cannot start: {exc.strerror}")
        return HookRun(phase, path, None, 0.0, [], problem=f"cannot start: {exc.strerror}")

    tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
    counter = [0]

    def pump() -> None:
        # The pipe is read to its end so the hook never blocks on a full pipe.
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")[:MAX_LINE]
            tail.append(line)
            counter[0] += 1
            if counter[0] <= MAX_LOGGED_LINES:
                log.info("hook_output", phase=phase, hook=name, line=line)
            elif counter[0] == MAX_LOGGED_LINES + 1:
                log.warning("hook_output_truncated", phase=phase, hook=name, after_lines=MAX_LOGGED_LINES)

    reader = threading.Thread(target=pump, name=f"hook-{name}", daemon=True)
    reader.start()
    stop = _stop_event(app) if interruptible else None
    deadline = start + timeout
    problem = None
    rc: int | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _kill_group(proc)
            problem = f"timed out after {timeout} s (hook_timeout) and was killed"
            break
        if stop is not None and stop.is_set():
            _kill_group(proc)
            problem = "interrupted: dmbackup is stopping"
            break
        try:
            rc = proc.wait(timeout=min(remaining, 0.25) if stop is not None else remaining)
            break
        except subprocess.TimeoutExpired:
            continue
    # A background child that inherited stdout can keep the pipe open: do not wait for it.
    reader.join(timeout=2.0)
    try:
        proc.stdout.close()
    except OSError:
        pass
    seconds = round(time.monotonic() - start, 3)
    if problem is None:
        rc = proc.returncode
        if rc != 0 and rc != SKIP_EXIT:
            problem = f"exited with status {rc}" if rc > 0 else f"killed by signal {-rc}"
    run = HookRun(phase, path, rc, seconds, list(tail), problem)
    if run.problem is None:
        log.info("hook_done", phase=phase, hook=name, exit_code=rc, seconds=seconds)
    else:
        log.error("hook_failed", phase=phase, hook=name, reason=run.problem, seconds=seconds)
    return run


def _summary(run: HookRun) -> str:
    last = next((line for line in reversed(run.output) if line.strip()), "")
    return f"{run.phase} hook {run.name} {run.problem}" + (f": {last}" if last else "")


def run_phase(app, phase: str, ctx: HookContext, *, check: bool) -> list[HookRun]:
    """Run every hook of ``phase``.

    With ``check`` (pre phases) the first failing hook raises ``HookFailed`` and 75 raises
    ``RunSkipped``; without it every hook runs and failures are returned for the caller to
    turn into warnings.
    """
    runs = []
    stop = _stop_event(app)
    for path in scripts(app.config.hooks_dir, phase):
        if check and stop is not None and stop.is_set():
            raise Interrupted(f"dmbackup is stopping; {phase} hooks not run")
        run = run_one(app, phase, path, ctx, interruptible=check)
        runs.append(run)
        if not check:
            continue
        if run.problem and run.problem.startswith("interrupted"):
            raise Interrupted(f"{phase} hook {run.name} was interrupted: dmbackup is stopping")
        if run.exit_code == SKIP_EXIT and run.problem is None:
            app.log.warning("run_skipped", phase=phase, hook=run.name)
            raise RunSkipped(f"{phase} hook {run.name} asked to skip this run (exit status {SKIP_EXIT})")
        if not run.ok:
            raise HookFailed(_summary(run) + "; nothing was written")
    return runs


def _exit_code_of(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return getattr(exc, "exit_code", 3)


@contextmanager
def around(app, ctx: HookContext) -> Iterator[HookContext]:
    """``with around(app, ctx): do the action`` — pre hooks, then the body, then post hooks.

    The body may set ``ctx.snapshot``, append to ``ctx.warnings`` and set ``ctx.status``; when it
    leaves it at "running", success becomes "ok" (or "warning" with warnings). Failing post hooks
    add to ``ctx.warnings``. Exceptions from the body propagate after post/on-failure hooks ran.
    """
    action = ctx.action
    try:
        run_phase(app, f"pre-{action}", ctx, check=True)
        yield ctx
    except RunSkipped as exc:
        ctx.status, ctx.exit_code = "skipped", EXIT_OK
        ctx.error = None
        app.log.info("hooks_skip", reason=str(exc))
        _teardown(app, ctx, failed=False)
        raise
    except BaseException as exc:
        interrupted = isinstance(exc, (Interrupted, KeyboardInterrupt))
        ctx.status = "interrupted" if interrupted else "failed"
        ctx.exit_code = _exit_code_of(exc)
        ctx.error = ctx.error or str(exc) or type(exc).__name__
        _teardown(app, ctx, failed=not interrupted)
        raise
    else:
        if ctx.status == "running":
            ctx.status = "warning" if ctx.warnings else "ok"
        if ctx.exit_code is None:
            ctx.exit_code = 1 if ctx.status == "warning" else 0
        _teardown(app, ctx, failed=False)


def _teardown(app, ctx: HookContext, *, failed: bool) -> None:
    with stopping.teardown():
        _teardown_phases(app, ctx, failed=failed)


def _teardown_phases(app, ctx: HookContext, *, failed: bool) -> None:
    for run in run_phase(app, f"post-{ctx.action}", ctx, check=False):
        if not run.ok and run.exit_code != SKIP_EXIT:
            msg = _summary(run)
            ctx.warnings.append(msg)
            if ctx.status == "ok":
                ctx.status, ctx.exit_code = "warning", 1
    if failed:
        run_phase(app, "on-failure", ctx, check=False)
