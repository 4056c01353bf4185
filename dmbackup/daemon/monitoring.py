"""The Prometheus textfile: the jobs' health in the format node_exporter's textfile collector reads.

When ``[monitoring] textfile`` is set, the file is rewritten after every job run (``jobs.run_job``,
however the job was started) and by every ``dmbackup status`` (``status_report``). Per job (labels ``job`` and
``target``): the last success time, the last run's time, exit code, duration and stored bytes,
and the ``overdue`` and ``failed`` flags of ``status``; per target, the snapshot count. The
metric names are a documented contract (docs/status-json.md, "Prometheus textfile").

Snapshot counts need the target opened, which a job run does not otherwise repeat: they are
kept in ``state_dir/monitoring.json`` and refreshed for the job's target after a run that
committed a snapshot and for every reachable target by ``status``; a target never counted has
no sample. The file is written atomically (a temporary file in the same directory, then
renamed; mode 0644). A missing directory or any other problem writing it is a logged warning,
never a failed job: monitoring must not break the backups it watches.
"""

from __future__ import annotations

import math
import os
from datetime import datetime

from dmbackup import utctime
from dmbackup.daemon import status
from dmbackup.state import write_atomic

CACHE = "monitoring.json"       # in state_dir: {"targets": {name: {"snapshots": n, "time": iso}}}

# name -> (type, help); the order is the order in the file
METRICS = {
    "dmbackup_job_last_success_timestamp_seconds":
        ("gauge", "Unix time the job's last successful run started (no sample: never succeeded)."),
    "dmbackup_job_last_run_timestamp_seconds": ("gauge", "Unix time the job's last run started."),
    "dmbackup_job_last_run_exit_code":
        ("gauge", "Exit code of the job's last run (0 ok, 1 warnings, 3 failed, ...; see dmbackup(1))."),
    "dmbackup_job_last_run_duration_seconds": ("gauge", "Wall time of the job's last run, in seconds."),
    "dmbackup_job_last_run_stored_bytes":
        ("gauge", "Bytes the job's last run wrote to its target (no sample: nothing stored or unknown)."),
    "dmbackup_job_overdue": ("gauge", "1 if the job has had no success for more than twice its interval."),
    "dmbackup_job_failed": ("gauge", "1 if the job's last run failed."),
    "dmbackup_job_target_snapshots": ("gauge", "Snapshots on the job's target when last counted."),
    "dmbackup_target_snapshots": ("gauge", "Snapshots on the target when last counted."),
    "dmbackup_textfile_timestamp_seconds": ("gauge", "Unix time this file was written."),
}


def _label(v) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) < 2**53:
        return str(int(v))
    return repr(float(v))


def _ts(s) -> float | None:
    t = utctime.parse_time_or_none(s)
    return t.timestamp() if t else None


def render(report: dict, runs: dict, counts: dict, now: datetime) -> str:
    """The file's text from a ``status`` report (jobs), raw ``runs.json`` and snapshot counts."""
    samples: dict[str, list[tuple[dict, object]]] = {name: [] for name in METRICS}
    for j in report["jobs"]:
        labels = {"job": j["name"], "target": j["target"]}
        last = j.get("last_run") or {}
        raw = (runs.get(j["name"]) or {}).get("last_run") if isinstance(runs.get(j["name"]), dict) else None
        raw = raw if isinstance(raw, dict) else {}
        ls = _ts((j.get("last_success") or {}).get("time"))
        if ls is not None:
            samples["dmbackup_job_last_success_timestamp_seconds"].append((labels, ls))
        started, finished = _ts(last.get("time")), _ts(last.get("finished"))
        if started is not None:
            samples["dmbackup_job_last_run_timestamp_seconds"].append((labels, started))
        if isinstance(last.get("exit_code"), int):
            samples["dmbackup_job_last_run_exit_code"].append((labels, last["exit_code"]))
        if started is not None and finished is not None and finished >= started:
            samples["dmbackup_job_last_run_duration_seconds"].append((labels, finished - started))
        sb = raw.get("stored_bytes")
        if isinstance(sb, int) and not isinstance(sb, bool) and sb >= 0:
            samples["dmbackup_job_last_run_stored_bytes"].append((labels, sb))
        samples["dmbackup_job_overdue"].append((labels, bool(j["overdue"])))
        samples["dmbackup_job_failed"].append((labels, bool(j["failed"])))
        n = (counts.get(j["target"]) or {}).get("snapshots")
        if isinstance(n, int):
            samples["dmbackup_job_target_snapshots"].append((labels, n))
    for name in sorted(counts):
        n = (counts.get(name) or {}).get("snapshots")
        if isinstance(n, int):
            samples["dmbackup_target_snapshots"].append(({"target": name}, n))
    samples["dmbackup_textfile_timestamp_seconds"].append(({}, now.timestamp()))

    out = []
    for name, (kind, help_) in METRICS.items():
        if not samples[name]:
            continue
        out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        for labels, value in samples[name]:
            lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{lab}}} {_num(value)}" if lab else f"{name} {_num(value)}")
    return "\n".join(out) + "\n"


