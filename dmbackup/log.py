"""Logging: JSON lines (one object per event) for journald and scripts, never secrets.

Events are ``{"time": ISO, "level": ..., "event": name, ...fields}``. The CLI sends them to
stderr when stderr is not a terminal (a terminal gets a progress bar instead) and the daemon to
stdout. A ring of the last lines is kept for failure notifications.

File names, folder names and hook output are attacker data (anyone who can deliver mail names
files in the store). JSON lines are ASCII with every control character escaped; text meant for
a terminal goes through ``terminal_safe`` so an escape sequence in a name can never retitle,
clear or rewrite the administrator's terminal.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from datetime import datetime, timezone
from typing import IO


# C0 controls, DEL, C1 controls (0x80-0x9f: 8-bit CSI/OSC on some terminals) and the Unicode
# bidirectional overrides that make a name read differently from what it is.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_UNSAFE_KEEP_NEWLINE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def terminal_safe(text: str, *, multiline: bool = False) -> str:
    """``text`` with every control character written as ``\\xNN`` (``\\uNNNN`` above 0xff),
    and undecodable bytes (surrogate escapes from file names) as ``\\xNN`` too.

    ``multiline`` keeps newlines (tables and lists the CLI itself lays out); a one-line
    message must not keep them, or a name could start a fake line of its own. (Tabs are kept
    with the newlines: they only move the cursor.)
    """
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:      # a lone surrogate no file name decodes to (a forged catalog)
        text = text.encode("utf-8", "backslashreplace").decode("utf-8", "backslashreplace")
    return (_UNSAFE_KEEP_NEWLINE if multiline else _UNSAFE).sub(_escape, text)


class Logger:
    def __init__(self, stream: IO[str] | None = None, *, level: str = "info", keep: int = 50):
        self.stream = stream
        self.levels = {"debug": 10, "info": 20, "warning": 30, "error": 40}
        self.min = self.levels[level]
        self.recent: collections.deque[str] = collections.deque(maxlen=keep)
        # reentrant: a signal handler that logs runs in the main thread, possibly in the
        # middle of this very method; a plain Lock would deadlock the process right there
        self._lock = threading.RLock()

    def log(self, level: str, event: str, **fields) -> None:
        if self.levels[level] < self.min:
            return
        rec = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "level": level, "event": event}
        rec.update(fields)
        line = json.dumps(rec, default=str, ensure_ascii=True)
        with self._lock:
            self.recent.append(line)
            if self.stream is not None:
                try:
                    self.stream.write(line + "\n")
                    self.stream.flush()
                except (OSError, ValueError, RuntimeError):   # RuntimeError: reentrant write
                    pass

    def debug(self, event, **f):
        self.log("debug", event, **f)

    def info(self, event, **f):
        self.log("info", event, **f)

    def warning(self, event, **f):
        self.log("warning", event, **f)

    def error(self, event, **f):
        self.log("error", event, **f)


class Progress:
    """Counts files and bytes; the CLI attaches a renderer on a terminal."""

    def __init__(self):
        self.files = 0
        self.bytes = 0
        self.total_files: int | None = None
        self.total_bytes: int | None = None
        self.started = time.monotonic()
        self.listeners = []

    def update(self, files: int = 0, nbytes: int = 0) -> None:
        self.files += files
        self.bytes += nbytes
        for fn in self.listeners:
            fn(self)


def null_logger() -> Logger:
    return Logger(None)

