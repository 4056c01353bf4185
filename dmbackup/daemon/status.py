"""``dmbackup status``: is every job healthy? For people, monitoring and ``status --json``.

``status(app)`` builds one dict, whose shape is the documented, versioned contract in
docs/status-json.md (tests/test_status.py checks the report against the JSON Schema in that
file). Per job: the last run and its result, the last success and its age, the next due
time, and two flags: ``failed`` (the last run failed) and ``overdue`` (no success for more
than twice the schedule's interval, counted from the last success or, for a job that never
succeeded, from when the daemon first saw it). Per target: whether it can be reached, its
newest snapshot and its free space; an unavailable target (USB disk unplugged, share down)
is reported, never an error of ``status`` itself. Both carry ``last_drill``, the last restore
drill (``dmbackup.engine.drill``) the job ran / the target had, read from local state only.

``exit_code(report)`` is 1 when any job is overdue or failed its last run, else 0, so
``dmbackup status`` works as a monitoring check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from dmbackup.config import holds_repository
from dmbackup.engine.result import Result
from dmbackup.errors import DmError
from dmbackup import humanize, utctime
from dmbackup.daemon.schedule_spec import SchedulerState, is_overdue, next_due, parse_schedule

SCHEMA_VERSION = 1
_RUN_KEYS = ("time", "finished", "status", "exit_code", "snapshot", "error", "trigger")
_DRILL_KEYS = ("time", "finished", "snapshot", "mailbox", "result", "exit_code", "files", "bytes", "folders",
               "problems", "warnings", "job")


def _run_view(rec) -> dict | None:
    if not isinstance(rec, dict):
        return None
    out = {k: rec.get(k) for k in _RUN_KEYS}
    out["exit_code"] = out["exit_code"] if isinstance(out["exit_code"], int) else None
    return out


def _drill_view(rec) -> dict | None:
    """A drill record from drills.json with exactly the documented keys and types (the file is
    local state, but a hand-edited or older one must not break the report)."""
    if not isinstance(rec, dict):
        return None
    out = {k: rec.get(k) for k in _DRILL_KEYS}
    for k in ("time", "finished", "snapshot", "mailbox", "job"):
        out[k] = out[k] if isinstance(out[k], str) else None
    for k in ("exit_code", "files", "bytes", "folders", "warnings"):
        v = out[k]
        out[k] = v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None
    out["result"] = out["result"] if out["result"] in ("ok", "damage", "error") else "error"
    out["problems"] = [p for p in out["problems"] if isinstance(p, str)] if isinstance(out["problems"], list) else []
    if out["time"] is None:
        return None
    return out


def _drills(app) -> dict:
    d = app.state.drills()
    jobs = d.get("jobs") if isinstance(d.get("jobs"), dict) else {}
    targets = d.get("targets") if isinstance(d.get("targets"), dict) else {}
    return {"jobs": jobs, "targets": {k: v.get("last") for k, v in targets.items() if isinstance(v, dict)}}


def job_status(app, job, runs_entry: dict, first_seen: datetime | None, now: datetime,
               last_drill: dict | None = None) -> dict:
    last_run = _run_view(runs_entry.get("last_run"))
    ls = runs_entry.get("last_success")
    last_success = {"time": ls.get("time"), "snapshot": ls.get("snapshot")} if isinstance(ls, dict) else None
    ls_time = utctime.parse_time_or_none(last_success["time"]) if last_success else None
    spec = parse_schedule(job.schedule) if job.schedule else None
    next_run = None
    overdue = False
    if spec is not None:
        last_time = utctime.parse_time_or_none(last_run["time"]) if last_run else None
        next_run = utctime.iso(next_due(spec, now, last_time))
        overdue = is_overdue(spec, runs_entry, first_seen, now)
    return {
        "name": job.name,
        "what": job.what,
        "target": job.target,
        "schedule": job.schedule,
        "interval_seconds": spec.interval_seconds if spec else None,
        "on_plug": job.on_plug,
        "result": last_run["status"] if last_run else None,
        "last_run": last_run,
        "last_success": last_success,
        "last_success_age_seconds": int((now - ls_time).total_seconds()) if ls_time else None,
        "next_run": next_run,
        "overdue": overdue,
        "failed": bool(last_run and last_run["status"] == "failed"),
        "drill_after": job.drill_after,
        "last_drill": _drill_view(last_drill),
    }


def _snapshot_view(s) -> dict:
    t = getattr(s, "time", None)
    return {
        "id": getattr(s, "id", None),
        "chain": getattr(s, "chain", None),
        "kind": getattr(s, "kind", None),
        "time": utctime.iso(t) if isinstance(t, datetime) else t,
        "files": getattr(s, "files", None),
        "bytes": getattr(s, "bytes", None),
        "stored_bytes": getattr(s, "stored_bytes", None),
    }


def _sort_time(s) -> str:
    v = _snapshot_view(s)["time"]
    return v if isinstance(v, str) else ""


def target_status(app, name: str, tcfg, engine) -> dict:
    out = {"name": name, "type": getattr(tcfg, "type", None), "available": False, "error": None,
           "snapshots": None, "newest_snapshot": None, "free_bytes": None}
    try:
        snaps = list(engine.snapshots(app, name))
    except DmError as exc:
        out["error"] = str(exc)
        return out
    except Exception as exc:                       # status must report, not crash
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    out["available"] = True
    out["snapshots"] = len(snaps)
    if snaps:
        out["newest_snapshot"] = _snapshot_view(max(snaps, key=_sort_time))
    if not holds_repository(tcfg):
        return out                                 # a mailbox has no free space to speak of
    try:
        with app.target(name) as t:
            free = t.free_space()
        out["free_bytes"] = free if isinstance(free, int) else None
    except Exception as exc:                       # free space is a nicety
        app.log.warning("status_free_space_failed", target=name, error=str(exc))
    return out


def status(app, *, clock=utctime.utc_now, check_targets: bool = True, engine=None) -> dict:
    """The report described in docs/status-json.md.

    ``check_targets=False`` skips opening targets (no mounting, no network): jobs only, with
    ``targets`` listing names and types and ``available`` null.
    """
    now = clock()
    runs = app.state.runs()
    seen = SchedulerState(app.config.state_dir).load()["jobs"]
    drills = _drills(app)
    jobs = [job_status(app, job, runs.get(name, {}) if isinstance(runs.get(name), dict) else {},
                       utctime.parse_time_or_none(seen.get(name, {}).get("first_seen")), now, drills["jobs"].get(name))
            for name, job in sorted(app.config.jobs.items())]
    targets = []
    if check_targets and engine is None:
        from dmbackup import engine
    for name, tcfg in sorted(app.config.targets.items()):
        if check_targets:
            targets.append(target_status(app, name, tcfg, engine))
        else:
            targets.append({"name": name, "type": getattr(tcfg, "type", None), "available": None,
                            "error": None, "snapshots": None, "newest_snapshot": None, "free_bytes": None})
        targets[-1]["last_drill"] = _drill_view(drills["targets"].get(name))
    report = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": utctime.iso(now),
        "hostname": app.config.hostname,
        "ok": True,
        "jobs": jobs,
        "targets": targets,
    }
    report["ok"] = exit_code(report) == 0
    return report


@dataclass
class StatusResult(Result):
    """``dmbackup status``: the report (docs/status-json.md) as a ``Result``; ``problems`` are
    what went wrong around it (the Prometheus textfile not written), printed as warnings
    without changing the exit code, which is the jobs' health."""

    report: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return exit_code(self.report)

    def as_dict(self) -> dict:
        return self.report

    def summary(self) -> str:
        return render_text(self.report)

    def notes(self) -> list[str]:
        return [f"warning: {p}" for p in self.problems]


