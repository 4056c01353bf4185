"""Configuration: one TOML file parsed once into frozen dataclasses.

Every error names the file, the dotted path of the field and what was expected, and is a
``ConfigError`` (exit 2). Unknown keys are errors too: a typo must not silently fall back to a
default. Every section is read with ``dmbackup.configsection.Section``; a target section is
parsed by its own type: the repository targets by ``dmbackup.targets.registry``, the
``mailbox`` (a bundle store that keeps config bundles only) by ``dmbackup.mailout.mailbox``.
``holds_repository`` is the one place that tells the two kinds apart. A job's ``schedule``
is parsed here too (``ScheduleSpec``), so ``check-config`` refuses one it cannot read.

The file is found from ``--config``, then ``$DMBACKUP_CONFIG``, then
``/etc/dmbackup/dmbackup.toml``.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dmbackup.configsection import GiB, MiB, Section, check_secret_file, duration
from dmbackup.errors import ConfigError
from dmbackup.targets import registry

if TYPE_CHECKING:
    from dmbackup.source.databases.spec import DatabaseSpec

DEFAULT_CONFIG = "/etc/dmbackup/dmbackup.toml"
DEFAULT_CONFIG_PATHS = (
    "/etc/postfix",
    "/etc/dovecot",
    "/etc/opendkim",
    "/etc/dmbackup",
    "/etc/ssl/private",
    "/etc/letsencrypt",
)
# Target types that keep config bundles only (dmbackup.engine.bundlestore), never a repository.
BUNDLE_STORE_TYPES = ("mailbox",)
TARGET_TYPES = (*registry.TYPES, *BUNDLE_STORE_TYPES)


def holds_repository(tcfg) -> bool:
    """Whether a parsed target holds a repository (dir, usb, smb, nfs), as opposed to being a
    bundle store that only takes config bundles (the mailbox)."""
    return tcfg.type not in BUNDLE_STORE_TYPES


@dataclass(frozen=True)
class SourceConfig:
    mail_store: str = "/var/vmail"
    config_paths: tuple[str, ...] = DEFAULT_CONFIG_PATHS
    vmail_uid: int | None = None        # None: taken from the owner of mail_store
    vmail_gid: int | None = None
    doveadm: str = "doveadm"
    dovecot_config: str | None = None   # passed as doveadm -c when set
    max_file_size: int = 64 << 30       # a file over this is reported and not stored (mail is small)
    databases: tuple[DatabaseSpec, ...] = ()   # [[source.databases]]: dumped into every config bundle


@dataclass(frozen=True)
class EncryptionConfig:
    mode: str = "repokey"               # "repokey" (AES-256-GCM, scrypt-wrapped key) or "none"
    passphrase_file: str | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


# --- job schedules ---------------------------------------------------------------------------
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_UNITS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400}


@dataclass(frozen=True)
class ScheduleSpec:
    kind: str                 # "daily" | "weekly" | "every"
    at: str | None = None     # "HH:MM" for daily/weekly
    day: str | None = None    # weekday for weekly
    every_seconds: int = 0    # for "every"

    @property
    def interval_seconds(self) -> int:
        return {"daily": 86400, "weekly": 7 * 86400}.get(self.kind, self.every_seconds)


def parse_schedule(text: str) -> ScheduleSpec:
    s = " ".join(text.lower().split())
    m = re.fullmatch(r"daily(?: at (\d{1,2}):(\d{2}))?", s)
    if m:
        return ScheduleSpec("daily", at=_hhmm(m.group(1), m.group(2), text))
    m = re.fullmatch(r"weekly(?: on (\w+))?(?: at (\d{1,2}):(\d{2}))?", s)
    if m:
        day = m.group(1) or "sunday"
        if day not in DAYS:
            raise ValueError(f"unknown day {day!r} in schedule {text!r}; expected one of {', '.join(DAYS)}")
        return ScheduleSpec("weekly", at=_hhmm(m.group(2), m.group(3), text), day=day)
    m = re.fullmatch(r"every (\d+) (minutes?|hours?|days?)", s)
    if m:
        n = int(m.group(1))
        if n <= 0:
            raise ValueError(f"schedule {text!r}: the interval must be positive")
        return ScheduleSpec("every", every_seconds=n * _UNITS[m.group(2)])
    raise ValueError(
        f"cannot understand schedule {text!r}; expected e.g. \"daily at 02:30\", "
        "\"weekly on sunday at 03:00\" or \"every 6 hours\""
    )


def _hhmm(h: str | None, m: str | None, text: str) -> str:
    if h is None:
        return "00:00"
    hh, mm = int(h), int(m)
    if hh > 23 or mm > 59:
        raise ValueError(f"schedule {text!r}: {h}:{m} is not a time of day")
    return f"{hh:02d}:{mm:02d}"


# --- due times, shared with `status` ---------------------------------------------------------


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
    """The ``Config`` of a TOML text; sections are checked in file order of importance, so the
    first error reported is the one a person would fix first."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError("not valid UTF-8", file=file) from None
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=file) from None

    top = Section(data, file, "")
    hostname = top.str("hostname", None) or _hostname()
    if "/" in hostname or hostname.startswith(".") or not hostname.strip():
        raise top.error("hostname", f"not a valid host name: {hostname!r}")
    source = _source(Section(top.table("source", {}), file, "source"))
    encryption = _encryption(Section(top.table("encryption", {}), file, "encryption"))
    targets = _targets(top.table("targets", {}), file, encryption)
    jobs = {name: _job(Section(jdata, file, f"jobs.{name}"), name, targets)
            for name, jdata in top.table("jobs", {}).items()}
    notify = _notify(Section(top.table("notify", {}), file, "notify"))
    monitoring = _monitoring(Section(top.table("monitoring", {}), file, "monitoring"))
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


