"""Talking to systemd: readiness notifications (``Type=notify``) and the sleep inhibitor.

No extra dependency: ``sd_notify`` writes to ``$NOTIFY_SOCKET`` itself, and the inhibitor is a
``systemd-inhibit`` child process.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

from dmbackup.system.childenv import child_env


def sd_notify(message: str) -> bool:
    """Send ``message`` ("READY=1", "STATUS=...") to $NOTIFY_SOCKET; False when there is none."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode("utf-8"))
        return True
    except OSError:
        return False


class Inhibitor:
    """Holds a logind sleep/shutdown inhibitor lock while a job runs (best effort).

    ``systemd-inhibit ... cat`` keeps the lock until its stdin closes, which also happens when
    the daemon dies, so a crash never leaves the machine unable to sleep.
    """

    def __init__(self, why: str):
        self.proc = None
        exe = shutil.which("systemd-inhibit")
        if not exe:
            return
        try:
            self.proc = subprocess.Popen(
                [exe, "--what=sleep:shutdown", "--who=dmbackup", f"--why={why}", "--mode=block", "cat"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, env=child_env())
        except OSError:
            self.proc = None

    def release(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