def exit_code(report: dict) -> int:
    """1 if any job is overdue or failed its last run, else 0."""
    return 1 if any(j["overdue"] or j["failed"] for j in report["jobs"]) else 0


def render_text(report: dict) -> str:
    """A plain table for ``dmbackup status`` without --json."""
    lines = [f"dmbackup status on {report['hostname']} at {report['generated_at']}", ""]
    lines.append(f"{'JOB':<18} {'RESULT':<12} {'LAST SUCCESS':<22} {'AGE':>8}  {'NEXT RUN':<22} FLAGS")
    for j in report["jobs"]:
        age = j["last_success_age_seconds"]
        flags = ",".join(f for f, on in (("OVERDUE", j["overdue"]), ("FAILED", j["failed"])) if on)
        lines.append(f"{j['name']:<18} {(j['result'] or 'never run'):<12} "
                     f"{((j['last_success'] or {}).get('time') or '-'):<22} "
                     f"{(_age(age) if age is not None else '-'):>8}  {(j['next_run'] or '-'):<22} {flags}")
        if j["failed"] and j["last_run"] and j["last_run"].get("error"):
            lines.append(f"  error: {j['last_run']['error']}")
        if j.get("last_drill"):
            lines.append(f"  {_drill_line(j['last_drill'])}")
    lines += ["", f"{'TARGET':<18} {'STATE':<12} {'NEWEST SNAPSHOT':<36} FREE"]
    for t in report["targets"]:
        state = {True: "available", False: "unavailable", None: "not checked"}[t["available"]]
        newest = t["newest_snapshot"]
        lines.append(f"{t['name']:<18} {state:<12} "
                     f"{((newest or {}).get('id') or '-'):<36} {humanize.size(t['free_bytes'])}")
        if t["error"]:
            lines.append(f"  {t['error']}")
        if t.get("last_drill"):
            lines.append(f"  {_drill_line(t['last_drill'])}")
    return "\n".join(lines)


def _drill_line(d: dict) -> str:
    text = (f"last restore drill {d['time']}: {d['result']}, {d.get('mailbox') or '?'} from "
            f"{d.get('snapshot') or '?'} ({d.get('files') if d.get('files') is not None else '?'} files)")
    if d.get("problems"):
        text += f": {d['problems'][0]}"
    return text


def _age(seconds: int) -> str:
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
