"""An internal error (a bug) is exit 70 (issue 13, item 18): never 1 ("done with warnings",
which a unit counts as success), never a Python traceback on the administrator's terminal;
the traceback goes to the log and to a crash report in the state directory.

The bug is forced in a real run: the real CLI runs as a subprocess (``python -c``) with one
engine function replaced by one that raises, the way a real bug would surface, while the
config, lock, state, hooks and logging are all the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.world import ROOT, World

FORCED = "forced-bug-4711"
RUN_WITH_A_BUG = f"""
import sys
import dmbackup.engine as engine
def backup(*args, **kwargs):
    raise KeyError({FORCED!r})
engine.backup = backup
from dmbackup.cli.main import main
sys.argv = ["dmbackup"] + sys.argv[1:]
main()
"""


def run_buggy(w: World, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", RUN_WITH_A_BUG, "--config", w.config, *args],
                          capture_output=True, text=True, env=env, timeout=300)


def small_world(tmp_path) -> World:
    w = World(tmp_path)
    md = os.path.join(w.store, "example.it", "mario", "Maildir", "cur")
    os.makedirs(md)
    with open(os.path.join(md, "1.M1P1.mail:2,S"), "wb") as f:
        f.write(b"Subject: x\r\n\r\ny\r\n")
    w.write_config('[jobs.nightly]\nwhat = "mail"\ntarget = "local"\n')
    w.ok("init", "local")
    return w


def assert_no_traceback_for_a_person(p: subprocess.CompletedProcess) -> str:
    for line in p.stderr.splitlines() + p.stdout.splitlines():
        assert not line.startswith("Traceback"), p.stderr
        assert not line.startswith('  File "'), p.stderr
    human = [ln for ln in p.stderr.splitlines() if not ln.startswith("{")]
    assert len(human) == 1, p.stderr
    assert human[0].startswith("dmbackup: internal error"), human
    return human[0]


def logged_tracebacks(p: subprocess.CompletedProcess) -> list[str]:
    out = []
    for line in p.stderr.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("traceback"):
                out.append(rec["traceback"])
    return out


def test_a_bug_in_an_ad_hoc_backup_exits_70_with_the_traceback_in_the_log(tmp_path):
    w = small_world(tmp_path)
    p = run_buggy(w, "backup", "--target", "local")
    assert p.returncode == 70, (p.returncode, p.stderr)
    line = assert_no_traceback_for_a_person(p)
    assert "KeyError" in line and "report" in line
    tbs = logged_tracebacks(p)
    assert any("Traceback (most recent call last)" in tb and FORCED in tb for tb in tbs), p.stderr
    # a crash report in the state directory keeps it too (a terminal gets no log lines)
    reports = [os.path.join(w.state, "crash", n) for n in os.listdir(os.path.join(w.state, "crash"))]
    assert len(reports) == 1 and reports[0] in line
    with open(reports[0]) as f:
        assert FORCED in f.read()
    assert stat_mode(reports[0]) & 0o077 == 0
    # nothing was committed, and the lock is not left behind for the next run
    assert not w.chain_files(".catalog")
    assert w.run("backup", "--target", "local").code == 0


def test_a_bug_in_a_job_is_exit_70_and_never_a_success(tmp_path):
    w = small_world(tmp_path)
    p = run_buggy(w, "backup", "nightly")
    assert p.returncode == 70, (p.returncode, p.stderr)
    assert_no_traceback_for_a_person(p)
    assert any(FORCED in tb for tb in logged_tracebacks(p)), p.stderr
    r = w.run("status", "--json")
    job = json.loads(r.out)["jobs"][0]
    assert job["last_run"]["status"] == "failed" and job["last_success"] is None, job
    assert r.code == 1


def test_a_bug_on_a_terminal_with_quiet_still_leaves_a_crash_report(tmp_path):
    """--quiet (and a terminal) writes no log lines: the crash report is then the only record."""
    w = small_world(tmp_path)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", RUN_WITH_A_BUG, "--config", w.config, "--quiet",
                        "backup", "--target", "local"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 70, p.stderr
    line = assert_no_traceback_for_a_person(p)
    [name] = os.listdir(os.path.join(w.state, "crash"))
    assert name in line


def stat_mode(path: str) -> int:
    return os.stat(path).st_mode & 0o7777
