"""One configured job, run unattended: hooks, backup, prune, verify, record, notify.

``run_job(app, name)`` is what ``dmbackup backup JOB``, the systemd timer and the daemon all
call, so a job behaves the same however it was started:

1. pre-backup hooks (``hooks.around``); exit 75 from one skips the run (status "skipped");
2. ``engine.backup(app, target, what=job.what, job=job)``; the engine itself starts a new
   chain (a full) when the current one already has ``full_every`` incrementals;
3. ``engine.prune(app, target, job.keep_chains)`` when ``prune_after`` (mail jobs);
4. ``engine.verify(app, target, snapshot=<new>, read_data=...)`` when ``verify_after`` is
   "quick" or "read-data"; then ``engine.drill.restore_drill(app, target, snapshot=<new>)``
   when ``drill_after``: one mailbox of the new snapshot restored to scratch and checked;
5. post-backup hooks (they see the final ``DMBACKUP_STATUS``), on-failure hooks on failure;
6. the run is recorded in ``State`` (``runs.json``), the Prometheus textfile is rewritten
   when ``[monitoring] textfile`` is set (``dmbackup.daemon.monitoring``) and, on failure (or on success with
   ``[notify] on_success``), mailed to the administrator with the last log lines.

Outcomes: "ok" (exit 0), "warning" (exit 1: the snapshot is committed but something needs a
look: vanished files, a failed prune or post hook, a verify that could not run), "failed"
(the error's own exit code; verify or the restore drill finding damage is a failure with
exit 4 even though the new snapshot was committed), "skipped" (exit 0, a pre hook said 75)
and "interrupted" (exit 130, ``app.stop`` was set, e.g. by SIGTERM; not mailed, and the
daemon catches it up later). An interruption after the snapshot was committed only cuts
prune/verify/drill short: the run counts as "warning".

Unexpected exceptions (bugs) are recorded and mailed like failures with exit 3 and then
re-raised, so the CLI shows them and the daemon logs the traceback.
"""

from __future__ import annotations

import json
import os
import traceback
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from dmbackup import humanize, utctime
from dmbackup.daemon import monitoring
from dmbackup.daemon.timelimit import job_time_limit
from dmbackup.engine import hooks
from dmbackup.engine.result import MAX_NOTES, Result
from dmbackup.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, DamageFound, DmError, Interrupted
from dmbackup.mailout import notify

Clock = Callable[[], datetime]
LOG_LINES_IN_MAIL = 30


@dataclass
class JobResult(Result):
    """One run of a job; ``warnings`` (from ``Result``) are the engine's, the steps' and the
    post hooks'."""

    job: str
    target: str
    what: str
    trigger: str
    started: datetime
    finished: datetime | None = None
    status: str = "running"          # ok | warning | failed | skipped | interrupted
    exit_code: int = 0
    snapshot_id: str | None = None
    error: str | None = None
    backup: dict | None = None       # engine results, as_dict()
    prune: dict | None = None
    verify: dict | None = None
    drill: dict | None = None        # the restore drill's result (drill_after)
    notified: bool = False

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "warning", "skipped")

    def as_dict(self) -> dict:
        return {"job": self.job, "target": self.target, "what": self.what, "trigger": self.trigger,
                "started": utctime.iso(self.started), "finished": utctime.iso(self.finished),
                "status": self.status, "exit_code": self.exit_code, "snapshot_id": self.snapshot_id,
                "error": self.error, "warnings": list(self.warnings), "backup": self.backup,
                "prune": self.prune, "verify": self.verify, "drill": self.drill, "notified": self.notified}

    def summary(self) -> str:
        b = self.backup or {}
        return (f"job {self.job}: {self.status}" + (f", snapshot {self.snapshot_id}" if self.snapshot_id else "")
                + (f" ({b.get('files')} files, {humanize.size(b.get('bytes'))}, "
                   f"{humanize.size(b.get('stored_bytes'))} stored)" if b.get("files") is not None else ""))

    def notes(self) -> list[str]:
        return ([f"dmbackup: {self.error}"] if self.error else []) + \
            [f"warning: {w}" for w in self.warnings[:MAX_NOTES]]

    def record(self) -> dict:
        """What goes into State (runs.json) and what ``status`` reads back."""
        return {
            "time": utctime.iso(self.started),
            "finished": utctime.iso(self.finished),
            "status": self.status,
            "exit_code": self.exit_code,
            "snapshot": self.snapshot_id,
            "error": self.error,
            "warnings": len(self.warnings),
            "trigger": self.trigger,
            "target": self.target,
            "what": self.what,
            # bytes the backup wrote to the target (the Prometheus textfile reports them)
            "stored_bytes": (self.backup or {}).get("stored_bytes"),
        }


def run_log_lines(app, since: datetime, limit: int = LOG_LINES_IN_MAIL) -> list[str]:
    """The last ``limit`` log lines written since ``since`` (from the logger's ring)."""
    recent = list(getattr(app.log, "recent", ()) or ())
    out = []
    for line in recent:
        try:
            t = utctime.parse_time_or_none(json.loads(line).get("time"))
        except (ValueError, AttributeError):
            t = None
        if t is None or t >= since.replace(microsecond=0):
            out.append(line)
    return out[-limit:]


