"""Repository target types by name: how each parses its config section and how it is built.

A target type module provides ``parse_config(name, section, kind) -> <frozen dataclass>``
(reading a ``dmbackup.configsection.Section``, so errors name file and field) and
``build(cfg, app) -> Target``. Adding a type is one line in ``TYPES``. Config dataclasses
carry ``type`` and ``name``.

Only targets that hold a repository are here. The ``mailbox`` keeps config bundles and
nothing else; ``dmbackup.config`` parses it (``dmbackup.mailout.mailbox``) and
``dmbackup.engine.bundlestore`` opens it.
"""

from __future__ import annotations

import importlib
from typing import Any

from dmbackup.configsection import Section
from dmbackup.errors import UsageError

TYPES = {
    "dir": "dmbackup.targets.dir_config",
    "memory": "dmbackup.targets.dir_config",
    "usb": "dmbackup.targets.usb",
    "smb": "dmbackup.targets.smb",
    "nfs": "dmbackup.targets.nfs",
}


def _module(kind: str):
    return importlib.import_module(TYPES[kind])


def parse_section(name: str, s: Section, kind: str):
    """The config of target ``name`` of type ``kind`` from its section (``type`` already read);
    the caller calls ``s.finish()``."""
    try:
        mod = _module(kind)
    except ImportError as exc:
        raise s.error("type", f"target type {kind!r} is not available in this build ({exc})") from None
    return mod.parse_config(name, s, kind)


def parse_target(name: str, data: Any, file: str):
    """The config of one ``[targets.NAME]`` table of a repository target type."""
    s = Section(data, file, f"targets.{name}")
    cfg = parse_section(name, s, s.str("type", choices=tuple(TYPES)))
    s.finish()
    return cfg


def build(tcfg, app) -> Any:
    """Instantiate the Target for a parsed target config (not opened yet)."""
    if tcfg.type not in TYPES:          # a bundle store (dmbackup.config.holds_repository)
        raise UsageError(f"target {tcfg.name!r} is a {tcfg.type} target: it holds no repository")
    return _module(tcfg.type).build(tcfg, app)
