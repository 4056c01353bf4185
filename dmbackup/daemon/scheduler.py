"""The daemon (``dmbackup daemon``): run jobs at their times and when their USB disk appears.

One loop thread does all the work, one job at a time:

- Each job with a ``schedule`` becomes a job of the ``schedule`` library (``every().day.at()``,
  ``every().monday.at()``, ``every(n).seconds``). When one is due its callback only *queues*
  the job; the loop then runs the queue in order. A job that falls due while another runs is
  therefore run after it, never beside it and never dropped; a job already waiting in the
  queue is not queued twice.
- At start, a job whose last run (from ``State``) is older than its previous due time is
  queued ONCE (trigger "catch-up"): three days of downtime give one run, not three. A run that
  was interrupted does not count as a run. A job the daemon has never seen before is not
  caught up (nothing was missed): it is remembered in ``scheduler.json`` ("first seen").
- Jobs with ``on_plug = true`` on a ``usb`` target are queued (trigger "usb") when
  ``dmbackup.system.usbwatch`` reports their disk plugged in; the watcher runs in its own thread
  and only queues.
- Dead-man check: a scheduled job with no success for more than twice its interval (counted
  from its last success, or from when the daemon first saw it) is overdue: logged
  (``job_overdue``) and mailed, once when it becomes overdue and then at most once per further
  twice-the-interval while it stays overdue (remembered in ``scheduler.json``).

Signals: SIGHUP reloads the config file (after the running job, if any; a broken file is
logged and the old config kept; no catch-up on reload). SIGTERM and SIGINT set ``app.stop``:
the engine checks it between files and volumes (``App.check_stop``) and raises
``Interrupted`` at a point where nothing half-written is visible, hooks cut a running pre
hook short, post hooks still run, the run is recorded as "interrupted" and the daemon exits
0. A flag cannot reach a run stuck in a system call (a NAS that accepted the connection and
went silent, a hung disk): if the run has not stopped ``STOP_GRACE`` seconds after the
signal, the signal is sent again to the main thread, every ``STOP_GRACE`` seconds, and its
handler raises there, which aborts the blocked call (an interruptible wait returns EINTR and
the exception propagates; what the crash tests show for SIGKILL holds for this too: nothing
half-written becomes visible). A second SIGTERM does the same at once. Post hooks are never
forced (``hooks.tearing_down``).

Time limit: every job run gets ``job_timeout`` (``job_time_limit``, used by ``jobs.run_job``,
so the same for the CLI, the timers and the daemon). When it expires the run is asked to stop
(``app.stop``), and forced out of a blocked call as above with SIGALRM; it ends as a failure,
exit 7 (``TargetHung``) when it was waiting on its target, exit 3 (``JobTimedOut``) otherwise,
or as a warning when the snapshot had already been committed (only prune/verify were cut).

Logging is JSON lines on stdout (journald adds the timestamps it needs). systemd readiness
goes over ``$NOTIFY_SOCKET`` (``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``STATUS=...``),
so the unit can be ``Type=notify``; no extra dependency. While a job runs, a
``systemd-inhibit --what=sleep:shutdown`` child holds off suspend (only under systemd).

Time: every computation takes a ``clock`` (aware UTC datetimes), and the ``schedule`` library
is made to read the same clock, so tests drive the daemon through days in milliseconds.
Schedules are in the appliance's local time ("daily at 02:30" is 02:30 on the wall clock).
"""

from __future__ import annotations

import collections
import datetime as _dt
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import traceback
import types
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Callable

import schedule

from dmbackup.engine import hooks
from dmbackup.system.childenv import child_env
from dmbackup.errors import DmError, Interrupted, JobTimedOut, Locked, TargetHung
from dmbackup import utctime
from dmbackup.daemon.schedule_spec import DAYS, ScheduleSpec, parse_schedule
from dmbackup.system.stopping import STOP_GRACE, Kicker

Clock = Callable[[], datetime]
MAX_SLEEP = 60.0                 # seconds; the loop re-checks at least this often
SCHED_STATE = "scheduler.json"
_TARGET_MODULES = ("dmbackup.targets.", "dmbackup.usb.")

# --- the schedule library, reading our clock ------------------------------------------------
# schedule calls datetime.datetime.now() for everything. It gets a datetime module whose
# datetime.now() asks the clock installed by the running Daemon (the real time otherwise).
_clock_lock = threading.RLock()
_active_clock: Clock | None = None


