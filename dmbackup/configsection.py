"""Typed access to TOML tables: the one way every config section is read and checked.

``Section`` remembers which keys were read so ``finish()`` can reject the rest (a typo must
not silently fall back to a default), and every error it raises is a ``ConfigError`` naming
the file and the dotted field path. ``dmbackup.config`` parses the file with it, and each
target type (``dmbackup.targets.registry``) and the mailbox (``dmbackup.mailout.mailbox``)
parse their own sections with it; this module imports neither, so none of them import each
other to share it.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

from dmbackup.errors import ConfigError

GiB = 1 << 30
MiB = 1 << 20
_MISSING = object()


class Section:
    """Typed access to one TOML table; remembers which keys were read to reject the rest."""

    def __init__(self, data: Any, file: str, path: str):
        if not isinstance(data, dict):
            raise ConfigError(f"expected a table, got {type(data).__name__}", file=file, field=path)
        self.data, self.file, self.path = data, file, path
        self.seen: set[str] = set()

    def _f(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, field=self._f(key))

    def _get(self, key: str, default: Any, types: tuple, expected: str) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise self.error(key, f"missing; expected {expected}")
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in types:
            raise self.error(key, f"expected {expected}, got {value!r}")
        if not isinstance(value, types):
            raise self.error(key, f"expected {expected}, got {value!r}")
        return value

    def str(self, key: str, default: Any = _MISSING, *, choices: tuple[str, ...] | None = None) -> Any:
        value = self._get(key, default, (str,), "a string" if not choices else " or ".join(map(repr, choices)))
        if value is not None and value is not default and choices and value not in choices:
            raise self.error(key, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        if isinstance(value, str) and not value and default is _MISSING:
            raise self.error(key, "must not be empty")
        return value

    def int(self, key: str, default: Any = _MISSING, *, min: int | None = None, max: int | None = None) -> Any:
        value = self._get(key, default, (int,), "an integer")
        if isinstance(value, int) and value is not default:
            if min is not None and value < min:
                raise self.error(key, f"must be at least {min}, got {value}")
            if max is not None and value > max:
                raise self.error(key, f"must be at most {max}, got {value}")
        return value

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, default, (bool,), "true or false")

    def str_list(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default, (list, str), "a list of strings")
        if isinstance(value, str):
            value = [value]
        if value is not default:
            for i, v in enumerate(value):
                if not isinstance(v, str) or not v:
                    raise self.error(f"{key}[{i}]", f"expected a non-empty string, got {v!r}")
            value = tuple(value)
        return value

    def abs_path(self, key: str, default: Any = _MISSING) -> Any:
        value = self.str(key, default)
        if isinstance(value, str) and value is not default and not os.path.isabs(value):
            raise self.error(key, f"expected an absolute path, got {value!r}")
        return value

    def size(self, key: str, default: Any = _MISSING) -> Any:
        """A byte count: an integer or a string like "512M", "1G", "4 GiB"."""
        self.seen.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise self.error(key, "missing; expected a size such as \"1G\"")
            return default
        value = self.data[key]
        try:
            return parse_size(value)
        except ValueError:
            raise self.error(key, f"expected a size such as 1073741824 or \"1G\", got {value!r}") from None

    def raw(self, key: str) -> Any:
        """The value as TOML gave it (None when absent), for a parser of its own (an array
        of tables such as ``[[source.databases]]``, read by ``databases.parse_specs``)."""
        self.seen.add(key)
        return self.data.get(key)

    def table(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default, (dict,), "a table")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.error(unknown[0], "unknown key (check the spelling; see README.md, Configuration)")


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(value)
        return value
    if not isinstance(value, str):
        raise ValueError(value)
    s = value.strip().upper().replace(" ", "").removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        n = float(s[:-1]) * mult[s[-1]] if s and s[-1] in mult else float(s)
        if not n > 0 or n != n or n == float("inf"):
            raise ValueError(value)
        return int(n)
    except OverflowError:
        raise ValueError(value) from None


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> int:
    """Seconds from an integer or a string like "6h", "90m", "45s", "1h30m" or "3600"."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(value)
        return value
    if not isinstance(value, str):
        raise ValueError(value)
    s = value.strip().lower().replace(" ", "")
    if s.isdigit():
        return parse_duration(int(s))
    parts = re.findall(r"(\d+)([smhd])", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise ValueError(value)
    return parse_duration(sum(int(n) * _DURATION_UNITS[u] for n, u in parts))


def duration(s: "Section", key: str, default: int) -> int:
    s.seen.add(key)
    if key not in s.data:
        return default
    try:
        return parse_duration(s.data[key])
    except ValueError:
        raise s.error(key, f"expected a duration such as \"6h\", \"90m\" or a number of seconds, "
                           f"got {s.data[key]!r}") from None


def check_secret_file(path: str, *, file: str, field: str, what: str) -> None:
    """A secret file must exist, be readable, and not be readable by group or others."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist: create it (mode 0600)", file=file, field=field) from None
    except OSError as exc:
        raise ConfigError(f"{what} file {path} cannot be read: {exc.strerror}", file=file, field=field) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} file {path} is not a regular file", file=file, field=field)
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{what} file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}",
            file=file, field=field)
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{what} file {path} is not readable by this user", file=file, field=field)
