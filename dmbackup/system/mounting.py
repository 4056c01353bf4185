"""What every mount dmbackup makes has in common: helpers run safely, and safe flags.

Used by dmbackup.system.diskmount (a USB disk) and dmbackup.system.nfsmount (an NFS export).
A backup disk or share is untrusted medium: every mount is ``nosuid,nodev,noexec``
(``SAFE_OPTIONS``), options that would undo that (``UNSAFE_OPTIONS``) are refused, and a mount
helper that left one of the flags out gets a bind-remount that sets them
(``enforce_safe_flags``); when that fails the caller unmounts again before anyone writes.

Helpers (mount, umount, FUSE daemons) run through ``run_helper``: in their own session, without
dmbackup's secrets in their environment (a FUSE helper lives as long as the mount), with their
output in a file rather than a pipe (a helper that daemonises keeps its inherited stdout open
for its whole life, so a pipe would never reach EOF), and killed with their whole session when
they outlive the timeout.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from typing import Callable, Mapping

from dmbackup.system.childenv import child_env
from dmbackup.system.mountinfo import Mount, mount_at

DEFAULT_MOUNT_ROOT = "/run/dmbackup"
SAFE_OPTIONS = ("nosuid", "nodev", "noexec")
# mount(8) options that would switch the safe flags off again
UNSAFE_OPTIONS = frozenset({"suid", "dev", "exec", "defaults"})


def unsafe_options(options) -> list[str]:
    """The options in ``options`` that would undo nosuid/nodev/noexec."""
    return [o for o in options if o.strip().lower() in UNSAFE_OPTIONS]


def missing_safe_flags(m: Mount | None) -> list[str]:
    """Which of nosuid/nodev/noexec the mount ``m`` lacks (its per-mount options)."""
    if m is None:
        return list(SAFE_OPTIONS)
    have = set(m.options.split(","))
    return [f for f in SAFE_OPTIONS if f not in have]


def _one_line(text: str, limit: int = 300) -> str:
    line = "; ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def run_helper(argv: list[str], timeout: float, *, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run ``argv`` (see the module docstring); returns (exit status, its output on one line).
    127: not found, 126: cannot be run, 124: killed after ``timeout`` seconds."""
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    env=dict(env) if env is not None else child_env(),
                                    start_new_session=True)
        except FileNotFoundError:
            return 127, f"{argv[0]}: command not found"
        except OSError as exc:
            return 126, f"{argv[0]}: {exc.strerror}"
        try:
            code = proc.wait(timeout)
        except BaseException as exc:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            proc.wait()
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            return 124, f"{argv[0]} did not finish within {timeout:g} s"
        out.seek(0)
        text = out.read(8192).decode("utf-8", "replace")
    return code, _one_line(text)


def enforce_safe_flags(mount_point: str, timeout: float, *, env: Mapping[str, str] | None = None) -> str | None:
    """Make sure the mount on ``mount_point`` is nosuid,nodev,noexec, with a bind-remount
    (which changes only the mount's own flags, not the file system) when a helper left one
    out. Returns None when it is, else what went wrong."""
    m = mount_at(mount_point)
    if m is None:
        return f"nothing is mounted on {mount_point}"
    if not missing_safe_flags(m):
        return None
    code, output = run_helper(["mount", "-o", "remount,bind," + ",".join(SAFE_OPTIONS), mount_point],
                              timeout, env=env)
    missing = missing_safe_flags(mount_at(mount_point))
    if not missing:
        return None
    return (f"the mount helper left out {','.join(missing)} and a remount could not set it "
            f"({output or f'exit status {code}'})")


def wait_for_mount(mount_point: str, timeout: float, accept: Callable[[Mount], bool]) -> Mount | None:
    """The mount on ``mount_point`` once ``accept`` takes it, or None after ``timeout`` seconds:
    a helper may return a moment before its (FUSE) mount shows up in mountinfo."""
    deadline = time.monotonic() + timeout
    while True:
        m = mount_at(mount_point)
        if m is not None and accept(m):
            return m
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