def _counts(app) -> dict:
    c = app.state.read_json(CACHE).get("targets")
    return {k: v for k, v in c.items() if k in app.config.targets and isinstance(v, dict)} \
        if isinstance(c, dict) else {}


def _save_counts(app, counts: dict) -> None:
    app.state.write_json(CACHE, {"targets": counts})


def write(app, report: dict | None = None, *, now: datetime | None = None) -> str | None:
    """Write the textfile from ``report`` (default: ``status`` without opening targets).
    Returns a warning (str) instead of raising; None when written or not configured."""
    path = app.config.monitoring.textfile
    if not path:
        return None
    try:
        if report is None:
            report = status.status(app, check_targets=False)
        text = render(report, app.state.runs(), _counts(app), now or utctime.utc_now())
        d = os.path.dirname(path)
        if not os.path.isdir(d):
            why = f"its directory {d} does not exist (is node_exporter's textfile collector set up?)"
        else:
            write_atomic(path, text, mode=0o644)     # node_exporter reads it as another user
            return None
    except OSError as exc:
        why = exc.strerror or str(exc)
    except Exception as exc:           # monitoring must never fail a run
        why = f"{type(exc).__name__}: {exc}"
    app.log.warning("monitoring_textfile_failed", path=path, error=why)
    return f"monitoring.textfile {path} not written: {why}"


def after_job(app, res) -> str | None:
    """After a job run (``jobs.run_job``): recount the job's target if a snapshot was committed,
    then rewrite the file. Never raises; a problem is logged and returned."""
    try:
        if res.snapshot_id:
            from dmbackup import engine

            counts = _counts(app)
            counts[res.target] = {"snapshots": len(engine.snapshots(app, res.target)),
                                  "time": utctime.iso(utctime.utc_now())}
            _save_counts(app, counts)
    except Exception as exc:
        app.log.warning("monitoring_count_failed", target=res.target, error=str(exc))
    return write(app)


def after_status(app, report: dict) -> str | None:
    """After ``dmbackup status``: keep the snapshot counts of the targets it reached, rewrite."""
    if not app.config.monitoring.textfile:
        return None
    try:
        counts = _counts(app)
        for t in report.get("targets", []):
            if t.get("available") and isinstance(t.get("snapshots"), int):
                counts[t["name"]] = {"snapshots": t["snapshots"], "time": report.get("generated_at")}
        _save_counts(app, counts)
    except Exception as exc:
        app.log.warning("monitoring_count_failed", error=str(exc))
    return write(app, report)


def status_report(app) -> status.StatusResult:
    """``dmbackup status``: the report, and the textfile rewritten from it when configured
    (a problem writing it is a warning of the result, never its exit code)."""
    report = status.status(app)
    problem = after_status(app, report)
    return status.StatusResult(report=report, problems=[problem] if problem else [])
