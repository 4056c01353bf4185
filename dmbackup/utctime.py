"""Time, one way: every timestamp dmbackup writes is UTC, ISO 8601 with a ``Z``, to the second.

``utc_now()`` is the one clock the code reads for wall time (tests that need another day
patch ``dmbackup.utctime.utc_now``); ``iso``/``parse_time`` write and read the JSON form;
``parse_user_time`` reads a time an administrator typed (``--at``, ``--since``) and says
what is wrong with it; ``parse_time_or_none`` reads a time from local state, where a missing
or damaged value means "unknown", never an error.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(t: datetime | None) -> str | None:
    """``2026-11-28T02:30:00Z`` (None stays None)."""
    if t is None:
        return None
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | datetime) -> datetime:
    """An ISO 8601 time (``2026-11-28T02:30:00Z``, a date, with an offset or a space) as aware UTC.

    A time without an offset is UTC: every time dmbackup prints is. Raises ValueError."""
    if isinstance(value, datetime):
        t = value
    else:
        s = value.strip().replace(" ", "T")
        if s.endswith(("Z", "z")):
            s = s[:-1] + "+00:00"
        t = datetime.fromisoformat(s)
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc)


def parse_time_or_none(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def parse_user_time(text: str) -> datetime:
    from dmbackup.errors import UsageError

    try:
        return parse_time(text)
    except ValueError:
        raise UsageError(f"cannot read time {text!r}: use ISO 8601, e.g. 2026-11-28T02:30 or 2026-11-28") from None