def run_job(app, job_name: str, *, clock: Clock = utctime.utc_now, trigger: str | None = None, full: bool = False,
            send_notifications: bool = True, engine=None) -> JobResult:
    """Run the configured job ``job_name`` once; see the module docstring.

    ``trigger`` ("manual", "schedule", "catch-up", "usb", "timer") is recorded and mailed;
    without it, ``$DMBACKUP_TRIGGER`` (set to "timer" by dmbackup-job@.service) or "manual".
    ``full`` forces a new chain (``dmbackup backup JOB --full``); otherwise the engine decides
    from ``full_every``.
    ``engine`` replaces ``dmbackup.engine`` (tests only). Raises ``ConfigError`` for an
    unknown job; every other failure is in the returned ``JobResult``.
    """
    if engine is None:
        from dmbackup import engine
    job = app.config.job(job_name)
    trigger = trigger or os.environ.get("DMBACKUP_TRIGGER") or "manual"
    res = JobResult(job=job.name, target=job.target, what=job.what, trigger=trigger, started=clock())
    wall_start = utctime.utc_now()
    ctx = hooks.HookContext(action="backup", target=job.target, what=job.what, job=job.name)
    app.log.info("job_start", job=job.name, target=job.target, what=job.what, trigger=trigger)
    unexpected: BaseException | None = None
    try:
        with hooks.around(app, ctx):
            with job_time_limit(app, job, ctx):       # job_timeout: a stuck run ends (exit 7 or 3)
                _run_steps(app, engine, job, res, ctx, full)
    except hooks.RunSkipped as exc:
        res.status, res.exit_code, res.error = "skipped", 0, None
        ctx.warnings.append(str(exc))
    except (Interrupted, KeyboardInterrupt) as exc:
        res.status, res.exit_code = "interrupted", EXIT_INTERRUPTED
        res.error = str(exc) or "interrupted"
        if isinstance(exc, KeyboardInterrupt):
            unexpected = exc
    except DmError as exc:
        res.status, res.exit_code, res.error = "failed", exc.exit_code, str(exc)
    except Exception as exc:                      # a bug: record, mail, then re-raise
        res.status, res.exit_code = "failed", EXIT_INTERNAL
        res.error = f"internal error: {type(exc).__name__}: {exc}"
        app.log.error("job_crashed", job=job.name, traceback=traceback.format_exc())
        unexpected = exc
    else:
        res.status = ctx.status
        res.exit_code = ctx.exit_code if ctx.exit_code is not None else 0
    res.warnings = list(ctx.warnings)     # the engine's, the steps' and the post hooks'
    if res.status == "ok" and res.warnings:
        res.status, res.exit_code = "warning", 1
    res.finished = clock()

    log = app.log.error if res.status == "failed" else (
        app.log.warning if res.status in ("warning", "interrupted") else app.log.info)
    log("job_done", job=job.name, status=res.status, exit_code=res.exit_code,
        snapshot=res.snapshot_id, error=res.error, warnings=res.warnings)
    try:
        app.state.record_run(job.name, res.record())
    except OSError as exc:
        app.log.error("state_write_failed", job=job.name, error=str(exc))
    if app.config.monitoring.textfile:
        monitoring.after_job(app, res)
    if send_notifications:
        res.notified = notify.notify_job_result(app, res, run_log_lines(app, wall_start))
    if unexpected is not None:
        raise unexpected
    return res


def _run_steps(app, engine, job, res: JobResult, ctx: hooks.HookContext, full: bool) -> None:
    """backup, then prune and verify; failures after the commit degrade to warnings."""
    b = engine.backup(app, job.target, what=job.what, full=full, job=job)
    res.backup = b.as_dict()
    res.snapshot_id = ctx.snapshot = b.snapshot_id
    ctx.warnings.extend(b.warnings)
    app.log.info("job_backup_done", job=job.name, snapshot=res.snapshot_id)

    # The snapshot is committed: from here on, only damage makes the run a failure.
    step = "prune"
    try:
        if job.prune_after and job.what == "mail":
            res.prune = engine.prune(app, job.target, job.keep_chains).as_dict()
        if job.verify_after != "none":
            step = "verify"
            v = engine.verify(app, job.target, snapshot=res.snapshot_id,
                              read_data=job.verify_after == "read-data")
            res.verify = v.as_dict()
            code = v.exit_code
            if code == DamageFound.exit_code:
                raise DamageFound(f"verify of snapshot {res.snapshot_id} on target {job.target!r} "
                                  f"found damage: {res.verify}")
            if code not in (0, None):
                ctx.warnings.append(f"verify of {res.snapshot_id} finished with exit {code}"
                                    + "".join(f"; {w}" for w in v.warnings[:5]))
        if job.drill_after:
            step = "restore drill"
            _drill_step(app, job, res, ctx)
    except DamageFound:
        raise
    except Interrupted as exc:
        ctx.warnings.append(f"stopped after the snapshot was committed: {exc}")
    except DmError as exc:
        ctx.warnings.append(f"{step} after the backup failed (the snapshot is committed): {exc}")
        app.log.warning("job_step_failed", job=job.name, step=step, error=str(exc))


def _drill_step(app, job, res: JobResult, ctx: hooks.HookContext) -> None:
    """The restore drill of the new snapshot: damage fails the run (exit 4, mailed like any
    failure); warnings (e.g. a dovecot-uidlist Dovecot would not use) make it a warning."""
    from dmbackup.engine.drill import restore_drill

    d = restore_drill(app, job.target, snapshot=res.snapshot_id, job=job.name)
    res.drill = d.as_dict()
    if d.exit_code == DamageFound.exit_code:
        raise DamageFound(d.summary())
    ctx.warnings.extend(f"restore drill: {w}" for w in d.warnings)