class _ClockDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        clock = _active_clock
        if clock is None:
            return _dt.datetime.now(tz)
        t = clock()
        return t.astimezone(tz) if tz is not None else t.astimezone().replace(tzinfo=None)


_shim = types.ModuleType("datetime")
_shim.__dict__.update({k: v for k, v in _dt.__dict__.items() if not k.startswith("__")})
_shim.datetime = _ClockDatetime
schedule.datetime = _shim


@contextmanager
def schedule_clock(clock: Clock):
    global _active_clock
    with _clock_lock:
        previous, _active_clock = _active_clock, clock
        try:
            yield
        finally:
            _active_clock = previous


# --- forcing a stuck run out of a system call ---------------------------------------------------

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


# --- due times, shared with `status` ---------------------------------------------------------

def _local_at(day: _dt.date, hhmm: str) -> datetime:
    """``hhmm`` on ``day`` as local wall time, aware.

    A wall time skipped by a DST change (02:30 on the spring-forward night) means the first
    moment after the gap, which is when the ``schedule`` library fires too (local time reaches
    02:30 only at 03:00); a repeated one (autumn) means its first occurrence.
    """
    h, m = (int(x) for x in hhmm.split(":"))
    naive = datetime(day.year, day.month, day.day, h, m)
    for minutes in range(0, 24 * 60):
        wall = naive + timedelta(minutes=minutes)
        t = wall.replace(fold=0).astimezone()
        if t.astimezone().replace(tzinfo=None) == wall:
            return t
    raise ValueError(f"no local time {hhmm} on {day}")   # pragma: no cover


def previous_due(spec: ScheduleSpec, now: datetime) -> datetime:
    """The latest due time at or before ``now`` (for "every": ``now`` minus the interval)."""
    if spec.kind == "every":
        return now - timedelta(seconds=spec.every_seconds)
    local = now.astimezone()
    day = local.date()
    for back in range(0, 9):
        d = day - timedelta(days=back)
        if spec.kind == "weekly" and DAYS[d.weekday()] != spec.day:
            continue
        t = _local_at(d, spec.at or "00:00")
        if t <= now:
            return t
    raise AssertionError("unreachable")


def next_due(spec: ScheduleSpec, now: datetime, last_run: datetime | None = None) -> datetime:
    """The first due time after ``now``; for "every", one interval after the last run."""
    if spec.kind == "every":
        if last_run is None:
            return now
        return max(now, last_run + timedelta(seconds=spec.every_seconds))
    day = now.astimezone().date()
    for ahead in range(0, 9):
        d = day + timedelta(days=ahead)
        if spec.kind == "weekly" and DAYS[d.weekday()] != spec.day:
            continue
        t = _local_at(d, spec.at or "00:00")
        if t > now:
            return t
    raise AssertionError("unreachable")


def overdue_reference(runs_entry: dict, first_seen: datetime | None) -> datetime | None:
    """Since when a job has been waiting for a success: its last success, or first sighting."""
    last_success = utctime.parse_time_or_none((runs_entry.get("last_success") or {}).get("time"))
    return last_success or first_seen


def is_overdue(spec: ScheduleSpec, runs_entry: dict, first_seen: datetime | None, now: datetime) -> bool:
    ref = overdue_reference(runs_entry, first_seen)
    return ref is not None and (now - ref).total_seconds() > 2 * spec.interval_seconds


def needs_catch_up(spec: ScheduleSpec, runs_entry: dict, first_seen: datetime | None, now: datetime) -> bool:
    last = runs_entry.get("last_run") or {}
    ref = utctime.parse_time_or_none(last.get("time"))
    if last.get("status") == "interrupted":
        ref = utctime.parse_time_or_none((runs_entry.get("last_success") or {}).get("time"))
    if ref is None:
        ref = first_seen
    return ref is not None and ref < previous_due(spec, now)


def add_to_schedule(sched: schedule.Scheduler, spec: ScheduleSpec, func: Callable[..., Any], *args) -> schedule.Job:
    """Turn a ScheduleSpec into a ``schedule`` job calling ``func(*args)``."""
    if spec.kind == "daily":
        job = sched.every().day.at(spec.at)
    elif spec.kind == "weekly":
        job = getattr(sched.every(), spec.day).at(spec.at)
    elif spec.kind == "every":
        job = sched.every(spec.every_seconds).seconds
    else:
        raise ValueError(f"unknown schedule kind {spec.kind!r}")
    return job.do(func, *args)


