"""Where config bundles are kept: the ``BundleStore`` interface and its two implementations.

A config bundle (``dmbackup.archive.bundle``) is kept either in a repository's ``config/``
directory, next to the mail snapshots on a dir, usb, smb or nfs target (``RepositoryBundles``),
or in a mailbox outside the appliance, sent by SMTP and read back over IMAP
(``MailboxBundles``, over ``dmbackup.mailout.mailbox``). The operations on bundles (back up,
list, choose by id or ``--at``, verify, restore: ``dmbackup.engine.configbundle``) are written
once over this interface; what differs between the two places lives here:

- how a bundle is sealed and stored (``save``): in a repository with its bundle key, bound to
  its name ``config/<time>-config.bundle`` by ``layout.bundle_aad``, under the repository
  lock; in a mailbox always with the passphrase (the mailbox is outside, and refuses
  ``encryption.mode = "none"``);
- which bundles are there (``bundles``: an index from names or message headers, not yet
  trusted) and how one is read back and authenticated (``open``);
- how "the newest bundle this machine saw" is remembered, so a deleted newest bundle is
  noticed (``rolled_back``): a repository checks names against what its ``Watch`` saw
  (``dmbackup.archive.watch``); a mailbox remembers in ``state_dir/trust.json`` (under the
  target's name and the pseudo repository id "mailbox") the newest bundle it sent or
  authenticated, and only ever records an authenticated one.

``open_store(app, target_name)`` gives the store of any target; ``dmbackup.config.holds_repository``
decides which kind it is.
"""

from __future__ import annotations

import datetime as _dt
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, Protocol

from dmbackup import utctime
from dmbackup.archive import layout
from dmbackup.config import holds_repository
from dmbackup.errors import ConfigError, CorruptObject, DmError, NoSpace, WrongRepository

MAX_BUNDLE = 1 << 30            # read whole into memory: a bundle on the medium may not be larger


@dataclass(frozen=True)
class ConfigBundle:
    """A sealed bundle and the manifest stored in it (``files`` is the per-file list)."""

    data: bytes
    manifest: dict
    files: int
    bytes: int

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def time(self) -> str:
        return self.manifest["time"]

    @property
    def warnings(self) -> list[str]:
        return list(self.manifest.get("warnings", []))

    @property
    def missing(self) -> list[str]:
        return list(self.manifest.get("missing", []))


@dataclass(frozen=True)
class BundleRef:
    """One bundle in a store, as its name or message headers say (an index, not yet trusted)."""

    id: str
    time: str                               # ISO 8601 UTC
    files: int | None = None
    bytes: int | None = None
    stored_bytes: int | None = None         # what it takes in the store (the message, in a mailbox)
    warnings: int = 0
    host: str | None = None                 # the host it says it is from (mailbox headers)
    fields: dict = field(default_factory=dict)   # store-specific fields of results (mailbox: uid)


class OpenBundle(NamedTuple):
    """A bundle read back and authenticated: its manifest, its entries, its stored size and
    its database dumps (``bundle.Dump``)."""

    manifest: dict
    entries: list
    size: int
    dumps: list


@dataclass
class Stored:
    """What ``save`` wrote: the bundle, its id and time, the bytes it took in the store, and the
    store's own fields of the backup result (in order)."""

    bundle: ConfigBundle
    id: str
    time: str
    stored_bytes: int
    fields: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


Seal = Callable[..., ConfigBundle]    # seal(passphrase=... | key=..., context=..., time=...)


