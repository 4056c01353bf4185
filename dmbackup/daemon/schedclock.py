"""The ``schedule`` library, made to read the daemon's clock.

``schedule`` calls ``datetime.datetime.now()`` for everything. It gets a ``datetime`` module
whose ``datetime.now()`` asks the clock installed by the running Daemon (``schedule_clock``;
the real time otherwise), so tests drive the daemon through days in milliseconds.
``add_to_schedule`` turns a job's ``ScheduleSpec`` into a ``schedule`` job.
"""

from __future__ import annotations

import datetime as _dt
import threading
import types
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable

import schedule

from dmbackup.config import ScheduleSpec

Clock = Callable[[], datetime]

_clock_lock = threading.RLock()
_active_clock: Clock | None = None


class _ClockDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        clock = _active_clock
        if clock is None:
            return _dt.datetime.now(tz)
        t = clock()
        return t.astimezone(tz) if tz is not None else t.astimezone().replace(tzinfo=None)


_shim = types.ModuleType("datetime")
_shim.__dict__.update({k: v for k, v in _dt.__dict__.items() if not k.startswith("__")})
_shim.datetime = _ClockDatetime
schedule.datetime = _shim


@contextmanager
def schedule_clock(clock: Clock):
    global _active_clock
    with _clock_lock:
        previous, _active_clock = _active_clock, clock
        try:
            yield
        finally:
            _active_clock = previous


def add_to_schedule(sched: schedule.Scheduler, spec: ScheduleSpec, func: Callable[..., Any], *args) -> schedule.Job:
    """Turn a ScheduleSpec into a ``schedule`` job calling ``func(*args)``."""
    if spec.kind == "daily":
        job = sched.every().day.at(spec.at)
    elif spec.kind == "weekly":
        job = getattr(sched.every(), spec.day).at(spec.at)
    elif spec.kind == "every":
        job = sched.every(spec.every_seconds).seconds
    else:
        raise ValueError(f"unknown schedule kind {spec.kind!r}")
    return job.do(func, *args)
