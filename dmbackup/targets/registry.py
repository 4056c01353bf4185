"""Target types by name: how each parses its config section and how it is built.

A target type module provides ``parse_config(name, section) -> <frozen dataclass>`` (using
``config.Section`` so errors name file and field) and ``build(cfg, app) -> Target``. Adding a
type is one line in ``TYPES``. Config dataclasses carry ``type`` and ``name`` and declare
``repository = False`` when the target cannot hold a repository (the mailbox target).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from dmbackup.config import Section
from dmbackup.errors import ConfigError

TYPES = {
    "dir": "dmbackup.targets.dir_config",
    "memory": "dmbackup.targets.dir_config",
    "usb": "dmbackup.targets.usb",
    "smb": "dmbackup.targets.smb",
    "nfs": "dmbackup.targets.nfs",
    "mailbox": "dmbackup.mailout.mailbox",
}


def _module(kind: str):
    return importlib.import_module(TYPES[kind])


def parse_target(name: str, data: Any, file: str):
    s = Section(data, file, f"targets.{name}")
    kind = s.str("type", choices=tuple(TYPES))
    try:
        mod = _module(kind)
    except ImportError as exc:
        raise s.error("type", f"target type {kind!r} is not available in this build ({exc})") from None
    cfg = mod.parse_config(name, s, kind)
    s.finish()
    return cfg


def check_job_target(job, tcfg, file: str) -> None:
    if job.what == "mail" and not getattr(tcfg, "repository", True):
        raise ConfigError(
            f"job {job.name!r} backs up the mail store, but target {tcfg.name!r} is a "
            f"{tcfg.type} target that only takes config bundles: use what = \"config\" or another target",
            file=file, field=f"jobs.{job.name}.target")


def build(tcfg, app) -> Any:
    """Instantiate the Target for a parsed target config (not opened yet)."""
    return _module(tcfg.type).build(tcfg, app)


@dataclass(frozen=True)
class DirConfig:
    name: str
    type: str
    path: str
    require_mount: bool = False
    max_object_size: int | None = None
    repository = True