class BundleStore(Protocol):
    """A place that keeps config bundles (see the module docstring)."""

    name: str                               # the target's name

    @property
    def authenticated(self) -> bool:
        """Whether what ``open`` returns is authenticated (not in an unencrypted repository)."""

    def where(self) -> str:
        """Where the bundles are, for messages."""

    def save(self, seal: Seal) -> Stored:
        """Seal one bundle of the configuration (``seal``, with this store's key) and keep it."""

    def bundles(self) -> list[BundleRef]:
        """Every bundle a restore may choose, oldest first."""

    def none_found(self) -> str:
        """The message when ``bundles()`` is empty: where nothing was found, and what to do."""

    def open(self, ref: BundleRef) -> OpenBundle:
        """Read ``ref`` back and authenticate it; CorruptObject (exit 4) when it is not what
        its index says, WrongPassphrase (exit 6) when the key does not open it."""

    def rolled_back(self, found: list[BundleRef], spec: str | None, at: str | None) -> str | None:
        """After the chosen bundle opened: a message when the caller asked for "the newest" and
        the newest bundle this machine saw is gone with nothing newer in ``found`` (a restore
        then refuses); otherwise None, and the newest in ``found`` is remembered as seen. What
        asks for "the newest" is the store's rule, kept from before the two shared this code: a
        repository refuses unless a bundle is named (``--at`` included), a mailbox only when
        neither a bundle nor ``--at`` is given, and remembers only a bundle it authenticated."""

    def listing(self) -> list[BundleRef]:
        """The config-only bundles, for ``dmbackup snapshots`` (a repository's mail snapshots
        carry theirs and are listed as snapshots), with files, bytes and stored bytes."""

    def maildirs(self, ref: BundleRef) -> set[str] | None:
        """``user@domain`` of every Maildir in the mail snapshot ``ref`` belongs to (from its
        catalog), for the cross-check with the bundle's user databases; None for a
        config-only bundle (its manifest recorded the cross-check when it was made)."""


@contextmanager
def open_store(app, target_name: str, *, write: bool = False, keyed: bool = True) -> Iterator[BundleStore]:
    """The bundle store of target ``target_name``, open for the ``with`` block.

    A repository is opened with ``write`` (enrolled, locked) or for reading; ``keyed=False``
    (listing only) lets a mailbox skip reading the passphrase, which nothing then needs."""
    tcfg = app.config.target(target_name)
    if not holds_repository(tcfg):
        yield MailboxBundles(app, tcfg, keyed=keyed)
        return
    from dmbackup.archive.trust import open_trusted

    target = app.target(target_name)
    with target:
        repo = open_trusted(app, target, target_name, require_enrolled=write)
        if write:
            repo.lock("config backup")
        try:
            yield RepositoryBundles(repo, target_name)
        finally:
            if write:
                repo.unlock_repo()


# --- a repository's config/ ------------------------------------------------------------------

def repo_bundle_names(repo) -> list[tuple[str, _dt.datetime]]:
    """(id, time) of every committed bundle in an open repository's ``config/``, oldest first;
    a name whose time does not parse is not a bundle dmbackup wrote, and is left out."""
    out = [(bid, t) for bid in repo.bundle_ids() if (t := layout.parse_id_time(bid)) is not None]
    out.sort(key=lambda x: (x[1], x[0]))
    return out


def open_repo_bundle(repo, snap: str) -> OpenBundle:
    """Open and authenticate ``config/<snap>.bundle`` of an open, unlocked repository."""
    name = layout.bundle(snap)
    if repo.bundle_size(snap) > MAX_BUNDLE:
        raise CorruptObject(f"{name} is larger than any config bundle ({MAX_BUNDLE >> 20} MiB): damaged")
    from dmbackup.archive import bundle    # late: listing snapshots opens no bundle (issue 17)

    data = repo.read_bundle(snap)
    if repo.keys.encrypted and bundle.parse_header(data).protection != bundle.PROT_KEY:
        # anyone can write an unencrypted bundle: in an encrypted repository it is planted
        raise CorruptObject(f"{name} is not encrypted, but this repository is: it was not written "
                            "by dmbackup for this repository (planted on the medium?); refused")
    contents = bundle.read_bundle(data, key=repo.keys.bundle, context=layout.bundle_aad(repo.id, snap))
    manifest, entries = contents
    return OpenBundle(manifest, entries, len(data), contents.dumps)


def snapshot_maildirs(repo, snap: str) -> set[str] | None:
    """``user@domain`` of the Maildirs (``<domain>/<user>/Maildir``) in mail snapshot ``snap``'s
    catalog; None when it is not a committed mail snapshot."""
    ref = next((s for s in repo.snapshots() if s.id == snap), None)
    if ref is None:
        return None
    rows, _ = repo.catalog_body(ref)
    from dmbackup.source import appliance

    return appliance.maildirs_in(r.dir for r in rows)


