"""A rich progress line on a terminal: files, bytes, rate, ETA when a total is known."""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.text import Text


def attach(progress) -> None:
    console = Console(stderr=True)
    live = Live(console=console, transient=True, refresh_per_second=4)
    state = {"last": 0.0, "started": False}

    def render(p) -> None:
        now = time.monotonic()
        if now - state["last"] < 0.25:
            return
        state["last"] = now
        if not state["started"]:
            live.start()
            state["started"] = True
        elapsed = max(now - p.started, 1e-6)
        rate = p.bytes / elapsed
        line = f"{p.files} files  {p.bytes / 2**20:.1f} MiB  {rate / 2**20:.1f} MiB/s"
        if p.total_bytes:
            left = max(p.total_bytes - p.bytes, 0)
            line += f"  ETA {int(left / rate) if rate else 0}s"
        live.update(Text(line))

    progress.listeners.append(render)
    import atexit

    atexit.register(lambda: live.stop() if state["started"] else None)
