"""The environment every program dmbackup starts gets: dmbackup's own, minus its secrets.

dmbackup runs as root and starts other programs: mount helpers and the FUSE daemons they leave
behind (which live on after the run), ``blkid``, ``umount``, ``systemd-inhibit``, ``doveadm``,
``postconf``/``doveconf`` probes and the administrator's hooks. ``$DMBACKUP_PASSPHRASE`` unlocks
every backup ever made; a child that inherits it can log it, crash-dump it, or show it to anyone
who may read its ``/proc/PID/environ`` for as long as it lives. So every ``subprocess`` call in
dmbackup passes ``env=child_env(...)``: the current environment without any secret, plus what
that child needs. A variable is a secret when it is ``DMBACKUP_PASSPHRASE`` or any other
``DMBACKUP_*`` whose name says password, passphrase, secret, token, key or credential; other
``DMBACKUP_*`` variables (``DMBACKUP_CONFIG``, ``DMBACKUP_HOOKS_CONF``, ...) are settings that
hooks rely on, and pass.
"""

from __future__ import annotations

import os
from typing import Mapping

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
