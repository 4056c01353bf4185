"""When a job is due, from its schedule (``dmbackup.config.ScheduleSpec``: "daily at 02:30",
"weekly on monday at 06:00", "every 6 hours").

The due-time arithmetic (``previous_due``, ``next_due``, ``is_overdue``, ``needs_catch_up``),
the systemd timer equivalent, and ``SchedulerState`` (what the daemon remembers per job in
``state_dir/scheduler.json``), shared by the daemon and ``status`` without ``status``
depending on the daemon. The schedule strings themselves are parsed with the config, which
refuses a bad one; ``parse_schedule`` is importable from here as before.
"""

from __future__ import annotations

import datetime as _dt
import os
from datetime import datetime, timedelta

from dmbackup import utctime
from dmbackup.config import DAYS, ScheduleSpec, parse_schedule

SCHED_STATE = "scheduler.json"


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


def timer_oncalendar(spec: ScheduleSpec) -> list[str]:
    """``[Timer]`` lines for ``dmbackup-job@JOB.timer.d/schedule.conf`` (see systemd/)."""
    if spec.kind == "daily":
        return ["OnCalendar=", f"OnCalendar=*-*-* {spec.at}:00"]
    if spec.kind == "weekly":
        return ["OnCalendar=", f"OnCalendar={spec.day[:3].capitalize()} *-*-* {spec.at}:00"]
    # an interval: count from the last activation, and from boot for the first one
    return ["OnCalendar=", f"OnBootSec={spec.every_seconds}s", f"OnUnitActiveSec={spec.every_seconds}s"]


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


__all__ = ["DAYS", "ScheduleSpec", "parse_schedule", "previous_due", "next_due", "overdue_reference",
           "is_overdue", "needs_catch_up", "timer_oncalendar", "SchedulerState", "SCHED_STATE"]
