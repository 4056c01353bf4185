"""A stuck run always ends (issue 13, item 8): ``job_timeout`` and SIGTERM reach a run that is
blocked inside a system call.

The stuck run is real: a private smbd that accepted the connection and then froze (SIGSTOP),
with the SMB target's own timeout set to a day, so that only dmbackup's job-level limit can end
the wait. Before this, SIGTERM only set a flag that the engine checks between files, and a run
waiting on such a server waited for the whole receive timeout (hours); ``systemctl stop`` then
had to SIGKILL it, with no post hooks, no record and no mail.

- ``job_timeout = "3s"``: the run ends by itself, exit 7 (it was waiting on its target), one
  line that names the job and job_timeout, no traceback, recorded as failed in ``status``.
- SIGTERM to ``dmbackup backup JOB`` (what ``systemctl stop`` does): exit 130, "interrupted",
  recorded as interrupted, and the post hooks still run.
- SIGTERM to ``dmbackup daemon`` while its job is stuck: the daemon exits 0; a job that hit
  its job_timeout earlier left the daemon running and able to run again.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time

import pytest

from tests.fixtures.smbd import SmbServer
from tests.world import World

GUARD = 120          # seconds: only a guard against a hang, never an assertion about speed


def smb_job_world(tmp_path, srv: SmbServer, job_extra: str = "") -> World:
    w = World(tmp_path)
    md = os.path.join(w.store, "example.it", "mario", "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(md, sub))
    with open(os.path.join(md, "cur", "1700000000.M1P1.mail:2,S"), "wb") as f:
        f.write(b"Subject: x\r\nMessage-ID: <1@t>\r\n\r\nbody\r\n")
    w.write_config(f'[jobs.nightly]\nwhat = "mail"\ntarget = "nas"\n{job_extra}', targets=f"""[targets.nas]
type = "smb"
server = "{srv.host}"
port = {srv.port}
share = "{srv.share}"
username = "{srv.username}"
password_file = "{srv.password_file}"
timeout = 86400
""")
    # a post hook that records that it ran, and with which status (teardown must happen)
    post = os.path.join(w.tmp, "hooks", "post-backup.d")
    os.makedirs(post)
    with open(os.path.join(post, "10-record"), "w") as f:
        f.write(f'#!/bin/sh\necho "$DMBACKUP_STATUS" >> {w.tmp}/post-hook-ran\n')
    os.chmod(os.path.join(post, "10-record"), 0o755)
    r = w.sub("init", "nas")
    assert r.code == 0, r.err
    return w


def human_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("dmbackup:")]
    assert len(lines) == 1, err
    return lines[0]


def last_run(w: World) -> dict:
    with open(os.path.join(w.state, "runs.json")) as f:
        return json.load(f)["nightly"]["last_run"]


class Lines:
    """Lines of a child's output stream, read by a thread (a read never blocks the test)."""

    def __init__(self, stream):
        self.q: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.q.put(line)
        self.q.put(None)

    def wait_for(self, event: str) -> list[str]:
        """Every line up to the one that logs ``event``."""
        deadline = time.monotonic() + GUARD
        start = len(self.seen)
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            if f'"event": "{event}"' in line:
                return self.seen[start:]
        raise AssertionError(f"{event} never logged: {self.seen}")

    def rest(self) -> str:
        while True:
            line = self.q.get(timeout=GUARD)
            if line is None:
                return "".join(self.seen)
            self.seen.append(line)


def test_job_timeout_ends_a_run_stuck_on_a_silent_server(smbd, tmp_path):
    w = smb_job_world(tmp_path, smbd, 'job_timeout = "3s"\n')
    smbd.pause()
    try:
        r = w.sub("backup", "nightly", timeout=GUARD)
    finally:
        smbd.resume()
    assert r.code == 7, r.err
    line = human_line(r.err)
    assert "nightly" in line and "job_timeout (3s)" in line and "'nas'" in line, line
    run = last_run(w)
    assert run["status"] == "failed" and run["exit_code"] == 7, run
    with open(os.path.join(w.tmp, "post-hook-ran")) as f:
        assert f.read().split() == ["failed"]
    # the server answers again: the next run works, nothing was left locked
    r = w.sub("backup", "nightly", timeout=GUARD)
    assert r.code == 0, r.err


def test_sigterm_ends_a_job_stuck_on_a_silent_server(smbd, tmp_path):
    w = smb_job_world(tmp_path, smbd)
    smbd.pause()
    try:
        p = w.spawn("backup", "nightly")
        log = Lines(p.stderr)          # not a terminal: JSON log lines on stderr
        log.wait_for("job_start")
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=GUARD)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            pytest.fail("SIGTERM did not end a run stuck in a system call")
        err = log.rest()
    finally:
        smbd.resume()
    assert p.returncode == 130, err
    assert "interrupted" in human_line(err)
    assert last_run(w)["status"] == "interrupted"
    with open(os.path.join(w.tmp, "post-hook-ran")) as f:
        assert f.read().split() == ["interrupted"]


