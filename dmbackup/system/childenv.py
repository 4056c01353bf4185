"""What dmbackup, running as root, hands to the programs it starts, and what it trusts of them.

dmbackup starts mount helpers and the FUSE daemons they leave behind (which live on after the
run), ``blkid``, ``umount``, ``systemd-inhibit``, ``doveadm``, ``postconf``/``doveconf`` probes
and the administrator's hooks. ``$DMBACKUP_PASSPHRASE`` unlocks every backup ever made; a child
that inherits it can log it, crash-dump it, or show it to anyone who may read its
``/proc/PID/environ`` for as long as it lives. So every ``subprocess`` call in dmbackup passes
``env=child_env(...)``: the current environment without any secret, plus what that child needs.
A variable is a secret when it is ``DMBACKUP_PASSPHRASE`` or any other ``DMBACKUP_*`` whose name
says password, passphrase, secret, token, key or credential; other ``DMBACKUP_*`` variables
(``DMBACKUP_CONFIG``, ``DMBACKUP_HOOKS_CONF``, ...) are settings that hooks rely on, and pass.
The other half is ``untrusted``: a file that decides what runs as root (a hook, the
``hooks.conf`` the hooks source, the config file that names mount commands and doveadm) is only
as safe as every directory above it, so it and all its ancestors must be owned by root (or the
user dmbackup runs as), writable by nobody else, and no symlink, before dmbackup relies on it.
"""

from __future__ import annotations

import os
import stat
from typing import Mapping

from dmbackup.errors import ConfigError

SECRET_NAMES = frozenset({"DMBACKUP_PASSPHRASE"})
# Words that make a DMBACKUP_* name a secret: a new secret variable is covered the day it is
# added, without anyone remembering to list it here.
_SECRET_WORDS = ("PASS", "SECRET", "TOKEN", "KEY", "CRED", "PW")


def is_secret(name: str) -> bool:
    if name in SECRET_NAMES:
        return True
    if not name.upper().startswith("DMBACKUP_"):
        return False
    rest = name.upper()[len("DMBACKUP_"):]
    return any(word in rest for word in _SECRET_WORDS)


def child_env(extra: Mapping[str, str] | None = None, *, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: ``base`` (default ``os.environ``) without secrets,
    then ``extra`` on top (``extra`` is trusted: it is what dmbackup itself tells the child)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not is_secret(k)}
    if extra:
        env.update(extra)
    return env


def untrusted(path: str, *, what: str = "") -> str | None:
    """Why ``path`` cannot be trusted to decide what runs as root, or None when it can.

    ``path`` and every directory above it are checked with lstat: none may be a symlink (its
    target could be anywhere, and is checked by nobody), each must be owned by root or by the
    user dmbackup runs as, and none may be writable by group or others. Exception: an ancestor
    that is root's and has the sticky bit (/tmp) is fine, because others may add names there
    but not rename or remove ours. The answer names the offending path and the fix.
    """
    me = os.geteuid()
    path = os.path.abspath(path)
    label = f"{what} " if what else ""
    parts = [path]
    while parts[-1] != "/":
        parts.append(os.path.dirname(parts[-1]))
    for i, p in enumerate(parts):
        try:
            st = os.lstat(p)
        except OSError as exc:
            return f"{label}{p} cannot be checked: {exc.strerror}"
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            return (f"{label}{p} is a symbolic link; dmbackup runs nothing through a link as root: "
                    f"put the real {'file' if i == 0 else 'directory'} there")
        if st.st_uid not in (0, me):
            return f"{label}{p} is owned by uid {st.st_uid}, not root: chown root:root {p}"
        if mode & 0o022:
            if i > 0 and stat.S_ISDIR(mode) and mode & stat.S_ISVTX and st.st_uid == 0:
                continue
            return f"{label}{p} is writable by group or others: chmod go-w {p}"
    return None


def check_config_file(path: str) -> None:
    """Raise ConfigError (exit 2) when dmbackup runs as root and the config file at ``path``
    (which names mount commands and doveadm, run as root) could have been written by someone
    else: the file must be root's and writable only by root, and the real directories above
    it, and the directory holding a symlink to it, must be trusted as ``untrusted`` says.
    A missing file is left to the config loader to report."""
    if os.geteuid() != 0:
        return
    given = os.path.abspath(path)
    real = os.path.realpath(given)
    try:
        st = os.stat(real)
    except OSError:
        return
    fix = f"chown root:root {real}; chmod 600 {real}"
    why = None
    if st.st_uid != 0:
        why = f"is owned by uid {st.st_uid}"
    elif st.st_mode & 0o022:
        why = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if why:
        raise ConfigError(f"the config file {why}, but it names programs dmbackup runs as root: {fix}",
                          file=path)
    for d in dict.fromkeys((os.path.dirname(real), os.path.realpath(os.path.dirname(given)))):
        problem = untrusted(d)
        if problem:
            raise ConfigError(f"the config file names programs dmbackup runs as root, but its directory "
                              f"cannot be trusted: {problem}", file=path)
