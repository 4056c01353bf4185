"""Running the database tools: finding them, a scrubbed environment, one-line errors.

Every child gets the scrubbed environment of ``child_env`` minus the variables the database
tools would take connection settings or passwords from (MYSQL_*, PG*, LDAP*): what a tool
connects to and as whom comes from the spec alone. No credential is ever in an argv or an
environment.
"""

from __future__ import annotations

import functools
import glob
import os
import pwd
import re
import shutil
import subprocess
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from dmbackup.system.childenv import child_env

if TYPE_CHECKING:
    from dmbackup.source.databases.spec import DatabaseSpec

_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables the tools read connection settings or passwords from: never inherited.
_TOOL_VARS = re.compile(r"^(MYSQL|MARIADB|PG|LDAP)")
_MAX_MESSAGE = 300


def _child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not _TOOL_VARS.match(k)}
    env = child_env({"LC_ALL": "C.UTF-8", "LDAPNOINIT": "1", **(extra or {})}, base=base)
    env.setdefault("PATH", _SYSTEM_PATH)
    return env


def _which(*names: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + _SYSTEM_PATH
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def _pg_tool(name: str) -> str | None:
    """The newest version's tool from /usr/lib/postgresql/*/bin, else PATH's (Debian's PATH
    has pg_wrapper, which picks a version by cluster)."""
    def version(p: str) -> tuple[int, ...]:
        v = p.split("/")[-3]
        return tuple(int(x) for x in v.split(".") if x.isdigit()) or (0,)
    found = sorted((p for p in glob.glob(f"/usr/lib/postgresql/*/bin/{name}") if os.access(p, os.X_OK)),
                   key=version)
    return found[-1] if found else _which(name)


def _tool_for(spec: DatabaseSpec, role: str) -> str | None:
    if spec.type == "mysql":
        return {"dump": _which("mariadb-dump", "mysqldump"), "client": _which("mariadb", "mysql")}[role]
    if spec.type == "postgresql":
        return _pg_tool({"dump": "pg_dump", "restore": "pg_restore", "client": "psql"}[role])
    if spec.type == "ldap":
        return _which({"dump": "slapcat", "client": "ldapmodify", "search": "ldapsearch"}[role])
    return None


_INSTALL = {"mysql": "apt install mariadb-client", "postgresql": "apt install postgresql-client",
            "ldap": "apt install slapd ldap-utils"}


def _need_tool(spec: DatabaseSpec, role: str, error: type[Exception]) -> str:
    tool = _tool_for(spec, role)
    if tool is None:
        what = {"dump": "dump tool", "restore": "restore tool", "client": "client", "search": "ldapsearch"}[role]
        raise error(f"{spec.label}: no {spec.type} {what} found: {_INSTALL[spec.type]}")
    return tool


@functools.lru_cache(maxsize=None)
def tool_version(tool: str) -> str:
    """``tool --version`` in one line (``slapd -VV`` for slapcat); "" when it says nothing."""
    argv = [tool, "--version"]
    if os.path.basename(tool) in ("slapcat", "slapd", "slapadd"):
        argv = [_which("slapd") or tool, "-VV"]
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=_child_env(), timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in (p.stdout + p.stderr).decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line:
            m = re.search(r"\$OpenLDAP: (.*?)(\s*\(.*)?\$", line)
            return m.group(1).strip() if m else " ".join(line.split())
    return ""


def _as_user(user: str, what: str, error: type[Exception]) -> tuple[dict[str, Any], dict[str, str]]:
    """Popen keyword arguments and environment entries to run a child as the OS user ``user``
    (peer authentication): uid, gid and that user's groups, HOME, cwd /."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise error(f"{what}: there is no system user {user!r} to run as (peer authentication)") from None
    env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}
    if os.geteuid() == pw.pw_uid:
        return {"cwd": "/"}, env
    if os.geteuid() != 0:
        raise error(f"{what}: dmbackup must run as root (or as {user}) to connect as {user}")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": os.getgrouplist(user, pw.pw_gid),
            "cwd": "/"}, env


def _one_line(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [" ".join(ln.split()) for ln in text.splitlines() if ln.strip()]
    # Tools print the interesting line first (pg: "error: connection ... failed"), hints after.
    msg = "; ".join(lines) or "no message"
    return msg if len(msg) <= _MAX_MESSAGE else msg[: _MAX_MESSAGE - 3] + "..."


def _run(argv: list[str], *, error: type[Exception], what: str, stdin: Any = subprocess.DEVNULL,
         stdout: Any = subprocess.PIPE, input: bytes | None = None, env: Mapping[str, str] | None = None,
         as_user: str | None = None, ok: Iterable[int] = (0,)) -> subprocess.CompletedProcess:
    """Run a database tool; ``error`` with one line (``what``: the tool's stderr) unless its exit
    status is in ``ok``. ``as_user``: run as that OS user (see ``_as_user``)."""
    kwargs: dict[str, Any] = {}
    extra = dict(env or {})
    if as_user is not None:
        kwargs, user_env = _as_user(as_user, what, error)
        extra = {**user_env, **extra}
    if input is not None:
        kwargs["input"] = input
    else:
        kwargs["stdin"] = stdin
    try:
        p = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE,
                           env=_child_env(extra), **kwargs)
    except OSError as exc:
        raise error(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None
    if p.returncode not in ok:
        raise error(f"{what}: {os.path.basename(argv[0])} exited {p.returncode}: {_one_line(p.stderr)}")
    return p


def _write_from(argv: list[str], path: str, **kwargs: Any) -> None:
    with open(path, "wb") as f:               # a regular file: pg_dump can seek back
        _run(argv, stdout=f, **kwargs)


def _check_readable(path: str | None, spec, error: type[Exception]) -> None:
    if path and not os.access(path, os.R_OK):
        raise error(f"{spec.label}: credentials file {path} cannot be read")
