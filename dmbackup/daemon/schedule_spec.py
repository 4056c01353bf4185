"""Schedule strings of jobs ("daily at 02:30", "weekly on monday at 06:00", "every 6 hours").

Parsed into a small frozen value that the daemon turns into a ``schedule`` library job and
that ``status`` uses to compute the interval (for the dead-man check) and the next run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_UNITS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400}


@dataclass(frozen=True)
class ScheduleSpec:
    kind: str                 # "daily" | "weekly" | "every"
    at: str | None = None     # "HH:MM" for daily/weekly
    day: str | None = None    # weekday for weekly
    every_seconds: int = 0    # for "every"

    @property
    def interval_seconds(self) -> int:
        return {"daily": 86400, "weekly": 7 * 86400}.get(self.kind, self.every_seconds)


def parse_schedule(text: str) -> ScheduleSpec:
    s = " ".join(text.lower().split())
    m = re.fullmatch(r"daily(?: at (\d{1,2}):(\d{2}))?", s)
    if m:
        return ScheduleSpec("daily", at=_hhmm(m.group(1), m.group(2), text))
    m = re.fullmatch(r"weekly(?: on (\w+))?(?: at (\d{1,2}):(\d{2}))?", s)
    if m:
        day = m.group(1) or "sunday"
        if day not in DAYS:
            raise ValueError(f"unknown day {day!r} in schedule {text!r}; expected one of {', '.join(DAYS)}")
        return ScheduleSpec("weekly", at=_hhmm(m.group(2), m.group(3), text), day=day)
    m = re.fullmatch(r"every (\d+) (minutes?|hours?|days?)", s)
    if m:
        n = int(m.group(1))
        if n <= 0:
            raise ValueError(f"schedule {text!r}: the interval must be positive")
        return ScheduleSpec("every", every_seconds=n * _UNITS[m.group(2)])
    raise ValueError(
        f"cannot understand schedule {text!r}; expected e.g. \"daily at 02:30\", "
        "\"weekly on sunday at 03:00\" or \"every 6 hours\""
    )


def _hhmm(h: str | None, m: str | None, text: str) -> str:
    if h is None:
        return "00:00"
    hh, mm = int(h), int(m)
    if hh > 23 or mm > 59:
        raise ValueError(f"schedule {text!r}: {h}:{m} is not a time of day")
    return f"{hh:02d}:{mm:02d}"
