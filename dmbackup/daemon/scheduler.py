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
  ``dmbackup.system.usbwatch`` reports their disk plugged in (``dmbackup.daemon.plug`` picks
  them, as for the udev unit); the watcher runs in its own thread and only queues.
- Dead-man check: a scheduled job with no success for more than twice its interval (counted
  from its last success, or from when the daemon first saw it) is overdue: logged
  (``job_overdue``) and mailed, once when it becomes overdue and then at most once per further
  twice-the-interval while it stays overdue (remembered in ``scheduler.json``).

Signals: SIGHUP reloads the config file (after the running job, if any; a broken file is
logged and the old config kept; no catch-up on reload). SIGTERM and SIGINT set ``app.stop``:
the engine checks it between files and volumes (``App.check_stop``) and raises
``Interrupted`` at a point where nothing half-written is visible, hooks cut a running pre
hook short, post hooks still run, the run is recorded as "interrupted" and the daemon exits
0. SIGUSR2 asks for a restart between jobs (sent by the Debian package's postinst after an
upgrade): the running job, if any, finishes normally, no further job is started, and the daemon
exits with ``EXIT_RESTART`` (75), which dmbackup.service restarts (``RestartForceExitStatus``)
with the new code; jobs that were queued behind it are caught up after the restart. A flag
cannot reach a run stuck in a system call (a NAS that accepted the connection and
went silent, a hung disk): if the run has not stopped ``STOP_GRACE`` seconds after the
signal, the signal is sent again to the main thread, every ``STOP_GRACE`` seconds, and its
handler raises there, which aborts the blocked call (an interruptible wait returns EINTR and
the exception propagates; what the crash tests show for SIGKILL holds for this too: nothing
half-written becomes visible). A second SIGTERM does the same at once. Post hooks are never
forced (``hooks.tearing_down``).

Time limit: every job run gets ``job_timeout`` (``dmbackup.daemon.timelimit``, used by
``jobs.run_job``, so the same for the CLI, the timers and the daemon). When it expires the run
is asked to stop (``app.stop``), and forced out of a blocked call as above with SIGALRM; it
ends as a failure, exit 7 (``TargetHung``) when it was waiting on its target, exit 3
(``JobTimedOut``) otherwise, or as a warning when the snapshot had already been committed
(only prune/verify were cut).

Logging is JSON lines on stdout (journald adds the timestamps it needs). systemd readiness
(``dmbackup.daemon.systemd``) goes over ``$NOTIFY_SOCKET`` (``READY=1``, ``RELOADING=1``,
``STOPPING=1``, ``STATUS=...``), so the unit can be ``Type=notify``; no extra dependency. While
a job runs, a ``systemd-inhibit --what=sleep:shutdown`` child holds off suspend (only under
systemd).

Time: every computation takes a ``clock`` (aware UTC datetimes), and the ``schedule`` library
is made to read the same clock (``dmbackup.daemon.schedclock``), so tests drive the daemon
through days in milliseconds.
Schedules are in the appliance's local time ("daily at 02:30" is 02:30 on the wall clock).

Size: this module is over the ~450 lines the project aims for, on purpose: it is one state
machine (the loop, its queue, the signal flags and the due-time logic that reads them), and
the parts that stand alone already live beside it (schedclock, daemonlock, timelimit, plug,
systemd).
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import threading
import traceback
from datetime import timedelta
from typing import Any, Callable

import schedule

from dmbackup.engine import hooks
from dmbackup.errors import DmError
from dmbackup import utctime
from dmbackup.daemon import daemonlock, plug
from dmbackup.daemon.daemonlock import daemon_running  # noqa: F401 (the udev unit's question)
from dmbackup.daemon.jobs import run_job
# schedule arithmetic and the daemon's memory live in schedule_spec (status shares them), the
# time limit in timelimit (jobs.run_job applies it); their names stay importable from here
from dmbackup.daemon.schedule_spec import (SchedulerState, is_overdue, needs_catch_up, next_due,  # noqa: F401
                                           overdue_reference, parse_schedule, previous_due, timer_oncalendar)
from dmbackup.daemon.timelimit import job_time_limit  # noqa: F401
from dmbackup.daemon.schedclock import Clock, add_to_schedule, schedule_clock
from dmbackup.daemon.systemd import Inhibitor, sd_notify
from dmbackup.system.stopping import STOP_GRACE, Kicker

