"""SIGUSR2: the daemon restarts between jobs (the Debian package's postinst sends it after an
upgrade; dmbackup.service restarts the daemon on exit status 75, RestartForceExitStatus=75).

Real signals to this process with the daemon's handlers installed, a recording runner and an
injected clock; tests/packaging/test_nspawn.py does the same through apt-get and systemd.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from datetime import datetime, timezone

from dmbackup.config import load
from dmbackup.context import App
from dmbackup.daemon.scheduler import EXIT_RESTART, Daemon
from dmbackup.log import Logger
from tests.world import base_config

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=timezone.utc)


def make_app(tmp_path) -> App:
    toml = base_config(tmp_path) + "".join(
        f'[jobs.{n}]\nwhat = "mail"\ntarget = "local"\n' for n in ("first", "second"))
    (tmp_path / "dmbackup.toml").write_text(toml)
    return App(load(str(tmp_path / "dmbackup.toml")), log=Logger(None, keep=500))


def events(app: App) -> list[dict]:
    return [json.loads(x) for x in app.log.recent]


def test_sigusr2_during_a_job_lets_it_finish_then_exits_for_a_restart(tmp_path):
    app = make_app(tmp_path)
    ran = []

    def runner(app_, name, *, clock, trigger):
        if name == "first":
            os.kill(os.getpid(), signal.SIGUSR2)     # arrives mid-job (handler: main thread)
        ran.append((name, app_.stop.is_set()))

    before = signal.getsignal(signal.SIGUSR2)
    d = Daemon(app, clock=lambda: NOW, runner=runner, usb=False, inhibit=False)
    d.enqueue("first", "test")
    d.enqueue("second", "test")
    assert d.run(install_signals=True) == EXIT_RESTART
    assert ran == [("first", False)], "the job ran to its end, not stopped; no second job started"
    assert list(d.queue) == [("second", "test")]
    ev = events(app)
    assert {"event": "signal", "signal": "SIGUSR2", "action": "restart"}.items() <= \
        next(e for e in ev if e["event"] == "signal").items()
    stopped = next(e for e in ev if e["event"] == "daemon_stopped")
    assert stopped["restart"] is True and stopped["pending"] == ["second"]
    assert signal.getsignal(signal.SIGUSR2) is before, "handlers are restored at shutdown"


def test_sigusr2_when_idle_exits_at_once(tmp_path):
    app = make_app(tmp_path)
    ran = []
    d = Daemon(app, clock=lambda: NOW, runner=lambda *a, **k: ran.append(a[1]), usb=False, inhibit=False)
    d.install_signal_handlers()                      # before the signal can arrive
    kick = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR2))
    kick.start()
    try:
        assert d.run(install_signals=False) == EXIT_RESTART    # woken from its idle wait
    finally:
        kick.cancel()
    assert ran == [] and not d.stopping


def test_a_stop_wins_over_a_restart(tmp_path):
    """Both asked (systemctl stop or restart is then in charge): exit 0, not 75."""
    d = Daemon(make_app(tmp_path), clock=lambda: NOW, runner=lambda *a, **k: None, usb=False, inhibit=False)
    d.request_restart()
    d.request_stop()
    assert d.run(install_signals=False) == 0
