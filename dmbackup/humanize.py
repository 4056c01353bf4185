"""Sizes for people: ``1.5 MiB`` (binary, what `status`, `snapshots` and mails show) or, for a
disk's capacity as its label says it, ``16.0 GB`` (``si=True``). Not a number: ``-``."""

from __future__ import annotations


def size(n, *, si: bool = False) -> str:
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        return "-"
    step, units = (1000, ("B", "KB", "MB", "GB", "TB")) if si else (1024, ("B", "KiB", "MiB", "GiB", "TiB"))
    for unit in units:
        if abs(n) < step or unit == units[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= step
    return "-"  # pragma: no cover