def _hostname() -> str:
    import socket         # imported here: most commands never need it (start-up time, issue 17)

    return socket.gethostname()


def _databases(src: Section) -> tuple:
    if src.raw("databases") is None:
        return ()
    # the databases package (sqlite3, tempfile, the engines) is imported only when configured
    from dmbackup.source.databases.spec import parse_specs

    return tuple(parse_specs(src.raw("databases"), file=src.file, field="source.databases"))


def _source(src: Section) -> SourceConfig:
    source = SourceConfig(
        mail_store=src.abs_path("mail_store", SourceConfig.mail_store),
        config_paths=src.str_list("config_paths", DEFAULT_CONFIG_PATHS),
        vmail_uid=src.int("vmail_uid", None, min=0),
        vmail_gid=src.int("vmail_gid", None, min=0),
        doveadm=src.str("doveadm", "doveadm"),
        dovecot_config=src.abs_path("dovecot_config", None),
        max_file_size=src.size("max_file_size", SourceConfig.max_file_size),
        databases=_databases(src),
    )
    for i, p in enumerate(source.config_paths):
        if not os.path.isabs(p):
            raise src.error(f"config_paths[{i}]", f"expected an absolute path, got {p!r}")
    src.finish()
    return source


def _encryption(enc_s: Section) -> EncryptionConfig:
    encryption = EncryptionConfig(
        mode=enc_s.str("mode", "repokey", choices=("repokey", "none")),
        passphrase_file=enc_s.abs_path("passphrase_file", None),
    )
    enc_s.finish()
    if encryption.passphrase_file:
        check_secret_file(encryption.passphrase_file, file=enc_s.file, field="encryption.passphrase_file",
                          what="passphrase")
    return encryption


def _targets(tables: dict, file: str, encryption: EncryptionConfig) -> dict[str, Any]:
    targets = {name: _target(name, tdata, file) for name, tdata in tables.items()}
    if not encryption.enabled:
        for name, t in targets.items():
            if not holds_repository(t):
                raise ConfigError(
                    f"target {name!r} sends config bundles off the machine, which must be encrypted, "
                    "but encryption.mode = \"none\": set a passphrase or remove the target",
                    file=file, field=f"targets.{name}")
    return targets


def _target(name: str, data: Any, file: str):
    """One ``[targets.NAME]``: a repository target through the registry, or a bundle store."""
    s = Section(data, file, f"targets.{name}")
    kind = s.str("type", choices=TARGET_TYPES)
    if kind in BUNDLE_STORE_TYPES:
        from dmbackup.mailout.mailbox import parse_config    # late: smtplib, imaplib, email

        cfg = parse_config(name, s, kind)
    else:
        cfg = registry.parse_section(name, s, kind)
    s.finish()
    return cfg


def _job(s: Section, name: str, targets: dict) -> JobConfig:
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
    tcfg = targets[job.target]
    if job.what == "mail" and not holds_repository(tcfg):
        raise s.error("target", f"job {job.name!r} backs up the mail store, but target {tcfg.name!r} is a "
                                f"{tcfg.type} target that only takes config bundles: use what = \"config\" "
                                "or another target")
    if job.schedule is not None:
        try:
            parse_schedule(job.schedule)
        except ValueError as exc:
            raise s.error("schedule", str(exc)) from None
    return job


def _notify(n_s: Section) -> NotifyConfig:
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
        check_secret_file(notify.password_file, file=n_s.file, field="notify.password_file", what="relay password")
    if notify.to and not notify.smtp_host:
        raise n_s.error("smtp_host", "missing; needed to send notifications to " + ", ".join(notify.to))
    return notify


def _monitoring(m_s: Section) -> MonitoringConfig:
    monitoring = MonitoringConfig(textfile=m_s.abs_path("textfile", None))
    m_s.finish()
    if monitoring.textfile is not None and not monitoring.textfile.endswith(".prom"):
        raise m_s.error("textfile", f"expected a file name ending in .prom (node_exporter's textfile collector reads "
                                    f"only those), got {monitoring.textfile!r}")
    return monitoring
