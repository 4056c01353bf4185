"""Which files form the config bundle, and the manifest that describes the appliance.

``collect(paths)`` walks the configured ``config_paths`` without following symbolic links
(a link is recorded as a link) and returns one ``Item`` per file, directory and link with
its mode, owner and modification time; a missing path is skipped and named in ``missing``;
anything that cannot be taken (a socket, an unreadable directory) is skipped with a warning.
A configured path that is itself a symbolic link is recorded as a link AND its target is
collected too, because a restored link pointing at nothing helps nobody.

``build_manifest(...)`` describes the machine the bundle came from, so the person restoring
onto a fresh appliance knows what to install before the files make sense: host name, time,
dmbackup / Postfix / Dovecot versions, Dovecot's ``mail_location``, the vmail uid/gid and
every domain and mailbox under the mail store (``<store>/<domain>/<user>/Maildir``) with
its size and message count. External commands (``postconf``, ``dovecot``, ``doveconf``)
are optional: when one is missing or fails, its field is null. With the user databases
(``databases``: one record per dump, see ``dmbackup.engine.configdb``) it also lists the
domains, mailboxes and aliases each database knows, and cross-checks its mailboxes with the
Maildirs found (``cross_check``: ``without_maildir``, ``without_mailbox``).

Pure functions over paths: no CLI, no configuration object, no network.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import stat
import subprocess
import threading
from dataclasses import dataclass, field

from dmbackup import utctime
from dmbackup import __version__
from dmbackup.source import userdb
from dmbackup.system.childenv import child_env

MANIFEST_FORMAT = "dmbackup-config-manifest"
MANIFEST_VERSION = 1
_PROBE_TIMEOUT = 10


@dataclass(frozen=True)
class Item:
    """One collected file-system object; ``path`` is absolute and normalised."""

    path: str
    type: str               # "file" | "dir" | "symlink"
    mode: int               # permission bits only (stat.S_IMODE)
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0           # files only, as seen by the scan
    target: str | None = None   # symlinks only


@dataclass
class Collection:
    items: list[Item] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)     # configured paths that do not exist
    warnings: list[str] = field(default_factory=list)    # things skipped for another reason
    followed: dict[str, str] = field(default_factory=dict)  # configured link -> its target

    @property
    def files(self) -> int:
        return sum(1 for i in self.items if i.type == "file")

    @property
    def bytes(self) -> int:
        return sum(i.size for i in self.items if i.type == "file")


def _item(path: str, st: os.stat_result, kind: str, target: str | None = None) -> Item:
    return Item(path=path, type=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                mtime_ns=st.st_mtime_ns, size=st.st_size if kind == "file" else 0, target=target)


def collect(paths) -> Collection:
    """Walk ``paths`` (absolute) into a sorted, duplicate-free list of items."""
    out = Collection()
    seen: set[str] = set()
    roots = []
    for p in paths:
        if not os.path.isabs(p):
            raise ValueError(f"config path must be absolute: {p!r}")
        roots.append(os.path.normpath(p))

    def take(path: str, st: os.stat_result) -> str | None:
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(path)
            except OSError as exc:
                out.warnings.append(f"cannot read symbolic link {path}: {exc.strerror}; skipped")
                return None
            out.items.append(_item(path, st, "symlink", target))
            return "symlink"
        if stat.S_ISREG(mode):
            out.items.append(_item(path, st, "file"))
            return "file"
        if stat.S_ISDIR(mode):
            out.items.append(_item(path, st, "dir"))
            return "dir"
        out.warnings.append(f"{path} is not a file, directory or link (a socket or device?); skipped")
        return None

    def walk(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return          # vanished between listing and stat: nothing to take
        except OSError as exc:
            out.warnings.append(f"cannot read {path}: {exc.strerror}; skipped")
            return
        if take(path, st) != "dir":
            return
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            out.warnings.append(f"cannot list directory {path}: {exc.strerror}; its content is skipped")
            return
        for name in names:
            walk(os.path.join(path, name))

    for root in roots:
        if root == "/MANIFEST.json":
            out.warnings.append("/MANIFEST.json clashes with the bundle's manifest; skipped")
            continue
        try:
            st = os.lstat(root)
        except FileNotFoundError:
            out.missing.append(root)
            continue
        except OSError as exc:
            out.warnings.append(f"cannot read config path {root}: {exc.strerror}; skipped")
            continue
        walk(root)
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(root)
            if os.path.exists(real) and real != "/":
                out.followed[root] = real
                walk(real)
    out.items.sort(key=lambda i: i.path)
    return out


class _Probe(threading.Thread):
    def __init__(self, argv: list[str]):
        super().__init__(name="dmbackup-probe", daemon=True)
        self.argv, self.result = argv, None

    def run(self) -> None:
        self.result = _run_now(self.argv)


_probes: dict[tuple, _Probe] = {}
_probes_lock = threading.Lock()


def _probe_argvs(dovecot_config: str | None) -> list[list[str]]:
    return [["postconf", "-h", "mail_version"], ["dovecot", "--version"],
            ["doveconf"] + (["-c", dovecot_config] if dovecot_config else []) + ["-h", "mail_location"]]


def probe_ahead(dovecot_config: str | None = None) -> None:
    """Start the probe commands of the manifest (postconf, dovecot, doveconf) in the
    background: a mail backup calls this when it starts and builds the manifest when its walk
    is done, so the ~10 ms of process start-ups cost it nothing (issue 17). The next probe
    of the same command takes the result; one an earlier run started and never asked for is
    replaced (a long-lived daemon never reports a version from days ago)."""
    with _probes_lock:
        for argv in _probe_argvs(dovecot_config):
            _probes[tuple(argv)] = t = _Probe(argv)
            t.start()


def _run(argv: list[str]) -> str | None:
    """First line of a probe command's output, or None when it is absent or fails."""
    with _probes_lock:
        ahead = _probes.pop(tuple(argv), None)
    if ahead is not None:
        ahead.join()
        return ahead.result
    return _run_now(argv)


