"""Configuration: one TOML file parsed once into frozen dataclasses.

Every error names the file, the dotted path of the field and what was expected, and is a
``ConfigError`` (exit 2). Unknown keys are errors too: a typo must not silently fall back to a
default. Target sections are parsed by their own type (see ``dmbackup.targets.registry``) with
the same ``Section`` helper, so every target reports errors the same way.

The file is found from ``--config``, then ``$DMBACKUP_CONFIG``, then
``/etc/dmbackup/dmbackup.toml``.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import tomllib
from dataclasses import dataclass, field
from typing import Any

from dmbackup.errors import ConfigError

DEFAULT_CONFIG = "/etc/dmbackup/dmbackup.toml"
DEFAULT_CONFIG_PATHS = (
    "/etc/postfix",
    "/etc/dovecot",
    "/etc/opendkim",
    "/etc/dmbackup",
    "/etc/ssl/private",
    "/etc/letsencrypt",
)
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


@dataclass(frozen=True)
class SourceConfig:
    mail_store: str = "/var/vmail"
    config_paths: tuple[str, ...] = DEFAULT_CONFIG_PATHS
    vmail_uid: int | None = None        # None: taken from the owner of mail_store
    vmail_gid: int | None = None
    doveadm: str = "doveadm"
    dovecot_config: str | None = None   # passed as doveadm -c when set
    max_file_size: int = 64 << 30       # a file over this is reported and not stored (mail is small)


@dataclass(frozen=True)
class EncryptionConfig:
    mode: str = "repokey"               # "repokey" (AES-256-GCM, scrypt-wrapped key) or "none"
    passphrase_file: str | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


@dataclass(frozen=True)
class JobConfig:
    name: str
    what: str                           # "mail" | "config"
    target: str
    schedule: str | None = None
    full_every: int = 6
    keep_chains: int = 4
    on_plug: bool = False
    prune_after: bool = True
    verify_after: str = "none"          # "none" | "quick" | "read-data"
    drill_after: bool = False           # restore one mailbox to scratch and check it after the backup
    job_timeout: int = 6 * 3600         # seconds a run's backup/prune/verify may take (scheduler.job_time_limit)


@dataclass(frozen=True)
class NotifyConfig:
    to: tuple[str, ...] = ()
    smtp_host: str | None = None
    smtp_port: int = 587
    security: str = "starttls"          # "starttls" | "tls" | "none"
    username: str | None = None
    password_file: str | None = None
    sender: str | None = None
    ca_file: str | None = None
    on_success: bool = False


@dataclass(frozen=True)
class MonitoringConfig:
    textfile: str | None = None         # Prometheus text file, rewritten after every run (dmbackup.daemon.monitoring)


@dataclass(frozen=True)
class Config:
    file: str
    hostname: str
    source: SourceConfig
    encryption: EncryptionConfig
    targets: dict[str, Any]             # name -> target config dataclass (see targets.registry)
    jobs: dict[str, JobConfig]
    state_dir: str = "/var/lib/dmbackup"
    hooks_dir: str = "/etc/dmbackup/hooks"
    hook_timeout: int = 600
    volume_size: int = 1 * GiB
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)

    def target(self, name: str):
        try:
            return self.targets[name]
        except KeyError:
            known = ", ".join(sorted(self.targets)) or "none configured"
            raise ConfigError(f"no target named {name!r} (known: {known})", file=self.file, field="targets") from None

    def job(self, name: str) -> JobConfig:
        try:
            return self.jobs[name]
        except KeyError:
            known = ", ".join(sorted(self.jobs)) or "none configured"
            raise ConfigError(f"no job named {name!r} (known: {known})", file=self.file, field="jobs") from None


def config_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("DMBACKUP_CONFIG") or DEFAULT_CONFIG


def load(path: str | None = None) -> Config:
    path = config_path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: create it or pass --config FILE") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    return parse(raw, path)


def parse(raw: bytes | str, file: str = "<config>") -> Config:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError("not valid UTF-8", file=file) from None
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=file) from None

    from dmbackup.targets import registry   # late: targets import config helpers

    top = Section(data, file, "")
    hostname = top.str("hostname", None) or socket.gethostname()
    if "/" in hostname or hostname.startswith(".") or not hostname.strip():
        raise top.error("hostname", f"not a valid host name: {hostname!r}")

    src = Section(top.table("source", {}), file, "source")
    source = SourceConfig(
        mail_store=src.abs_path("mail_store", SourceConfig.mail_store),
        config_paths=src.str_list("config_paths", DEFAULT_CONFIG_PATHS),
        vmail_uid=src.int("vmail_uid", None, min=0),
        vmail_gid=src.int("vmail_gid", None, min=0),
        doveadm=src.str("doveadm", "doveadm"),
        dovecot_config=src.abs_path("dovecot_config", None),
        max_file_size=src.size("max_file_size", SourceConfig.max_file_size),
    )
    for i, p in enumerate(source.config_paths):
        if not os.path.isabs(p):
            raise src.error(f"config_paths[{i}]", f"expected an absolute path, got {p!r}")
    src.finish()

    enc_s = Section(top.table("encryption", {}), file, "encryption")
    encryption = EncryptionConfig(
        mode=enc_s.str("mode", "repokey", choices=("repokey", "none")),
        passphrase_file=enc_s.abs_path("passphrase_file", None),
    )
    enc_s.finish()
    if encryption.passphrase_file:
        check_secret_file(encryption.passphrase_file, file=file, field="encryption.passphrase_file",
                          what="passphrase")

    targets = {}
    for name, tdata in top.table("targets", {}).items():
        targets[name] = registry.parse_target(name, tdata, file)

    if not encryption.enabled:
        for name, t in targets.items():
            if not getattr(t, "repository", True):
                raise ConfigError(
                    f"target {name!r} sends config bundles off the machine, which must be encrypted, "
                    "but encryption.mode = \"none\": set a passphrase or remove the target",
                    file=file, field=f"targets.{name}")

    jobs = {}
    for name, jdata in top.table("jobs", {}).items():
        s = Section(jdata, file, f"jobs.{name}")
        job = JobConfig(
            name=name,
            what=s.str("what", "mail", choices=("mail", "config")),
            target=s.str("target"),
            schedule=s.str("schedule", None),
            full_every=s.int("full_every", 6, min=0),
            keep_chains=s.int("keep_chains", 4, min=1),
            on_plug=s.bool("on_plug", False),
            prune_after=s.bool("prune_after", True),
            verify_after=s.str("verify_after", "none", choices=("none", "quick", "read-data")),
            drill_after=s.bool("drill_after", False),
            job_timeout=duration(s, "job_timeout", 6 * 3600),
        )
        s.finish()
        if job.target not in targets:
            raise s.error("target", f"names target {job.target!r}, which is not defined under [targets]")
        if job.drill_after and job.what != "mail":
            raise s.error("drill_after", "a restore drill restores a mailbox: it needs what = \"mail\"")
        registry.check_job_target(job, targets[job.target], file)
        if job.schedule is not None:
            from dmbackup.daemon.schedule_spec import parse_schedule

            try:
                parse_schedule(job.schedule)
            except ValueError as exc:
                raise s.error("schedule", str(exc)) from None
        jobs[name] = job

    n_s = Section(top.table("notify", {}), file, "notify")
    notify = NotifyConfig(
        to=n_s.str_list("to", ()),
        smtp_host=n_s.str("smtp_host", None),
        smtp_port=n_s.int("smtp_port", 587, min=1, max=65535),
        security=n_s.str("security", "starttls", choices=("starttls", "tls", "none")),
        username=n_s.str("username", None),
        password_file=n_s.abs_path("password_file", None),
        sender=n_s.str("from", None),
        ca_file=n_s.abs_path("ca_file", None),
        on_success=n_s.bool("on_success", False),
    )
    n_s.finish()
    if notify.password_file:
        check_secret_file(notify.password_file, file=file, field="notify.password_file", what="relay password")
    if notify.to and not notify.smtp_host:
        raise n_s.error("smtp_host", "missing; needed to send notifications to " + ", ".join(notify.to))

    m_s = Section(top.table("monitoring", {}), file, "monitoring")
    monitoring = MonitoringConfig(textfile=m_s.abs_path("textfile", None))
    m_s.finish()
    if monitoring.textfile is not None and not monitoring.textfile.endswith(".prom"):
        raise m_s.error("textfile", f"expected a file name ending in .prom (node_exporter's textfile collector reads "
                                    f"only those), got {monitoring.textfile!r}")

    volume_size = top.size("volume_size", 1 * GiB)
    if volume_size < 1 * MiB or volume_size >= 4 * GiB:
        raise top.error("volume_size", "must be between 1M and 4G (exclusive)")
    cfg = Config(
        file=file,
        hostname=hostname,
        source=source,
        encryption=encryption,
        targets=targets,
        jobs=jobs,
        state_dir=top.abs_path("state_dir", "/var/lib/dmbackup"),
        hooks_dir=top.abs_path("hooks_dir", "/etc/dmbackup/hooks"),
        hook_timeout=top.int("hook_timeout", 600, min=1),
        volume_size=volume_size,
        notify=notify,
        monitoring=monitoring,
    )
    top.finish()
    return cfg
