"""``job_timeout``: one job run, however it was started, ends within its time limit.

When the limit expires the run is asked to stop (``app.stop``), and, if it does not, forced
out of a blocked system call with SIGALRM (the same kicker the daemon uses after SIGTERM:
``dmbackup.system.stopping``). It then ends as a failure: exit 7 (``TargetHung``) when it was
waiting on its target, exit 3 (``JobTimedOut``) otherwise; or as a warning when the snapshot
had already been committed (only prune/verify were cut). ``jobs.run_job`` wraps every run in
``job_time_limit``, so the CLI, the timers and the daemon behave the same.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable

from dmbackup.engine import hooks
from dmbackup.errors import Interrupted, JobTimedOut, TargetHung
from dmbackup.system.stopping import STOP_GRACE, Kicker

# code that waits on a target: a run stopped in here was stuck on it (exit 7, not 3)
_TARGET_MODULES = ("dmbackup.targets.", "dmbackup.system.libnfs", "dmbackup.system.diskmount",
                   "dmbackup.system.usbdetect", "dmbackup.system.mountinfo")


class _Deadline(KeyboardInterrupt):
    """Raised in the main thread when a run outlives its job_timeout; a KeyboardInterrupt so
    that no ``except Exception`` on the way swallows it."""


def _human(seconds: int) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % n == 0:
            return f"{seconds // n}{unit}"
    return f"{seconds}s"


def _waiting_on_target(exc: BaseException | None) -> bool:
    """Did ``exc`` (or one it interrupted) come out of target code, i.e. was the run stuck there?"""
    seen = 0
    while exc is not None and seen < 10:
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_globals.get("__name__", "").startswith(_TARGET_MODULES):
                return True
            tb = tb.tb_next
        exc, seen = exc.__context__, seen + 1
    return False


@contextmanager
def job_time_limit(app, job, ctx=None):
    """Bound one run of ``job`` (a JobConfig) by ``job.job_timeout``; see the module docstring.

    ``ctx`` (a hooks.HookContext) tells whether the snapshot is already committed
    (``ctx.snapshot``): then a timeout only cuts what follows and becomes a warning.
    """
    seconds = int(getattr(job, "job_timeout", 0) or 0)
    if seconds <= 0:
        yield
        return
    limit = _human(seconds)
    state = {"fired": False, "set_stop": False}
    main = threading.current_thread() is threading.main_thread()

    def expire() -> None:
        state["fired"] = True
        state["set_stop"] = not app.stop.is_set()
        app.log.error("job_timeout", job=job.name, job_timeout=limit,
                      message="the run is being stopped: it did not finish within job_timeout")
        app.stop.set()

    def on_alarm(signum, frame):
        if state["fired"] and not kicker.cancelled and not hooks.tearing_down():
            raise _Deadline()

    grace = min(STOP_GRACE, max(1.0, seconds / 10))
    old = signal.signal(signal.SIGALRM, on_alarm) if main else None
    # not in the main thread (tests drive the daemon from one): the polite stop only
    kicker = Kicker(signal.SIGALRM, grace, delay=seconds, before_first=expire)
    if not main:
        kicker = _PoliteOnly(seconds, expire)
    kicker.start()
    try:
        yield
    except (_Deadline, Interrupted) as exc:
        kicker.cancel()
        if not state["fired"]:
            raise
        if ctx is not None and getattr(ctx, "snapshot", None):
            ctx.warnings.append(f"job_timeout ({limit}) reached after snapshot {ctx.snapshot} was committed: "
                                "what came after it (prune, verify) was stopped")
            return
        where = f"target {job.target!r}"
        if _waiting_on_target(exc):
            raise TargetHung(
                f"job {job.name} did not finish within its job_timeout ({limit}): it was stopped while "
                f"waiting on {where}, which did not answer; nothing of this run was committed. Check "
                f"the target, then run again (or raise job_timeout if it is only slow)") from None
        raise JobTimedOut(
            f"job {job.name} did not finish within its job_timeout ({limit}) and was stopped; nothing "
            f"of this run was committed. Raise job_timeout if the backup really takes that long") from None
    finally:
        kicker.cancel()
        if main:
            signal.signal(signal.SIGALRM, old)
        if state["set_stop"]:
            app.stop.clear()          # the daemon goes on; its next run must not start stopped


class _PoliteOnly:
    """job_time_limit outside the main thread: signals cannot reach it, so only ask to stop."""

    def __init__(self, seconds: float, expire: Callable[[], None]):
        self._timer = threading.Timer(seconds, expire)
        self._timer.daemon = True
        self.cancelled = False

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self.cancelled = True
        self._timer.cancel()
