"""Config parsing and construction for the ``dir`` (and test-only ``memory``) targets."""

from __future__ import annotations

from dataclasses import dataclass

_MEMORY: dict[str, object] = {}   # memory targets live as long as the process


@dataclass(frozen=True)
class DirConfig:
    name: str
    type: str
    path: str
    require_mount: bool = False
    max_object_size: int | None = None


def parse_config(name, s, kind):
    if kind == "memory":
        return DirConfig(name=name, type=kind, path="")
    return DirConfig(
        name=name,
        type=kind,
        path=s.abs_path("path"),
        require_mount=s.bool("require_mount", False),
        max_object_size=s.size("max_object_size", None),
    )


def build(cfg: DirConfig, app):
    if cfg.type == "memory":
        from dmbackup.targets.memory import MemoryTarget

        return _MEMORY.setdefault(cfg.name, MemoryTarget(cfg.name))
    from dmbackup.targets.dir import DirTarget

    return DirTarget(cfg.name, cfg.path, require_mount=cfg.require_mount,
                     max_object_size=cfg.max_object_size)