_Inhibitor = Inhibitor           # its name here before daemon/systemd.py (tests/security/test_local_childenv.py)
MAX_SLEEP = 60.0                 # seconds; the loop re-checks at least this often

# --- the daemon -------------------------------------------------------------------------------

# `dmbackup daemon` exits with this after SIGUSR2, between jobs; dmbackup.service restarts it.
EXIT_RESTART = 75

Runner = Callable[..., Any]      # runner(app, job_name, *, clock, trigger) -> JobResult-like


def _default_runner(app, job_name, *, clock, trigger):
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
        self.restarting = False                # SIGUSR2: exit with EXIT_RESTART between jobs
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
        self._lockfile = daemonlock.take(self.app.config.state_dir)

    # --- USB ---
    def _start_usb(self) -> None:
        jobs = plug.plug_jobs(self.app.config, self.log)
        if not jobs or self.usb is False:
            return
        try:
            from dmbackup.system.usbwatch import watch
        except ImportError as exc:
            self.log.warning("usb_watch_unavailable", error=str(exc))
            return

        def match(disk) -> bool:
            return bool(plug.jobs_for_disk(jobs, disk))

        def on_disk(disk) -> None:
            for name in plug.jobs_for_disk(jobs, disk):
                self.log.info("usb_plugged", job=name, disk=disk.describe())
                self.enqueue(name, "usb")

        def run() -> None:
            try:
                watch(on_disk, match, self._usb_stop, bus="any")
            except Exception as exc:        # no netlink here, pyudev missing...: log, go on
                self.log.error("usb_watch_failed", error=f"{type(exc).__name__}: {exc}")

        self._usb_stop.clear()
        self._usb_thread = threading.Thread(target=run, name="dmbackup-usb-watch", daemon=True)
        self._usb_thread.start()
        self.log.info("usb_watch_started", jobs=[j.name for j, _ in jobs])

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

    def request_restart(self) -> None:
        self.restarting = True
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
        while not self.stopping and not self.restarting:
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
        inhibitor = Inhibitor(f"dmbackup job {name}") if self.inhibit else None
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

        def on_usr2(signum, frame):
            self._signals.append(("SIGUSR2", "restart"))
            self.request_restart()

        for sig, fn in ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop), (signal.SIGHUP, on_hup),
                        (signal.SIGUSR2, on_usr2)):
            self._old_handlers[sig] = signal.signal(sig, fn)

    def restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()

    def run(self, *, install_signals: bool = True) -> int:
        """Start, loop until stopped, shut down; returns the exit code (0, or EXIT_RESTART)."""
        if install_signals and threading.current_thread() is threading.main_thread():
            self.install_signal_handlers()
        try:
            self.start()
            while not self.stopping:
                self.tick()
                if self.stopping or self.restarting:
                    break
                self._wake.wait(self._sleep_seconds())
                self._wake.clear()
        finally:
            self.shutdown()
        return EXIT_RESTART if self.restarting and not self.stopping else 0

    def shutdown(self) -> None:
        if self._kicker is not None:
            self._kicker.cancel()       # before the handlers are restored: no late signal
            self._kicker = None
        self._log_signals()
        sd_notify("STOPPING=1")
        self._stop_usb()
        self.log.info("daemon_stopped", pending=[n for n, _ in self.queue],
                      restart=self.restarting and not self.stopping)
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None
        self.restore_signal_handlers()


def run_daemon(app, *, clock: Clock = utctime.utc_now, runner: Runner | None = None,
               log_to_stdout: bool = True, install_signals: bool = True, **kw) -> int:
    """``dmbackup daemon``: run until SIGTERM/SIGINT; returns the exit code.

    Raises ``Locked`` (exit 5) when another daemon holds ``<state_dir>/daemon.lock``.
    """
    if log_to_stdout and hasattr(app.log, "stream"):
        app.log.stream = sys.stdout
    return Daemon(app, clock=clock, runner=runner, **kw).run(install_signals=install_signals)


__all__ = ["Daemon", "run_daemon", "previous_due", "next_due", "is_overdue", "needs_catch_up",
           "overdue_reference", "sd_notify", "add_to_schedule", "schedule_clock", "timer_oncalendar",
           "SchedulerState", "daemon_running", "job_time_limit", "parse_schedule", "EXIT_RESTART"]