def committed_snapshots(repo, snaps) -> set:
    """Ids of mail snapshots whose catalog exists (listed, or there but damaged): their bundles
    count; a killed run leaves a bundle without a catalog, which the next run deletes."""
    return {s.id for s in snaps} | {b for c, b, _ in repo.damaged if c != "config"}


class RepositoryBundles:
    """The bundles in a repository's ``config/``: config-only ones and those of mail snapshots."""

    def __init__(self, repo, name: str):
        self.repo = repo
        self.name = name

    @property
    def authenticated(self) -> bool:
        return self.repo.keys.encrypted

    def where(self) -> str:
        return self.repo.describe()

    def save(self, seal: Seal) -> Stored:
        repo = self.repo
        snaps = repo.snapshots()    # an older repository than last seen stops here (exit 7)
        names = [snap for snap, _ in repo_bundle_names(repo)]
        rolled_back = repo.check_config_bundles(names, committed_snapshots(repo, snaps))
        if rolled_back:
            raise WrongRepository(rolled_back)
        now = utctime.utc_now()
        while layout.config_only_id(layout.snap_time(now)) in names:
            now += _dt.timedelta(seconds=1)     # snapshot names are unique in a repository
        snap = layout.config_only_id(layout.snap_time(now))
        cb = seal(key=repo.keys.bundle, context=layout.bundle_aad(repo.id, snap), time=now)
        free = repo.free_space()
        if free is not None and free < len(cb.data) + (1 << 20):
            raise NoSpace(f"{repo.describe()} has {free} bytes free, the config bundle needs "
                          f"{len(cb.data)}: free space on it and run again")
        repo.write_bundle(snap, cb.data)
        repo.sync()
        repo.saw_config(snap)
        return Stored(cb, snap, utctime.iso(now), len(cb.data), {"bundle": layout.bundle(snap)})

    def bundles(self) -> list[BundleRef]:
        return [BundleRef(snap, utctime.iso(t)) for snap, t in repo_bundle_names(self.repo)]

    def none_found(self) -> str:
        return (f"no config bundle found on {self.where()}: run `dmbackup backup --target "
                f"{self.name} --what config` first")

    def open(self, ref: BundleRef) -> OpenBundle:
        return open_repo_bundle(self.repo, ref.id)

    def rolled_back(self, found: list[BundleRef], spec: str | None, at: str | None) -> str | None:
        msg = self.repo.check_config_bundles([b.id for b in found],
                                             committed_snapshots(self.repo, self.repo.snapshots()))
        return None if spec else msg

    def listing(self) -> list[BundleRef]:
        out = []
        for snap, t in repo_bundle_names(self.repo):
            if not layout.is_config_only(snap):
                continue
            try:
                manifest, entries, size, _ = open_repo_bundle(self.repo, snap)
            except DmError as exc:        # listed by verify; the other snapshots stay visible
                self.repo.damaged.append(("config", snap, str(exc)))
                continue
            out.append(BundleRef(snap, utctime.iso(t), files=sum(1 for e in entries if e.type == "file"),
                                 bytes=sum(e.size for e in entries), stored_bytes=size,
                                 warnings=len(manifest.get("warnings") or [])))
        return out

    def maildirs(self, ref: BundleRef) -> set[str] | None:
        if layout.is_config_only(ref.id):
            return None
        return snapshot_maildirs(self.repo, ref.id)


# --- a mailbox -------------------------------------------------------------------------------

_MAILBOX = "mailbox"        # the pseudo repository id of a mailbox's record in trust.json