def test_the_same_app_runs_again_after_a_job_timeout(smbd, tmp_path):
    """The daemon keeps one App across runs: the stop request a timeout made must not leak
    into the next run (in-process, in the main thread, as the daemon runs jobs)."""
    from dmbackup.context import App
    from dmbackup.config import load
    from dmbackup.daemon.jobs import run_job
    from dmbackup.log import Logger

    w = smb_job_world(tmp_path, smbd, 'job_timeout = "2s"\n')
    app = App(load(w.config), log=Logger(None))
    smbd.pause()
    try:
        first = run_job(app, "nightly", send_notifications=False)
    finally:
        smbd.resume()
    assert (first.status, first.exit_code) == ("failed", 7), first.error
    assert not app.stop.is_set()
    second = run_job(app, "nightly", send_notifications=False)
    assert (second.status, second.exit_code) == ("ok", 0), second.error


def test_daemon_stops_on_sigterm_while_its_job_is_stuck(smbd, tmp_path):
    w = smb_job_world(tmp_path, smbd, 'schedule = "every 1 minutes"\n')
    with open(os.path.join(w.state, "scheduler.json"), "w") as f:     # overdue: caught up at start
        json.dump({"jobs": {"nightly": {"first_seen": "2020-01-01T00:00:00Z"}}}, f)
    smbd.pause()
    try:
        p = w.spawn("daemon")
        log, errors = Lines(p.stdout), Lines(p.stderr)
        log.wait_for("job_start")
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=GUARD)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            pytest.fail("the daemon did not stop on SIGTERM while its job was stuck")
        out, err = log.rest(), errors.rest()
    finally:
        smbd.resume()
    assert p.returncode == 0, err
    assert "Traceback" not in out + err
    assert '"event": "job_forced_stop"' in out, out
    assert last_run(w)["status"] == "interrupted"
    with open(os.path.join(w.tmp, "post-hook-ran")) as f:
        assert f.read().split() == ["interrupted"]


def test_daemon_goes_on_after_a_job_timeout_and_stops_on_sigterm(smbd, tmp_path):
    w = smb_job_world(tmp_path, smbd, 'schedule = "every 1 minutes"\njob_timeout = "2s"\n')
    # the daemon has known this job for long: it is overdue, so it is caught up at start
    with open(os.path.join(w.state, "scheduler.json"), "w") as f:
        json.dump({"jobs": {"nightly": {"first_seen": "2020-01-01T00:00:00Z"}}}, f)
    smbd.pause()
    try:
        p = w.spawn("daemon")
        log = Lines(p.stdout)          # the daemon logs JSON lines on stdout
        errors = Lines(p.stderr)
        log.wait_for("job_timeout")
        seen = log.wait_for("job_done")
        assert any('"status": "failed"' in ln and '"exit_code": 7' in ln for ln in seen), seen
        assert p.poll() is None, "the daemon must go on after a job timed out"
        deadline = time.monotonic() + GUARD            # job_done is logged just before the record
        while not os.path.exists(os.path.join(w.state, "runs.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last_run(w)["exit_code"] == 7
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=GUARD)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            pytest.fail("the daemon did not stop on SIGTERM")
        out, err = log.rest(), errors.rest()
    finally:
        smbd.resume()
    assert p.returncode == 0, err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("value, seconds", [('"6h"', 21600), ('"90m"', 5400), ("45", 45), ('"1h30m"', 5400)])
def test_job_timeout_values(tmp_path, value, seconds):
    from dmbackup.config import load

    w = World(tmp_path)
    os.makedirs(w.store)
    w.write_config(f'[jobs.nightly]\nwhat = "mail"\ntarget = "local"\njob_timeout = {value}\n')
    assert load(w.config).job("nightly").job_timeout == seconds


@pytest.mark.parametrize("value", ['"soon"', "0", '"-1h"', "true", '"6 hours"'])
def test_a_bad_job_timeout_is_a_config_error_naming_the_field(tmp_path, value):
    w = World(tmp_path)
    os.makedirs(w.store)
    w.write_config(f'[jobs.nightly]\nwhat = "mail"\ntarget = "local"\njob_timeout = {value}\n')
    r = w.run("check-config")
    assert r.code == 2
    assert "jobs.nightly.job_timeout" in human_line(r.err)
    assert w.run("backup", "nightly").code == 2


def test_the_default_job_timeout_is_six_hours(tmp_path):
    from dmbackup.config import load

    w = World(tmp_path)
    os.makedirs(w.store)
    w.write_config('[jobs.nightly]\nwhat = "mail"\ntarget = "local"\n')
    assert load(w.config).job("nightly").job_timeout == 6 * 3600
