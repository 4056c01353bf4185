"""The daemon core with an injected clock: days of schedule run in milliseconds.

Pure timing logic (jobs at their times, one at a time, nothing dropped) uses a counting
runner; catch-up, SIGHUP and SIGTERM use the real ``jobs.run_job`` and the real engine on a
dir target, and the SIGHUP/SIGTERM tests deliver real signals to this process with the
daemon's handlers installed. No test sleeps for scheduled time and none asserts durations.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import schedule

from tests.world import base_config
from dmbackup import engine
from dmbackup.daemon import scheduler
from dmbackup.context import App
from dmbackup.config import load
from dmbackup.errors import Locked
from dmbackup.daemon.jobs import run_job
from dmbackup.log import Logger
from dmbackup.daemon.schedule_spec import parse_schedule
from dmbackup.daemon.scheduler import Daemon, next_due, previous_due

UTC = timezone.utc
MONDAY = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)     # a Monday


@pytest.fixture(autouse=True)
def _utc(utc_local_time):
    """Schedules are local time: these tests expect plain UTC (fixture in tests/conftest.py)."""


class FakeClock:
    def __init__(self, t: datetime):
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw) -> None:
        self.t += timedelta(**kw)


JOBS_DEFAULT = """
[jobs.nightly]
what = "mail"
target = "local"
schedule = "daily at 02:30"
"""


def write_config(tmp_path: Path, jobs: str = JOBS_DEFAULT, extra: str = "") -> Path:
    toml = base_config(tmp_path) + textwrap.dedent(extra) + textwrap.dedent(jobs)
    path = tmp_path / "dmbackup.toml"
    tmp = tmp_path / "dmbackup.toml.new"
    tmp.write_text(toml)
    os.replace(tmp, path)
    return path


def make_app(tmp_path: Path, jobs: str = JOBS_DEFAULT, extra: str = "") -> App:
    return App(load(str(write_config(tmp_path, jobs, extra))), log=Logger(None, keep=2000))


def make_maildir(root: Path, n: int, *, start: int = 0, size: int = 600) -> None:
    """A small Dovecot-style Maildir tree with ``n`` messages spread over two users and folders."""
    for i in range(start, start + n):
        user = f"user{i % 2}"
        folder = "" if i % 3 else ".Sent"
        d = root / "example.test" / user / "Maildir" / folder / ("cur" if i % 4 else "new")
        d.mkdir(parents=True, exist_ok=True)
        body = (f"From: a@example.test\nSubject: message {i}\nMessage-ID: <{i}@example.test>\n\n"
                + ("x" * 70 + "\n") * (size // 71 + (i % 5))).encode()
        name = f"{1700000000 + i}.M{i}P1.mail.test,S={len(body)}" + (":2,S" if i % 4 else "")
        (d / name).write_bytes(body)


class CountingRunner:
    """Records (job, trigger, start, end) and checks that runs never overlap."""

    def __init__(self, clock: FakeClock, durations: dict[str, timedelta] | None = None, during=None):
        self.clock, self.durations, self.during = clock, durations or {}, during
        self.runs: list[tuple[str, str, datetime, datetime]] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, app, name, *, clock, trigger):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        start = clock()
        if self.during:
            self.during(name)
        self.clock.t += self.durations.get(name, timedelta(0))
        with self._lock:
            self.active -= 1
        self.runs.append((name, trigger, start, clock()))
        app.state.record_run(name, {"time": start.isoformat().replace("+00:00", "Z"),
                                    "status": "ok", "exit_code": 0})
        return None


def run_until(d: Daemon, clock: FakeClock, until: datetime, step=timedelta(minutes=10)) -> None:
    while clock.t < until:
        clock.t = min(clock.t + step, until)
        d.tick()


# --- due-time arithmetic -----------------------------------------------------------------------

@pytest.mark.parametrize("text", ["daily at 02:30", "daily", "weekly on monday at 06:00",
                                  "weekly on sunday at 23:59", "every 6 hours", "every 90 minutes"])
def test_next_due_agrees_with_the_schedule_library(text):
    spec = parse_schedule(text)
    for now in (MONDAY, MONDAY + timedelta(hours=2, minutes=29), MONDAY + timedelta(hours=2, minutes=31),
                MONDAY + timedelta(days=3, hours=7, minutes=1), MONDAY + timedelta(days=6, hours=23, minutes=59, seconds=30)):
        clock = FakeClock(now)
        s = schedule.Scheduler()
        with scheduler.schedule_clock(clock):
            job = scheduler.add_to_schedule(s, spec, lambda: None)
        lib = job.next_run.replace(tzinfo=UTC)
        ours = next_due(spec, now, last_run=now) if spec.kind == "every" else next_due(spec, now)
        assert ours == lib, (text, now)
        prev = previous_due(spec, now)
        assert prev <= now
        if spec.kind != "every":
            assert next_due(spec, prev - timedelta(seconds=1)) == prev
            assert (lib - prev).total_seconds() == spec.interval_seconds


@pytest.mark.skipif(not Path("/usr/share/zoneinfo/Europe/Rome").exists(), reason="tzdata missing")
def test_daylight_saving_nights_run_once_each(tmp_path):
    """02:30 does not exist on the spring-forward night and happens twice in autumn."""
    os.environ["TZ"] = "Europe/Rome"
    time.tzset()
    spec = parse_schedule("daily at 02:30")
    for start, expected in (
            (datetime(2026, 3, 28, 12, 0, tzinfo=UTC), [datetime(2026, 3, 29, 1, 0, tzinfo=UTC),     # 03:00 CEST
                                                        datetime(2026, 3, 30, 0, 30, tzinfo=UTC)]),
            (datetime(2026, 10, 24, 12, 0, tzinfo=UTC), [datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # first 02:30
                                                         datetime(2026, 10, 26, 1, 30, tzinfo=UTC)])):
        clock = FakeClock(start)
        runner = CountingRunner(clock)
        (tmp_path / start.strftime("%m")).mkdir()
        app = make_app(tmp_path / start.strftime("%m"))
        d = Daemon(app, clock=clock, runner=runner, usb=False, inhibit=False)
        d.start()
        try:
            assert next_due(spec, start) == expected[0]
            run_until(d, clock, start + timedelta(days=2))
        finally:
            d.shutdown()
        assert [r[2] for r in runner.runs] == expected


# --- timing logic (counting runner) ------------------------------------------------------------

def test_jobs_run_at_their_times(tmp_path):
    app = make_app(tmp_path, """
        [jobs.nightly]
        target = "local"
        schedule = "daily at 02:30"
        [jobs.weekly]
        target = "local"
        schedule = "weekly on wednesday at 06:00"
        [jobs.sixhourly]
        target = "local"
        schedule = "every 6 hours"
    """)
    clock = FakeClock(MONDAY)
    runner = CountingRunner(clock)
    d = Daemon(app, clock=clock, runner=runner, usb=False, inhibit=False)
    d.start()
    try:
        run_until(d, clock, MONDAY + timedelta(days=7))
    finally:
        d.shutdown()
    by = {}
    for name, trigger, start, _end in runner.runs:
        assert trigger == "schedule"
        by.setdefault(name, []).append(start)
    assert by["nightly"] == [MONDAY + timedelta(days=i, hours=2, minutes=30) for i in range(7)]
    assert by["weekly"] == [MONDAY + timedelta(days=2, hours=6)]
    assert by["sixhourly"] == [MONDAY + timedelta(hours=6 * i) for i in range(1, 29)]
    assert runner.max_active == 1


def test_one_job_at_a_time_and_a_due_job_waits(tmp_path):
    app = make_app(tmp_path, """
        [jobs.long]
        target = "local"
        schedule = "daily at 02:00"
        [jobs.short]
        target = "local"
        schedule = "daily at 02:30"
        [jobs.manual]
        target = "local"
    """)
    clock = FakeClock(MONDAY)
    d = None

    def during(name):
        if name == "long":                 # a plug-in arrives from another thread meanwhile
            t = threading.Thread(target=d.enqueue, args=("manual", "usb"))
            t.start()
            t.join()
            assert d.enqueue("manual", "usb") is False, "a waiting job is not queued twice"

    runner = CountingRunner(clock, {"long": timedelta(minutes=90), "short": timedelta(minutes=5)}, during)
    d = Daemon(app, clock=clock, runner=runner, usb=False, inhibit=False)
    d.start()
    try:
        run_until(d, clock, MONDAY + timedelta(hours=5))
    finally:
        d.shutdown()
    assert [(n, t) for n, t, _s, _e in runner.runs] == [("long", "schedule"), ("manual", "usb"), ("short", "schedule")]
    long_end = runner.runs[0][3]
    assert runner.runs[1][2] >= long_end and runner.runs[2][2] >= long_end
    assert runner.max_active == 1


def test_usb_plug_in_queues_on_plug_jobs(tmp_path, monkeypatch):
    from dmbackup.system import usbwatch as watch_mod
    from dmbackup.system.usbdetect import UsbDisk

    app = make_app(tmp_path, """
        [jobs.rotate]
        target = "usb1"
        on_plug = true
        [jobs.nightly]
        target = "local"
        schedule = "daily at 02:30"
    """, extra="""
        [targets.usb1]
        type = "usb"
        label = "DMBACKUP"
    """)
    seen = threading.Event()

    def fake_watch(on_disk, match, stop_event, **kw):
        # What the real watcher (tested under umockdev by its own suite) hands the daemon.
        ours = UsbDisk("/dev/sdz1", "ext4", "1111-2222", "DMBACKUP", bus="usb")
        other = UsbDisk("/dev/sdy1", "ext4", "3333-4444", "PHOTOS", bus="usb")
        for disk in (other, ours):
            if match(disk):
                on_disk(disk)
        seen.set()
        stop_event.wait()

    monkeypatch.setattr(watch_mod, "watch", fake_watch)
    clock = FakeClock(MONDAY)
    runner = CountingRunner(clock)
    d = Daemon(app, clock=clock, runner=runner, usb=True, inhibit=False)
    d.start()
    try:
        assert seen.wait(10)
        d.tick()
    finally:
        d.shutdown()
    assert [(n, t) for n, t, _s, _e in runner.runs] == [("rotate", "usb")]


def test_second_daemon_is_refused(tmp_path):
    app = make_app(tmp_path)
    d1 = Daemon(app, clock=FakeClock(MONDAY), runner=lambda *a, **k: None, usb=False, inhibit=False)
    d1.start()
    try:
        d2 = Daemon(app, clock=FakeClock(MONDAY), runner=lambda *a, **k: None, usb=False, inhibit=False)
        with pytest.raises(Locked, match=f"pid {os.getpid()}"):
            d2.start()
    finally:
        d1.shutdown()


# --- with the real run_job and engine ----------------------------------------------------------

def real_app(tmp_path: Path, jobs: str = JOBS_DEFAULT) -> App:
    app = make_app(tmp_path, jobs)
    make_maildir(tmp_path / "vmail", 40)
    engine.init_repo(app, "local")
    return app


def runs_of(app: App, job: str) -> dict:
    return app.state.runs().get(job, {})


def test_missed_run_is_caught_up_once(tmp_path):
    app = real_app(tmp_path, JOBS_DEFAULT + """
        [jobs.newjob]
        target = "local"
        schedule = "daily at 03:00"
    """)
    # The daemon knew both jobs for a while, then the machine was off for three days.
    scheduler.SchedulerState(app.config.state_dir).save({"jobs": {
        "nightly": {"first_seen": "2026-10-01T00:00:00Z"}}})
    app.state.record_run("nightly", {"time": "2026-11-02T02:30:00Z", "status": "ok", "exit_code": 0})
    clock = FakeClock(datetime(2026, 11, 5, 12, 0, tzinfo=UTC))
    d = Daemon(app, clock=clock, usb=False, inhibit=False)
    d.start()
    try:
        assert list(d.queue) == [("nightly", "catch-up")], "one catch-up, and none for a job never seen"
        assert d.tick() == 1
        assert runs_of(app, "nightly")["last_run"]["trigger"] == "catch-up"
        assert runs_of(app, "nightly")["last_run"]["status"] == "ok"
        run_until(d, clock, datetime(2026, 11, 6, 2, 0, tzinfo=UTC), step=timedelta(minutes=30))
        assert "newjob" not in app.state.runs()
    finally:
        d.shutdown()
    # a restart the same day catches nothing up
    d = Daemon(app, clock=clock, usb=False, inhibit=False)
    d.start()
    try:
        assert list(d.queue) == []
        run_until(d, clock, datetime(2026, 11, 6, 3, 30, tzinfo=UTC), step=timedelta(minutes=30))
        assert runs_of(app, "nightly")["last_run"]["time"] == "2026-11-06T02:30:00Z"
        assert runs_of(app, "nightly")["last_run"]["trigger"] == "schedule"
        assert runs_of(app, "newjob")["last_run"]["time"] == "2026-11-06T03:00:00Z"
    finally:
        d.shutdown()
    snaps = engine.snapshots(app, "local")
    assert len([s for s in snaps if s.kind in ("full", "incremental")]) == 3


def test_interrupted_run_does_not_count_for_catch_up(tmp_path):
    app = make_app(tmp_path)
    scheduler.SchedulerState(app.config.state_dir).save({"jobs": {"nightly": {"first_seen": "2026-10-01T00:00:00Z"}}})
    app.state.record_run("nightly", {"time": "2026-11-03T02:30:00Z", "status": "ok", "exit_code": 0})
    app.state.record_run("nightly", {"time": "2026-11-04T02:30:00Z", "status": "interrupted", "exit_code": 130})
    d = Daemon(app, clock=FakeClock(datetime(2026, 11, 4, 2, 40, tzinfo=UTC)),
               runner=lambda *a, **k: None, usb=False, inhibit=False)
    d.start()
    try:
        assert list(d.queue) == [("nightly", "catch-up")]
    finally:
        d.shutdown()


def test_sighup_picks_up_a_changed_schedule(tmp_path):
    app = real_app(tmp_path)
    clock = FakeClock(MONDAY)
    before = signal.getsignal(signal.SIGHUP)
    d = Daemon(app, clock=clock, usb=False, inhibit=False)
    d.install_signal_handlers()
    try:
        d.start()
        run_until(d, clock, MONDAY + timedelta(hours=1))
        write_config(tmp_path, JOBS_DEFAULT.replace("02:30", "04:00"))
        os.kill(os.getpid(), signal.SIGHUP)          # the handler runs in this (main) thread
        d.tick()
        assert d.app.config.jobs["nightly"].schedule == "daily at 04:00"
        run_until(d, clock, MONDAY + timedelta(hours=3))
        assert "nightly" not in d.app.state.runs(), "the old 02:30 time is gone"
        run_until(d, clock, MONDAY + timedelta(hours=4, minutes=30))
        assert runs_of(d.app, "nightly")["last_run"]["time"] == "2026-11-02T04:00:00Z"
        assert runs_of(d.app, "nightly")["last_run"]["status"] == "ok"
        # a broken file on SIGHUP: logged, the running config stays
        (tmp_path / "dmbackup.toml").write_text("this is [not toml")
        os.kill(os.getpid(), signal.SIGHUP)
        d.tick()
        assert d.app.config.jobs["nightly"].schedule == "daily at 04:00"
        assert any('"reload_failed"' in x for x in d.app.log.recent)
    finally:
        d.shutdown()
    assert signal.getsignal(signal.SIGHUP) is before, "handlers are restored at shutdown"


def test_sigterm_mid_job_stops_cleanly_and_the_repository_verifies(tmp_path, monkeypatch):
    app = real_app(tmp_path)
    first = run_job(app, "nightly")
    assert first.status == "ok", first.error
    make_maildir(tmp_path / "vmail", 400, start=1000)       # the next run has work to do
    sock_path = Path(tempfile.mkdtemp(dir="/tmp")) / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    scheduler.SchedulerState(app.config.state_dir).save({"jobs": {"nightly": {"first_seen": "2026-10-01T00:00:00Z"}}})

    files_seen = []

    def sigterm_after_some_files(progress):
        files_seen.append(progress.files)
        if progress.files == 120:
            os.kill(os.getpid(), signal.SIGTERM)         # handled by the daemon's handler

    app.progress.listeners.append(sigterm_after_some_files)
    clock = FakeClock(datetime.now(UTC) + timedelta(days=3))   # the last run is days old: catch-up
    d = Daemon(app, clock=clock, usb=False, inhibit=False)
    assert d.run(install_signals=True) == 0                      # returns once stopped
    assert d.stopping and app.stop.is_set()
    result = d.runs[-1]
    assert result.status == "interrupted" and result.exit_code == 130
    assert 120 <= max(files_seen) < 400 + 40, "stopped in the middle of the scan"
    assert runs_of(app, "nightly")["last_run"]["status"] == "interrupted"

    messages = []
    sock.settimeout(0)
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    assert messages[0].startswith("READY=1")
    assert any(m.startswith("STATUS=running job nightly") for m in messages)
    assert messages[-1] == "STOPPING=1"

    # The repository is consistent: only the first snapshot exists and verifies with data.
    fresh = App(app.config, log=Logger(None))
    snaps = [s.id for s in engine.snapshots(fresh, "local") if s.kind in ("full", "incremental")]
    assert snaps == [first.snapshot_id]
    assert engine.verify(fresh, "local", read_data=True).exit_code == 0
    leftovers = [p for p in (tmp_path / "target").rglob("*") if ".tmp-" in p.name]
    again = run_job(fresh, "nightly")
    assert again.status == "ok", again.error
    assert engine.verify(fresh, "local", read_data=True).exit_code == 0
    assert not [p for p in (tmp_path / "target").rglob("*") if ".tmp-" in p.name], \
        f"the next run cleans temporaries up (there were {len(leftovers)})"
    sock.close()


def test_sd_notify_abstract_and_missing_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert scheduler.sd_notify("READY=1") is False
    name = f"dmbackup-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert scheduler.sd_notify("STATUS=hello") is True
        assert s.recv(100) == b"STATUS=hello"
    finally:
        s.close()


def test_state_file_is_json(tmp_path):
    app = make_app(tmp_path)
    d = Daemon(app, clock=FakeClock(MONDAY), runner=lambda *a, **k: None, usb=False, inhibit=False)
    d.start()
    d.shutdown()
    data = json.loads((Path(app.config.state_dir) / "scheduler.json").read_text())
    assert data["jobs"]["nightly"]["first_seen"] == "2026-11-02T00:00:00Z"


DAEMON_SCRIPT = """
import sys
from dmbackup.context import App
from dmbackup.config import load
from dmbackup.log import Logger
from dmbackup.daemon.scheduler import run_daemon
sys.exit(run_daemon(App(load(sys.argv[1]), log=Logger(None)), usb=False))
"""


def test_daemon_process_signals_stdout_and_notify_socket(tmp_path):
    """The daemon as its own process, real clock: READY, catch-up run, SIGHUP, SIGTERM."""
    import subprocess
    import sys

    app = real_app(tmp_path)
    scheduler.SchedulerState(app.config.state_dir).save({"jobs": {"nightly": {"first_seen": "2026-01-01T00:00:00Z"}}})
    sock_path = Path(tempfile.mkdtemp(dir="/tmp")) / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-c", DAEMON_SCRIPT, app.config.file], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    notes: list[str] = []

    def wait_note(prefix: str) -> str:
        while True:
            m = sock.recv(4096).decode()          # socket timeout bounds a hang
            notes.append(m)
            if m.startswith(prefix):
                return m

    try:
        wait_note("READY=1")
        wait_note("STATUS=idle")                  # the catch-up run is over
        assert runs_of(app, "nightly")["last_run"]["trigger"] == "catch-up"
        assert runs_of(app, "nightly")["last_run"]["status"] == "ok"
        write_config(tmp_path, JOBS_DEFAULT.replace("02:30", "05:45"))
        proc.send_signal(signal.SIGHUP)
        wait_note("RELOADING=1")
        wait_note("READY=1")
        proc.send_signal(signal.SIGTERM)
        wait_note("STOPPING=1")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        sock.close()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]      # every stdout line is JSON
    names = [r["event"] for r in records]
    for expected in ("job_scheduled", "catch_up", "daemon_ready", "job_start", "backup_done", "job_done",
                     "signal", "reloaded", "daemon_stopped"):
        assert expected in names, (expected, names)
    assert any(r["event"] == "job_scheduled" and r.get("schedule") == "daily at 05:45" for r in records)
    assert all({"time", "level", "event"} <= r.keys() for r in records)
