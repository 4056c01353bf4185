"""The Prometheus textfile (``[monitoring] textfile``): real jobs on a real ``dir`` target, the
file read back with prometheus_client's own text parser, and the documented names checked
against docs/status-json.md so the document cannot drift from the code."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.world import base_config
from dmbackup import engine
from dmbackup.daemon import monitoring
from dmbackup.context import App
from dmbackup.config import load
from dmbackup.daemon.jobs import run_job
from dmbackup.log import Logger
from dmbackup.daemon.scheduler import SchedulerState

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "status-json.md"
UTC = timezone.utc


@pytest.fixture(autouse=True)
def _utc(utc_local_time):
    """Schedules are local time: these tests expect plain UTC (fixture in tests/conftest.py)."""


def write_config(tmp_path: Path, textfile: str) -> str:
    mbox = tmp_path / "vmail" / "example.test" / "u" / "Maildir" / "cur"
    mbox.mkdir(parents=True)
    for i in range(5):
        (mbox / f"{1700000000 + i}.M{i}.mail.test:2,S").write_text(f"Subject: {i}\n\nbody {i}\n" * 50)
    toml = base_config(tmp_path) + textwrap.dedent(f"""
        [targets.gone]
        type = "dir"
        path = "{tmp_path}/unplugged"
        [jobs.nightly]
        target = "local"
        schedule = "daily at 02:30"
        [jobs.offsite]
        target = "gone"
        schedule = "weekly on sunday at 04:00"
        [jobs.stale]
        target = "local"
        schedule = "every 6 hours"
        [monitoring]
        textfile = "{textfile}"
    """)
    p = tmp_path / "dmbackup.toml"
    p.write_text(toml)
    return str(p)


def samples(path: str) -> dict:
    """{(metric name, frozenset of labels): value}, parsed by prometheus_client."""
    out = {}
    with open(path) as f:
        for fam in text_string_to_metric_families(f.read()):
            assert fam.type == "gauge" and fam.documentation, fam.name
            for s in fam.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def job(name, target):
    return frozenset({"job": name, "target": target}.items())


def documented_names() -> set[str]:
    text = DOC.read_text()
    m = re.search(r"## Prometheus textfile\n(.*?)(\n## |\Z)", text, re.S)
    assert m, "docs/status-json.md must have a '## Prometheus textfile' section"
    return set(re.findall(r"`(dmbackup_[a-z_]+)`", m.group(1)))


def test_documented_names_are_the_written_ones():
    assert documented_names() == set(monitoring.METRICS)


def test_textfile_after_jobs_and_status(tmp_path):
    prom_dir = tmp_path / "node-exporter"
    prom_dir.mkdir()
    prom = str(prom_dir / "dmbackup.prom")
    cfg_file = write_config(tmp_path, prom)
    app = App(load(cfg_file), log=Logger(None))
    engine.init_repo(app, "local")

    ok = run_job(app, "nightly")
    assert ok.status == "ok", ok.error
    s = samples(prom)
    lab = job("nightly", "local")
    assert s[("dmbackup_job_last_success_timestamp_seconds", lab)] == int(ok.started.timestamp())
    assert s[("dmbackup_job_last_run_timestamp_seconds", lab)] == int(ok.started.timestamp())
    assert s[("dmbackup_job_last_run_exit_code", lab)] == 0
    assert s[("dmbackup_job_last_run_duration_seconds", lab)] == int(ok.finished.timestamp()) - int(ok.started.timestamp())
    assert s[("dmbackup_job_last_run_stored_bytes", lab)] == ok.backup["stored_bytes"] > 0
    assert s[("dmbackup_job_overdue", lab)] == 0 and s[("dmbackup_job_failed", lab)] == 0
    assert s[("dmbackup_job_target_snapshots", lab)] == 1
    assert s[("dmbackup_target_snapshots", frozenset({"target": "local"}.items()))] == 1
    assert ("dmbackup_job_last_run_exit_code", job("stale", "local")) not in s     # never ran
    assert s[("dmbackup_job_overdue", job("stale", "local"))] == 0
    assert ("dmbackup_textfile_timestamp_seconds", frozenset()) in s
    assert stat.S_IMODE(os.stat(prom).st_mode) == 0o644
    assert os.listdir(prom_dir) == ["dmbackup.prom"]          # no temporary file left behind

    # a second run: a second snapshot; the failed job shows its exit code and no success
    assert run_job(app, "nightly").status == "ok"
    failed = run_job(app, "offsite")
    assert failed.status == "failed" and failed.exit_code == 7
    s = samples(prom)
    off = job("offsite", "gone")
    assert s[("dmbackup_job_last_run_exit_code", off)] == 7
    assert s[("dmbackup_job_failed", off)] == 1
    assert ("dmbackup_job_last_success_timestamp_seconds", off) not in s
    assert s[("dmbackup_target_snapshots", frozenset({"target": "local"}.items()))] == 2

    # "stale": the daemon has known it for three days and it never succeeded; `status` rewrites
    now = datetime.now(UTC)
    SchedulerState(app.config.state_dir).save(
        {"jobs": {"stale": {"first_seen": (now - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")}}})
    proc = subprocess.run([sys.executable, "-m", "dmbackup", "--config", cfg_file, "status"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr          # offsite failed, stale overdue: as before
    assert "warning" not in proc.stderr
    s = samples(prom)
    assert s[("dmbackup_job_overdue", job("stale", "local"))] == 1
    assert s[("dmbackup_job_overdue", lab)] == 0
    assert s[("dmbackup_target_snapshots", frozenset({"target": "local"}.items()))] == 2
    assert ("dmbackup_target_snapshots", frozenset({"target": "gone"}.items())) not in s   # never reached


def test_missing_directory_is_a_warning_not_a_failed_job(tmp_path):
    prom = str(tmp_path / "no-such-dir" / "dmbackup.prom")
    cfg_file = write_config(tmp_path, prom)
    app = App(load(cfg_file), log=Logger(None))
    engine.init_repo(app, "local")
    res = run_job(app, "nightly")
    assert res.status == "ok" and res.exit_code == 0, res.error
    assert not os.path.exists(os.path.dirname(prom))
    assert any("monitoring_textfile_failed" in line for line in app.log.recent)
    proc = subprocess.run([sys.executable, "-m", "dmbackup", "--config", cfg_file, "status"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert f"warning: monitoring.textfile {prom} not written" in proc.stderr


@pytest.mark.parametrize("value, why", [
    ('"dmbackup.prom"', "absolute path"),
    ("42", "a string"),
    ('"/var/lib/prometheus/node-exporter/dmbackup.txt"', ".prom"),
])
def test_bad_textfile_is_exit_2_naming_the_field(tmp_path, value, why):
    toml = base_config(tmp_path) + f"[monitoring]\ntextfile = {value}\n"
    p = tmp_path / "dmbackup.toml"
    p.write_text(toml)
    proc = subprocess.run([sys.executable, "-m", "dmbackup", "--config", str(p), "check-config"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "monitoring.textfile" in proc.stderr and str(p) in proc.stderr and why in proc.stderr, proc.stderr


def test_unknown_monitoring_key_is_exit_2(tmp_path):
    p = tmp_path / "dmbackup.toml"
    p.write_text(base_config(tmp_path) + '[monitoring]\ntext_file = "/x.prom"\n')
    proc = subprocess.run([sys.executable, "-m", "dmbackup", "--config", str(p), "check-config"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "monitoring.text_file" in proc.stderr, proc.stderr