def _run_now(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=_PROBE_TIMEOUT,
                              stdin=subprocess.DEVNULL, env=child_env())
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    line = proc.stdout.strip().splitlines()
    return line[0].strip() if line else None


def postfix_version() -> str | None:
    return _run(_probe_argvs(None)[0])


def dovecot_version() -> str | None:
    return _run(_probe_argvs(None)[1])


def mail_location(mail_store: str, dovecot_config: str | None = None) -> tuple[str, str]:
    """(value, source): from ``doveconf -h mail_location`` or, failing that, from the config."""
    value = _run(_probe_argvs(dovecot_config)[2])
    if value:
        return value, "doveconf"
    return f"maildir:{mail_store}/%d/%n/Maildir", "dmbackup config"


def _count_maildir(maildir: str) -> tuple[int, int, int]:
    """(messages, bytes, folders) of one Maildir: files in every cur/ and new/ below it."""
    messages = size = folders = 0
    stack = [maildir]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        names = {e.name for e in entries if e.is_dir(follow_symlinks=False)}
        if "cur" in names or "new" in names:
            folders += 1
        for e in entries:
            if not e.is_dir(follow_symlinks=False):
                continue
            if e.name in ("cur", "new"):
                try:
                    with os.scandir(e.path) as it:
                        for m in it:
                            if m.is_file(follow_symlinks=False):
                                try:
                                    size += m.stat(follow_symlinks=False).st_size
                                    messages += 1
                                except FileNotFoundError:
                                    pass    # moved new/ -> cur/ while we looked
                except OSError:
                    pass
            elif e.name != "tmp":
                stack.append(e.path)
    return messages, size, folders