class MailboxBundles:
    """This host's bundle messages in a mailbox; every bundle sealed with the passphrase."""

    authenticated = True

    def __init__(self, app, tcfg, *, keyed: bool = True):
        from dmbackup.mailout.mailbox import Mailbox   # late: imaplib, smtplib, ssl, email (start-up, issue 17)

        self.mailbox = Mailbox(tcfg, hostname=app.config.hostname)
        self.name = tcfg.name
        self.state = app.state
        self._others: list[str] = []
        self._passphrase = self._key(app) if keyed else None

    def _key(self, app) -> bytes:
        """The passphrase, read only once the mode is checked (before any connection)."""
        if not app.config.encryption.enabled:
            raise ConfigError(
                f"target {self.name!r} mails config bundles off the machine, and they are always "
                "encrypted, but encryption.mode = \"none\": set encryption.mode = \"repokey\" and "
                "encryption.passphrase_file, or use another target for config backups",
                file=app.config.file, field="encryption.mode")
        return app.passphrase()

    def where(self) -> str:
        return f"{self.mailbox.where()} for host {self.mailbox.hostname}"

    def save(self, seal: Seal) -> Stored:
        cb = seal(passphrase=self._passphrase)
        sent = self.mailbox.send(cb.data, dict(cb.manifest, files=cb.files, bytes=cb.bytes))
        self._seen(cb.id, cb.time)
        return Stored(cb, cb.id, cb.time, sent["message_bytes"],
                      {"bundle_bytes": len(cb.data), "to": sent["recipients"], "refused": sent["refused"]},
                      [f"recipient {r} was refused by the smtp server" for r in sent["refused"]])

    @staticmethod
    def _ref(b: dict) -> BundleRef:
        return BundleRef(b["id"], b["time"], files=b["files"], bytes=b["bytes"], stored_bytes=b["size"],
                         host=b["host"], fields={"uid": b["uid"]})

    def bundles(self) -> list[BundleRef]:
        found, self._others = self.mailbox.scan()
        return [self._ref(b) for b in found]

    def none_found(self) -> str:
        also = f" (there are bundles of other hosts: {', '.join(self._others)})" if self._others else ""
        return f"no config bundle found in {self.where()}{also}"

    def open(self, ref: BundleRef) -> OpenBundle:
        uid = ref.fields["uid"]
        data = self.mailbox.fetch(uid, ref.id)
        from dmbackup.archive import bundle

        contents = bundle.read_bundle(data, passphrase=self._passphrase)
        manifest, entries = contents
        if manifest.get("time") != ref.time or manifest.get("hostname") != ref.host:
            raise CorruptObject(
                f"message UID {uid} in {self.mailbox.where()} claims host {ref.host} at "
                f"{ref.time}, but its bundle was made by {manifest.get('hostname')} at "
                f"{manifest.get('time')}: the message headers were altered")
        return OpenBundle(manifest, entries, ref.stored_bytes, contents.dumps)

    def rolled_back(self, found: list[BundleRef], spec: str | None, at: str | None) -> str | None:
        if spec is not None or at is not None:
            return None
        rec = (self.state.trust(self.name, _MAILBOX) or {}).get("config_newest")
        if found:
            newest = found[-1]
            if not (isinstance(rec, dict) and rec.get("id") not in {b.id for b in found}):
                self._seen(newest.id, newest.time)
                return None
            try:
                if utctime.parse_time(newest.time) > utctime.parse_time(rec["time"]):
                    self._seen(newest.id, newest.time)
                    return None
            except (KeyError, TypeError, ValueError):
                return None
        if not isinstance(rec, dict):
            return None
        return (f"{self.mailbox.where()} is older than what this machine saw last: the config bundle "
                f"{rec.get('id')} of {rec.get('time')} is missing (deleted from the mailbox, or the "
                "mailbox restored from an older copy)")

    def _seen(self, bid: str, time: str) -> None:
        """Remember ``bid`` as the newest bundle sent or authenticated, unless a newer one is."""
        rec = (self.state.trust(self.name, _MAILBOX) or {}).get("config_newest")
        try:
            older = isinstance(rec, dict) and utctime.parse_time(rec["time"]) > utctime.parse_time(time)
        except (KeyError, TypeError, ValueError):
            older = False
        if not older and rec != {"id": bid, "time": time}:
            try:
                self.state.update_trust(self.name, _MAILBOX, config_newest={"id": bid, "time": time})
            except OSError:
                pass            # a reader without write access to state_dir: it only cannot remember

    def listing(self) -> list[BundleRef]:
        return [self._ref(b) for b in self.mailbox.list_bundles()]

    def maildirs(self, ref: BundleRef) -> set[str] | None:
        return None                     # config-only bundles: the cross-check is in the manifest
