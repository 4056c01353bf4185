"""``[[source.databases]]`` entries: ``DatabaseSpec`` and ``parse_specs`` (see the package
docstring for what each engine does with them)."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from dmbackup.errors import ConfigError

TYPES = ("mysql", "postgresql", "sqlite", "ldap")
EXTENSIONS = {"mysql": "sql", "postgresql": "pgdump", "sqlite": "sqlite", "ldap": "ldif"}
DEFAULT_DEFAULTS_FILE = "/etc/mysql/debian.cnf"
DEFAULT_PG_USER = "postgres"
DEFAULT_SLAPD_CONFIG = "/etc/ldap/slapd.d"
DEFAULT_LDAP_URI = "ldapi:///"
_KEYS = {
    "mysql": {"type", "name", "defaults_file"},
    "postgresql": {"type", "name", "user", "host", "port"},
    "sqlite": {"type", "path", "name"},
    "ldap": {"type", "base", "name", "slapd_config", "uri"},
}
KEYS = _KEYS                             # the keys of each type, for docs and tests
_REQUIRED = {"mysql": "name", "postgresql": "name", "sqlite": "path", "ldap": "base"}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.@+-]")


# --- specs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatabaseSpec:
    """One ``[[source.databases]]`` entry.

    ``name`` is the database name for mysql/postgresql; for sqlite and ldap it is a label
    (default: the file's stem; the base's dc= parts joined by dots) used for the dump's file
    name, ``<file_stem>.<ext>`` under ``databases/`` in a bundle and in ``restore --to DIR``.
    """

    type: str
    name: str
    path: str | None = None              # sqlite: the database file
    base: str | None = None              # ldap: the suffix to slapcat
    defaults_file: str | None = None     # mysql: [client] user, password, socket
    user: str | None = None              # postgresql: OS user = role, peer authentication
    host: str | None = None              # postgresql: socket directory (default: libpq's)
    port: int | None = None              # postgresql
    slapd_config: str | None = None      # ldap: slapd.d directory or slapd.conf
    uri: str | None = None               # ldap: where restore talks to slapd

    @property
    def ext(self) -> str:
        return EXTENSIONS[self.type]

    @property
    def file_stem(self) -> str:
        stem = _SAFE_NAME.sub("_", self.name)
        return "_" + stem if stem.startswith(".") else stem

    @property
    def filename(self) -> str:
        """``<file_stem>.<ext>``: the dump's name in a bundle's ``databases/`` directory."""
        return f"{self.file_stem}.{self.ext}"

    @property
    def label(self) -> str:
        """How messages name this database: ``mysql database 'postfix'``."""
        where = {"sqlite": self.path, "ldap": self.base}.get(self.type)
        kind = {"mysql": "mysql database", "postgresql": "postgresql database",
                "sqlite": "sqlite database", "ldap": "ldap directory"}[self.type]
        return f"{kind} {self.name!r}" + (f" ({where})" if where and where != self.name else "")


@dataclass(frozen=True)
class DumpInfo:
    """What ``dump`` wrote; ``as_dict()`` is what a manifest records."""

    name: str
    type: str
    ext: str
    tool: str
    tool_version: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_specs(entries: Any, *, file: str | None = None,
                field: str = "source.databases") -> list[DatabaseSpec]:
    """``[[source.databases]]`` (a list of tables) -> specs; ``ConfigError`` naming the entry
    (``source.databases[1].name: ...``) for anything wrong, unknown keys included."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ConfigError(f"expected a list of tables ([[{field}]]), got {type(entries).__name__}",
                          file=file, field=field)
    specs: list[DatabaseSpec] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = f"{field}[{i}]"
        specs.append(spec := _parse_one(entry, file=file, where=where))
        if spec.filename in seen:
            raise ConfigError(f"its dump would be {spec.filename}, as that of {seen[spec.filename]}: "
                              "give one of them another name", file=file, field=where)
        seen[spec.filename] = where
    return specs


def _parse_one(entry: Any, *, file: str | None, where: str) -> DatabaseSpec:
    def err(key: str | None, message: str) -> ConfigError:
        return ConfigError(message, file=file, field=f"{where}.{key}" if key else where)

    if not isinstance(entry, dict):
        raise err(None, f"expected a table, got {type(entry).__name__}")
    kind = entry.get("type")
    if kind is None:
        raise err("type", f"missing; expected one of {', '.join(map(repr, TYPES))}")
    if kind not in TYPES:
        raise err("type", f"expected one of {', '.join(map(repr, TYPES))}, got {kind!r}")
    unknown = sorted(set(entry) - _KEYS[kind])
    if unknown:
        raise err(unknown[0], f"unknown key for a {kind} database (allowed: "
                              f"{', '.join(sorted(_KEYS[kind] - {'type'}))})")

    def text(key: str, default: str | None = None, *, absolute: bool = False) -> str | None:
        if key not in entry:
            if key == _REQUIRED[kind]:
                raise err(key, "missing; expected a non-empty string")
            return default
        value = entry[key]
        if not isinstance(value, str) or not value.strip() or "\n" in value or "\0" in value:
            raise err(key, f"expected a non-empty one-line string, got {value!r}")
        if absolute and not os.path.isabs(value):
            raise err(key, f"expected an absolute path, got {value!r}")
        return value

    if kind == "mysql":
        return DatabaseSpec(kind, text("name"),
                            defaults_file=text("defaults_file", DEFAULT_DEFAULTS_FILE, absolute=True))
    if kind == "postgresql":
        port = entry.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise err("port", f"expected a port number (1-65535), got {port!r}")
        return DatabaseSpec(kind, text("name"), user=text("user", DEFAULT_PG_USER),
                            host=text("host", None, absolute=True), port=port)
    if kind == "sqlite":
        path = text("path", absolute=True)
        return DatabaseSpec(kind, text("name", os.path.splitext(os.path.basename(path))[0] or "sqlite"),
                            path=path)
    base = text("base")
    if not re.fullmatch(r"[^=,]+=[^,]+(,\s*[^=,]+=[^,]+)*", base.strip()):
        raise err("base", f"expected a DN such as 'dc=example,dc=org', got {base!r}")
    dcs = [v for k, v in (part.split("=", 1) for part in base.split(",")) if k.strip().lower() == "dc"]
    return DatabaseSpec(kind, text("name", ".".join(d.strip() for d in dcs) or base.strip()),
                        base=base.strip(), slapd_config=text("slapd_config", DEFAULT_SLAPD_CONFIG, absolute=True),
                        uri=text("uri", DEFAULT_LDAP_URI))