def timer_oncalendar(spec: ScheduleSpec) -> list[str]:
    """``[Timer]`` lines for ``dmbackup-job@JOB.timer.d/schedule.conf`` (see systemd/)."""
    if spec.kind == "daily":
        return ["OnCalendar=", f"OnCalendar=*-*-* {spec.at}:00"]
    if spec.kind == "weekly":
        return ["OnCalendar=", f"OnCalendar={spec.day[:3].capitalize()} *-*-* {spec.at}:00"]
    # an interval: count from the last activation, and from boot for the first one
    return ["OnCalendar=", f"OnBootSec={spec.every_seconds}s", f"OnUnitActiveSec={spec.every_seconds}s"]


# --- systemd ------------------------------------------------------------------------------

def sd_notify(message: str) -> bool:
    """Send ``message`` ("READY=1", "STATUS=...") to $NOTIFY_SOCKET; False when there is none."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode("utf-8"))
        return True
    except OSError:
        return False


class _Inhibitor:
    """Holds a logind sleep/shutdown inhibitor lock while a job runs (best effort).

    ``systemd-inhibit ... cat`` keeps the lock until its stdin closes, which also happens when
    the daemon dies, so a crash never leaves the machine unable to sleep.
    """

    def __init__(self, why: str):
        self.proc = None
        exe = shutil.which("systemd-inhibit")
        if not exe:
            return
        try:
            self.proc = subprocess.Popen(
                [exe, "--what=sleep:shutdown", "--who=dmbackup", f"--why={why}", "--mode=block", "cat"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, env=child_env())
        except OSError:
            self.proc = None

    def release(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


# --- persistent scheduler memory ------------------------------------------------------------

class SchedulerState:
    """``<state_dir>/scheduler.json``: per job ``first_seen``, ``overdue_notified``, ``overdue_ref``."""

    def __init__(self, state_dir: str):
        from dmbackup.state import State

        self.path = os.path.join(state_dir, SCHED_STATE)
        self._state = State(state_dir)

    def load(self) -> dict:
        data = self._state.read_json(SCHED_STATE)
        if not isinstance(data.get("jobs"), dict):
            return {"jobs": {}}
        return data

    def save(self, data: dict) -> None:
        self._state.write_json(SCHED_STATE, data)

    def first_seen(self, job: str) -> datetime | None:
        return utctime.parse_time_or_none(self.load()["jobs"].get(job, {}).get("first_seen"))


# --- the daemon -------------------------------------------------------------------------------

Runner = Callable[..., Any]      # runner(app, job_name, *, clock, trigger) -> JobResult-like


def _default_runner(app, job_name, *, clock, trigger):
    from dmbackup.daemon.jobs import run_job

    return run_job(app, job_name, clock=clock, trigger=trigger)


class Daemon:
    """The scheduler core; ``run()`` is the loop, ``tick()`` one pass of it (tests call it).

    ``clock``: aware-UTC time source. ``runner``: runs one job (default ``jobs.run_job``).
    ``config_loader``: returns a fresh ``Config`` on SIGHUP (default: ``config.load`` of the
    same file). ``app_factory``: builds the App for a reloaded config (default: ``App(cfg,
    log=<same logger>)``; the stop event is carried over). ``usb``: start the plug-in
    watcher when a job has ``on_plug`` (None: when ``dmbackup.system.usbwatch`` imports).
    ``inhibit``: hold a systemd-inhibit lock during jobs (None: when run by systemd).
    """

    def __init__(self, app, *, clock: Clock = utctime.utc_now, runner: Runner | None = None,
                 config_loader: Callable[[], Any] | None = None, app_factory=None,
                 usb: bool | None = None, inhibit: bool | None = None, notifier=None):
        self.app = app
        self.clock = clock
        self.runner = runner or _default_runner
        self.config_loader = config_loader or self._load_same_file
        self.app_factory = app_factory or self._new_app
        self.usb = usb
        self.inhibit = ("INVOCATION_ID" in os.environ) if inhibit is None else inhibit
        self.notifier = notifier
        self.sched = schedule.Scheduler()
        self.queue: collections.deque[tuple[str, str]] = collections.deque()
        self._qlock = threading.Lock()
        self._wake = threading.Event()
        self._reload = threading.Event()
        self.stopping = False
        self.current: str | None = None
        self.runs: list[Any] = []              # results, newest last (bounded)
        self.sstate = SchedulerState(app.config.state_dir)
        self._usb_stop = threading.Event()
        self._usb_thread: threading.Thread | None = None
        self._lockfile = None
        self._old_handlers: dict[int, Any] = {}
        self._forceable = False                # a job runs in the main thread: it may be forced
        self._kicker: Kicker | None = None
        self._signals: list[tuple[str, str]] = []   # (signal, action), logged by the loop

    # --- construction helpers ---
    def _load_same_file(self):
        from dmbackup.system.childenv import check_config_file
        from dmbackup.config import load

        check_config_file(self.app.config.file)
        return load(self.app.config.file)

    def _new_app(self, cfg):
        from dmbackup.context import App

        return App(cfg, log=self.app.log)

    @property
    def log(self):
        return self.app.log

    # --- queue ---
    def enqueue(self, job: str, trigger: str) -> bool:
        """Queue ``job`` unless it is already waiting; safe from any thread."""
        with self._qlock:
            if any(name == job for name, _ in self.queue):
                self.log.info("job_already_queued", job=job, trigger=trigger)
                return False
            self.queue.append((job, trigger))
        self.log.info("job_queued", job=job, trigger=trigger)
        self._wake.set()
        return True

    def _pop(self) -> tuple[str, str] | None:
        with self._qlock:
            return self.queue.popleft() if self.queue else None

    # --- setup ---
    def _scheduled_jobs(self):
        for job in self.app.config.jobs.values():
            if job.schedule:
                yield job, parse_schedule(job.schedule)

    def _build_schedule(self) -> None:
        self.sched.clear()
        with schedule_clock(self.clock):
            for job, spec in self._scheduled_jobs():
                sj = add_to_schedule(self.sched, spec, self.enqueue, job.name, "schedule")
                self.log.info("job_scheduled", job=job.name, schedule=job.schedule,
                              next_run=sj.next_run.isoformat(timespec="minutes"))
        self._remember_jobs()

    def _remember_jobs(self) -> None:
        now = self.clock()
        data = self.sstate.load()
        changed = False
        for job, _spec in self._scheduled_jobs():
            entry = data["jobs"].setdefault(job.name, {})
            if "first_seen" not in entry:
                entry["first_seen"] = utctime.iso(now)
                changed = True
        if changed:
            self.sstate.save(data)

    def catch_up(self) -> list[str]:
        """Queue each scheduled job that missed its previous due time; once, at start."""
        now = self.clock()
        runs = self.app.state.runs()
        sdata = self.sstate.load()["jobs"]
        queued = []
        for job, spec in self._scheduled_jobs():
            first_seen = utctime.parse_time_or_none(sdata.get(job.name, {}).get("first_seen"))
            if needs_catch_up(spec, runs.get(job.name, {}), first_seen, now):
                self.log.info("catch_up", job=job.name, missed=utctime.iso(previous_due(spec, now)),
                              last_run=(runs.get(job.name, {}).get("last_run") or {}).get("time"))
                if self.enqueue(job.name, "catch-up"):
                    queued.append(job.name)
        return queued

    def start(self) -> None:
        """Take the daemon lock, build the schedule, catch up, start the USB watcher."""
        self._take_lock()
        self._build_schedule()
        self.catch_up()
        self._start_usb()
        self.log.info("daemon_ready", jobs=sorted(self.app.config.jobs), pid=os.getpid())
        sd_notify("READY=1\nSTATUS=" + self._status_line())

    def _take_lock(self) -> None:
        d = self.app.config.state_dir
        os.makedirs(d, mode=0o700, exist_ok=True)
        path = os.path.join(d, "daemon.lock")
        f = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise Locked(f"another dmbackup daemon is running (pid {holder}, lock {path})") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lockfile = f

    # --- USB ---
    def _plug_jobs(self):
        for job in self.app.config.jobs.values():
            if not job.on_plug:
                continue
            tcfg = self.app.config.targets.get(job.target)
            if tcfg is None or not callable(getattr(tcfg, "matches", None)):
                self.log.warning("on_plug_ignored", job=job.name,
                                 reason=f"target {job.target!r} is not a usb target")
                continue
            yield job, tcfg

    def _start_usb(self) -> None:
        plug = list(self._plug_jobs())
        if not plug or self.usb is False:
            return
        try:
            from dmbackup.system.usbwatch import watch
        except ImportError as exc:
            self.log.warning("usb_watch_unavailable", error=str(exc))
            return

        def match(disk) -> bool:
            return any(tcfg.matches(disk) for _job, tcfg in plug)

        def on_disk(disk) -> None:
            for job, tcfg in plug:
                if tcfg.matches(disk):
                    self.log.info("usb_plugged", job=job.name, disk=disk.describe())
                    self.enqueue(job.name, "usb")

        def run() -> None:
            try:
                watch(on_disk, match, self._usb_stop, bus="any")
            except Exception as exc:        # no netlink here, pyudev missing...: log, go on
                self.log.error("usb_watch_failed", error=f"{type(exc).__name__}: {exc}")

        self._usb_stop.clear()
        self._usb_thread = threading.Thread(target=run, name="dmbackup-usb-watch", daemon=True)
        self._usb_thread.start()
        self.log.info("usb_watch_started", jobs=[j.name for j, _ in plug])

    def _stop_usb(self) -> None:
        if self._usb_thread is not None:
            self._usb_stop.set()
            self._usb_thread.join(timeout=5)
            self._usb_thread = None

    # --- reload / stop (signal handlers call these) ---
    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def request_stop(self) -> None:
        self.stopping = True
        self.app.stop.set()
        self._wake.set()

    def reload(self) -> bool:
        self._reload.clear()
        sd_notify("RELOADING=1")
        try:
            cfg = self.config_loader()
        except DmError as exc:
            self.log.error("reload_failed", error=str(exc), keeping=self.app.config.file)
            sd_notify("READY=1\nSTATUS=reload failed; " + self._status_line())
            return False
        stop = self.app.stop
        self.app = self.app_factory(cfg)
        self.app.stop = stop
        self.sstate = SchedulerState(cfg.state_dir)
        with self._qlock:
            dropped = [n for n, _ in self.queue if n not in cfg.jobs]
            self.queue = collections.deque((n, t) for n, t in self.queue if n in cfg.jobs)
        self._build_schedule()
        self._stop_usb()
        self._start_usb()
        self.log.info("reloaded", jobs=sorted(cfg.jobs), dropped_from_queue=dropped)
        sd_notify("READY=1\nSTATUS=" + self._status_line())
        return True

    # --- the loop ---
    def _status_line(self) -> str:
        if self.current:
            return f"running job {self.current}"
        nxt = self.next_run()
        return "idle" + (f"; next run {nxt.strftime('%Y-%m-%d %H:%M')}" if nxt else "; no scheduled jobs")

    def next_run(self):
        with schedule_clock(self.clock):
            return self.sched.next_run

    def _run_pending(self) -> None:
        with schedule_clock(self.clock):
            self.sched.run_pending()

    def _log_signals(self) -> None:
        while self._signals:
            name, action = self._signals.pop(0)
            self.log.info("signal", signal=name, action=action)

    def tick(self) -> int:
        """Reload if asked, queue due jobs, run the queue one job at a time; returns jobs run."""
        ran = 0
        self._log_signals()
        if self._reload.is_set() and not self.stopping:
            self.reload()
        self._run_pending()
        self.check_overdue()
        while not self.stopping:
            item = self._pop()
            if item is None:
                break
            self._run_one(*item)
            ran += 1
            self._log_signals()
            if self._reload.is_set() and not self.stopping:
                self.reload()
            self._run_pending()          # what fell due meanwhile waits its turn, in order
            self.check_overdue()
        return ran

    def _run_one(self, name: str, trigger: str) -> None:
        if name not in self.app.config.jobs:
            self.log.warning("job_gone", job=name, reason="no longer in the config")
            return
        self.current = name
        sd_notify("STATUS=" + self._status_line())
        inhibitor = _Inhibitor(f"dmbackup job {name}") if self.inhibit else None
        try:
            self._forceable = threading.current_thread() is threading.main_thread()
            try:
                result = self.runner(self.app, name, clock=self.clock, trigger=trigger)
            finally:
                self._forceable = False
            self.runs.append(result)
            del self.runs[:-100]
        except KeyboardInterrupt:
            # forced out of a stuck call after SIGTERM (run_job recorded it as interrupted)
            if not self.stopping:
                raise
            self.log.warning("job_forced_stop", job=name,
                             reason=f"still running {STOP_GRACE:.0f} s after the stop request")
        except Exception as exc:          # run_job recorded and mailed it; the daemon goes on
            self.log.error("job_crashed", job=name, error=f"{type(exc).__name__}: {exc}",
                           traceback=traceback.format_exc())
        finally:
            if inhibitor is not None:
                inhibitor.release()
            self.current = None
            sd_notify("STATUS=" + self._status_line())

    def check_overdue(self) -> list[str]:
        """Dead-man check; returns the jobs notified about in this call."""
        from dmbackup.mailout import notify as _notify
        now = self.clock()
        runs = self.app.state.runs()
        data = self.sstate.load()
        changed, notified = False, []
        for job, spec in self._scheduled_jobs():
            entry = data["jobs"].setdefault(job.name, {})
            first_seen = utctime.parse_time_or_none(entry.get("first_seen"))
            r = runs.get(job.name, {})
            if not is_overdue(spec, r, first_seen, now):
                if entry.pop("overdue_notified", None) is not None:
                    entry.pop("overdue_ref", None)
                    changed = True
                continue
            ref = overdue_reference(r, first_seen)
            last_notified = utctime.parse_time_or_none(entry.get("overdue_notified"))
            period = timedelta(seconds=2 * spec.interval_seconds)
            if (last_notified is not None and entry.get("overdue_ref") == utctime.iso(ref)
                    and now - last_notified < period):
                continue
            last_success = utctime.parse_time_or_none((r.get("last_success") or {}).get("time"))
            self.log.warning("job_overdue", job=job.name, last_success=utctime.iso(last_success),
                             since=utctime.iso(ref), age_seconds=int((now - ref).total_seconds()),
                             interval_seconds=spec.interval_seconds)
            send = self.notifier or _notify.notify_overdue
            send(self.app, job, now=now, last_success=last_success, since=ref,
                 interval_seconds=spec.interval_seconds, last_run=r.get("last_run"))
            entry["overdue_notified"], entry["overdue_ref"] = utctime.iso(now), utctime.iso(ref)
            changed = True
            notified.append(job.name)
        if changed:
            self.sstate.save(data)
        return notified

    def _sleep_seconds(self) -> float:
        if self.queue:
            return 0.0
        with schedule_clock(self.clock):
            idle = self.sched.idle_seconds
        if idle is None:
            return MAX_SLEEP
        return max(0.5, min(MAX_SLEEP, idle))

    def install_signal_handlers(self) -> None:
        # Handlers never log: they run in the main thread between any two bytecodes, maybe
        # inside the logger's own write; the loop logs what they noted (_log_signals).
        def on_stop(signum, frame):
            if self.stopping:
                # a repeated signal, or the kicker's: force a stuck run out (never a teardown)
                if self._forceable and not hooks.tearing_down():
                    raise KeyboardInterrupt
                return
            self._signals.append((signal.Signals(signum).name, "stop"))
            self.request_stop()
            if self._forceable and self._kicker is None:
                self._kicker = Kicker(signum, STOP_GRACE).start()

        def on_hup(signum, frame):
            self._signals.append(("SIGHUP", "reload"))
            self.request_reload()

        for sig, fn in ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop), (signal.SIGHUP, on_hup)):
            self._old_handlers[sig] = signal.signal(sig, fn)

    def restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()

    def run(self, *, install_signals: bool = True) -> int:
        """Start, loop until stopped, shut down; returns the exit code (0)."""
        if install_signals and threading.current_thread() is threading.main_thread():
            self.install_signal_handlers()
        try:
            self.start()
            while not self.stopping:
                self.tick()
                if self.stopping:
                    break
                self._wake.wait(self._sleep_seconds())
                self._wake.clear()
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        if self._kicker is not None:
            self._kicker.cancel()       # before the handlers are restored: no late signal
            self._kicker = None
        self._log_signals()
        sd_notify("STOPPING=1")
        self._stop_usb()
        self.log.info("daemon_stopped", pending=[n for n, _ in self.queue])
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None
        self.restore_signal_handlers()


def daemon_running(state_dir: str) -> bool:
    """True when a daemon holds ``<state_dir>/daemon.lock`` (it then handles USB plug-ins)."""
    path = os.path.join(state_dir, "daemon.lock")
    try:
        f = open(path, "r", encoding="utf-8")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def run_daemon(app, *, clock: Clock = utctime.utc_now, runner: Runner | None = None,
               log_to_stdout: bool = True, install_signals: bool = True, **kw) -> int:
    """``dmbackup daemon``: run until SIGTERM/SIGINT; returns the exit code.

    Raises ``Locked`` (exit 5) when another daemon holds ``<state_dir>/daemon.lock``.
    """
    if log_to_stdout and hasattr(app.log, "stream"):
        app.log.stream = sys.stdout
    return Daemon(app, clock=clock, runner=runner, **kw).run(install_signals=install_signals)


__all__ = ["Daemon", "run_daemon", "previous_due", "next_due", "is_overdue", "needs_catch_up",
           "sd_notify", "add_to_schedule", "timer_oncalendar", "SchedulerState"]