def mailboxes(mail_store: str) -> list[dict]:
    """Domains under the store, each with its mailboxes (``<store>/<domain>/<user>/Maildir``)."""
    domains = []
    try:
        doms = [e for e in os.scandir(mail_store) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    for dom in sorted(doms, key=lambda e: e.name):
        boxes = []
        try:
            users = sorted((e for e in os.scandir(dom.path) if e.is_dir(follow_symlinks=False)),
                           key=lambda e: e.name)
        except OSError:
            continue
        for user in users:
            md = os.path.join(user.path, "Maildir")
            if not os.path.isdir(md):
                continue
            n, size, folders = _count_maildir(md)
            boxes.append({"user": user.name, "address": f"{user.name}@{dom.name}",
                          "messages": n, "bytes": size, "folders": folders})
        if boxes:
            domains.append({"domain": dom.name, "mailboxes": boxes,
                            "messages": sum(b["messages"] for b in boxes),
                            "bytes": sum(b["bytes"] for b in boxes)})
    return domains


def vmail_owner(mail_store: str, uid: int | None = None, gid: int | None = None) -> tuple[int | None, int | None]:
    """Configured ids win; otherwise the owner of the mail store; None when neither is known."""
    if uid is not None and gid is not None:
        return uid, gid
    try:
        st = os.stat(mail_store)
    except OSError:
        return uid, gid
    return (uid if uid is not None else st.st_uid), (gid if gid is not None else st.st_gid)


def maildirs_in(dirs) -> set[str]:
    """``user@domain`` of every ``<domain>/<user>/Maildir`` among the store-relative directory
    paths ``dirs`` (a snapshot's catalog rows)."""
    out = set()
    for d in dirs:
        parts = d.split("/")
        if len(parts) == 3 and parts[2] == "Maildir" and parts[0] and parts[1]:
            out.add(f"{parts[1]}@{parts[0]}")
    return out


def maildir_addresses(domains: list[dict]) -> set[str]:
    """``user@domain`` of every Maildir in ``domains`` (the shape ``mailboxes`` returns)."""
    return {b["address"] for d in domains for b in d["mailboxes"]}


def cross_check(records: list[dict], maildirs: set[str], against: str) -> list[dict]:
    """``records`` (database records whose ``users`` is ``UserDb.as_manifest()`` or None) each
    with ``cross_check``: its mailboxes without a Maildir among ``maildirs`` and the Maildirs
    without a mailbox in it, both sorted; ``against`` says what ``maildirs`` were."""
    out = []
    for rec in records:
        rec = dict(rec)
        users = rec.get("users")
        if users:
            db = userdb.UserDb(mailboxes=set(users.get("mailboxes") or []))
            without_maildir, without_mailbox = userdb.cross_check(db, maildirs)
            rec["cross_check"] = {"against": against, "without_maildir": sorted(without_maildir),
                                  "without_mailbox": sorted(without_mailbox)}
        else:
            rec["cross_check"] = None        # an unknown schema: nothing to compare
        out.append(rec)
    return out


def build_manifest(*, hostname: str, mail_store: str, config_paths, collection: Collection,
                   vmail_uid: int | None = None, vmail_gid: int | None = None,
                   dovecot_config: str | None = None, time: _dt.datetime | None = None,
                   domains: list[dict] | None = None, databases: list[dict] | None = None) -> dict:
    """The manifest dict (JSON-ready). ``bundle.write_bundle`` adds ``id`` and ``files``.

    ``domains`` (the shape ``mailboxes`` returns) lets a mail backup pass the counts its own
    walk of the store produced, instead of walking the store a second time; the databases'
    mailboxes are cross-checked against the same list (``cross_check``).
    """
    when = time or utctime.utc_now()
    location, location_source = mail_location(mail_store, dovecot_config)
    uid, gid = vmail_owner(mail_store, vmail_uid, vmail_gid)
    walked = domains is not None
    doms = domains if walked else mailboxes(mail_store)
    dbs = cross_check(databases or [], maildir_addresses(doms),
                      "the snapshot's mail store" if walked else "the mail store when the bundle was made")
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "hostname": hostname,
        "time": utctime.iso(when),
        "dmbackup_version": __version__,
        "postfix_version": postfix_version(),
        "dovecot_version": dovecot_version(),
        "mail_location": location,
        "mail_location_source": location_source,
        "mail_store": mail_store,
        "vmail_uid": uid,
        "vmail_gid": gid,
        "config_paths": [os.path.normpath(p) for p in config_paths],
        "missing": list(collection.missing),
        "followed": dict(collection.followed),
        "warnings": list(collection.warnings),
        "domains": doms,
        "mailbox_count": sum(len(d["mailboxes"]) for d in doms),
        "databases": dbs,
    }
