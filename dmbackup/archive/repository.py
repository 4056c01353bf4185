"""A repository on a target: creation, unlocking, locking, listing and reading snapshots.

See dmbackup.archive for the layout. The Repository works on a PrefixedTarget rooted at
``dmbackup/<hostname>``, so several appliances share one disk or share without seeing each
other's objects or locks. The medium is not trusted: every read here is bounded (small
files by a fixed cap, objects by the sizes an authenticated catalog recorded), the
encryption mode is the caller's (from the config), never ``repo.json``'s, and
``repo.json`` is checked against its MAC once the key is open. What this machine saw last
(``dmbackup.archive.trust``) is compared with every listing, so an older copy put back is
noticed.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import socket
import struct
import uuid
from dataclasses import dataclass

from dmbackup import utctime
from dmbackup.archive import crypto
from dmbackup.errors import CorruptObject, Locked, NoRepository, NotFound, OperationFailed, WrongRepository
from dmbackup.targets.base import AlreadyExists, PrefixedTarget, Target, is_temporary
from dmbackup.archive import CATALOG_MAGIC, FORMAT_VERSION
from dmbackup.archive.layout import CHAIN_RE, SNAP_RE  # noqa: F401 (re-exported)
from dmbackup.archive.catalog import (
    Header,
    PageRow,
    apply_delta,
    decode_catalog_body,
    decode_catalog_header,
    decode_index,
    decode_page_list,
    tree_order,
    decompress,
    page_aad,
    MAX_HEADER,
    MAX_PAGE_PLAIN,
)

ID_RE = re.compile(r"^[0-9a-f]{32}$")
# Small files are read with a cap: a repo.json, key file or lock that is a link to /dev/zero
# or a multi-gigabyte file must not be read whole.
SMALL_MAX = 64 * 1024
# a whole catalog (header + page table) is read into memory: refuse anything larger
MAX_CATALOG = 256 << 20

_HELD_HERE: set[str] = set()      # locks this process holds now (target + host), see _left_by_us

README_RESTORE = """\
This disk holds dmbackup backups of the mail server {hostname}.

To restore, on a machine with dmbackup installed and the backup passphrase at hand:

  1. Describe this disk as a target in /etc/dmbackup/dmbackup.toml, for example
       [targets.disk]
       type = "dir"
       path = "/mnt/this-disk"
     and set [encryption] passphrase_file (a file with mode 0600), or export
     DMBACKUP_PASSPHRASE.
  2. dmbackup init disk                            (enrol this disk on this machine)
     It opens the key with the passphrase and shows the repository id, when it was
     created, the newest snapshot and the key fingerprint. Compare the fingerprint with
     the one noted when the backups were set up: the same fingerprint means the same key.
  3. dmbackup snapshots --target disk              (what is here)
  4. dmbackup verify --target disk --read-data     (is it intact)
  5. dmbackup restore --target disk --to /srv/restored --uid-gap 1000   (newest snapshot)
     dmbackup restore --target disk --at 2026-11-28T02:30 --mailbox user@example.it --to DIR
     (--uid-gap 1000 keeps mail clients from missing new mail after the restore; a
     restore that stopped half way is finished by the same command plus --resume)
  6. Stop Dovecot, move the restored tree into place as the mail store, start Dovecot,
     then run
       dmbackup restore --resync
     (or, without a config for dmbackup, doveadm force-resync -A '*')

Layout: chains/<chain>/ holds one full snapshot and its incrementals; a snapshot exists
when its .catalog file exists. keys/ holds the master key, encrypted with the passphrase:
without the passphrase nothing here can be read. Do not edit or move files by hand.
"""


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def proc_start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
        return int(data.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class SnapshotRef:
    chain: str
    id: str
    header: Header

    @property
    def chain_no(self) -> int:
        return int(self.chain[:4])


class _RepoView(PrefixedTarget):
    """The repository's view of its target; it tells the repository when a catalog is
    committed, so what this machine saw last advances with every snapshot it makes (the
    engine writes catalogs with ``put`` and knows nothing of this)."""

    def __init__(self, inner: Target, prefix: str, repo: "Repository"):
        super().__init__(inner, prefix)
        self._repo = repo

    def put(self, name, data):
        super().put(name, data)
        if name.endswith(".catalog") and name.startswith("chains/") and not is_temporary(name):
            self._repo._catalog_committed(name, data)


@dataclass
class Watch:
    """What this machine saw last in this repository (from state_dir), and whom to tell
    when it sees something newer. ``fatal``: an older repository raises (writers) instead of
    being reported as damage (readers: verify exits 4, restore refuses "the newest")."""

    newest: dict | None = None              # {"chain", "seq", "id", "time"}
    config_newest: str | None = None        # name of the newest config bundle
    fatal: bool = False
    on_newest: object = None                # callable(dict)
    on_config_newest: object = None         # callable(str)


class Repository:
    def __init__(self, target: Target, hostname: str):
        self.raw_target = target
        self.hostname = hostname
        self.t = _RepoView(target, f"dmbackup/{hostname}", self)
        self.meta: dict | None = None
        self.keys: crypto.Keys | None = None
        self.meta_mac: str | None = None      # "ok" | "absent" | "mismatch" once unlocked
        self.watch = Watch()
        self._lock_name: str | None = None
        self._page_cache: dict = {}
        self.damaged: list[tuple[str, str, str]] = []
        self._tables: dict = {}
        self._warnings: dict = {}
        self._depths: dict = {}

    # --- creation and opening ------------------------------------------------------------
    @property
    def id(self) -> str:
        assert self.meta is not None
        return self.meta["id"]

    def exists(self) -> bool:
        return self.t.exists("repo.json")

    def create(self, passphrase: bytes | None, encrypted: bool) -> str:
        if self.exists():
            raise OperationFailed(f"a repository already exists on {self.t.describe()}")
        if self.t.exists("keys/master.json") or list(self.t.list_dirs("chains")):
            raise OperationFailed(
                f"{self.t.describe()} holds backups of {self.hostname} (keys/ and chains/) but its repo.json "
                "is missing or damaged: refusing to create a new repository over them; restore "
                "repo.json from another copy of the disk, or move the old dmbackup/ directory away")
        repo_id = uuid.uuid4().hex
        master = os.urandom(64) if encrypted else None
        if encrypted:
            try:
                self.t.create_exclusive("keys/master.json", crypto.wrap_master(master, passphrase, repo_id))
            except AlreadyExists:
                raise OperationFailed(f"keys/master.json already exists on {self.t.describe()}: "
                                      "refusing to replace the key of existing backups") from None
        self.t.put("README-RESTORE.txt", README_RESTORE.format(hostname=self.hostname).encode())
        self.keys = crypto.Keys(master)
        meta = {"format": FORMAT_VERSION, "id": repo_id, "created": utctime.iso(utctime.utc_now()),
                "hostname": self.hostname, "encryption": "aes-256-gcm" if encrypted else "none"}
        if encrypted:
            meta["mac"] = self.keys.meta_mac(meta)
        # repo.json last: a repository whose creation was interrupted does not exist
        self.t.put("repo.json", json.dumps(meta, indent=1).encode() + b"\n")
        self.t.sync()
        self.meta = meta
        self.meta_mac = "ok" if encrypted else "absent"
        return repo_id

    def small(self, name: str, what: str) -> bytes:
        """A small file of the repository, read with a cap (never a medium's idea of a size)."""
        data = self.t.get(name, 0, SMALL_MAX + 1)
        if len(data) > SMALL_MAX:
            raise CorruptObject(f"{what} on {self.t.describe()} is damaged: larger than {SMALL_MAX} bytes")
        return data

    def load_meta(self) -> dict:
        try:
            raw = self.small("repo.json", "repo.json")
        except NotFound:
            raise NoRepository(
                f"no dmbackup repository for host {self.hostname} on {self.t.describe()}: "
                f"run `dmbackup init {self.t.name}` first") from None
        try:
            meta = json.loads(raw)
            if not isinstance(meta, dict) or not isinstance(meta.get("id"), str) or not ID_RE.match(meta["id"]):
                raise ValueError
        except (ValueError, RecursionError):
            raise CorruptObject(f"repo.json on {self.t.describe()} is damaged") from None
        if meta.get("format") != FORMAT_VERSION:
            raise OperationFailed(f"repository format {meta.get('format')} is not supported by this dmbackup")
        self.meta = meta
        return meta

    @property
    def encrypted(self) -> bool:
        """Whether the open keys encrypt (what the config asked for; never repo.json's word)."""
        return bool(self.keys and self.keys.encrypted)

    def unlock(self, passphrase_fn, encrypted: bool = True, *, check_meta: bool = True) -> None:
        """Load keys. ``encrypted`` comes from the config: ``repo.json``'s "encryption" field
        is written for people and never read, because anyone holding the medium can edit it.
        ``passphrase_fn`` is called only when ``encrypted``. Then ``repo.json`` is checked
        against its MAC: a mismatch is WrongRepository (exit 7) unless ``check_meta`` is off
        (``init``, which repairs it); ``self.meta_mac`` says "ok", "absent" (written before
        repositories had one) or "mismatch"."""
        if self.meta is None:
            self.load_meta()
        if not encrypted:
            if self.t.exists("keys/master.json"):
                raise WrongRepository(
                    f"the repository on {self.t.describe()} is encrypted (it has a key), but "
                    "encryption.mode = \"none\" in the config: set encryption.passphrase_file (or "
                    "$DMBACKUP_PASSPHRASE) and remove mode = \"none\" to use it, or use an empty "
                    "target for an unencrypted repository")
            self.keys = crypto.Keys(None)
            self.meta_mac = "absent"
            return
        try:
            keyfile = self.small("keys/master.json", "the key file keys/master.json")
        except NotFound:
            raise CorruptObject(
                f"the key file keys/master.json is missing on {self.t.describe()}: this repository "
                "was made unencrypted, or its key was deleted; restore keys/ from another copy of "
                "the disk (an unencrypted repository is used only with encryption.mode = \"none\")") from None
        self.keys = crypto.Keys(crypto.unwrap_master(keyfile, passphrase_fn(), self.id))
        mac = self.meta.get("mac")
        if mac is None:
            self.meta_mac = "absent"
        elif isinstance(mac, str) and hmac.compare_digest(mac, self.keys.meta_mac(self.meta)):
            self.meta_mac = "ok"
        else:
            self.meta_mac = "mismatch"
            if check_meta:
                raise WrongRepository(
                    f"repo.json on {self.t.describe()} was changed after dmbackup wrote it (it does not "
                    "match its MAC under the repository key): someone edited the disk. The backups "
                    "themselves are checked separately: run `dmbackup verify --target "
                    f"{self.t.name} --read-data`, then `dmbackup init {self.t.name}` to rewrite repo.json "
                    "from the key")

    def rewrite_meta(self) -> None:
        """Write repo.json again from what the key vouches for (``init`` after tampering, or
        a repository from before repo.json had a MAC): the id, the key's encryption, a MAC."""
        assert self.meta is not None and self.keys is not None
        meta = {"format": FORMAT_VERSION, "id": self.id,
                "created": self.meta.get("created") if isinstance(self.meta.get("created"), str) else utctime.iso(utctime.utc_now()),
                "hostname": self.hostname, "encryption": "aes-256-gcm" if self.keys.encrypted else "none"}
        if self.keys.encrypted:
            meta["mac"] = self.keys.meta_mac(meta)
        self.t.put("repo.json", json.dumps(meta, indent=1).encode() + b"\n")
        self.meta = meta
        self.meta_mac = "ok" if self.keys.encrypted else "absent"

    # --- locking ---------------------------------------------------------------------------
    def lock(self, purpose: str) -> None:
        info = {"host": socket.gethostname(), "pid": os.getpid(), "boot_id": boot_id(),
                "start_ticks": proc_start_ticks(os.getpid()), "time": utctime.iso(utctime.utc_now()), "purpose": purpose}
        data = json.dumps(info).encode()
        for _ in range(2):
            try:
                self.t.create_exclusive("locks/lock", data)
                self._lock_name = "locks/lock"
                _HELD_HERE.add(self._lock_key())
                return
            except AlreadyExists:
                holder = self._read_lock()
                if holder == {}:
                    raise Locked(
                        f"the lock file locks/lock on {self.t.describe()} is unreadable (damaged, e.g. by a "
                        "dropped connection while it was written): if no dmbackup run of this appliance "
                        "is active, delete it and run again")
                if holder is not None and not self._owner_dead(holder) and not self._left_by_us(holder):
                    raise Locked(
                        f"repository on {self.t.describe()} is locked by {holder.get('purpose', 'a run')} "
                        f"on host {holder.get('host')} (PID {holder.get('pid')}, since {holder.get('time')}); "
                        "wait for it to finish, or remove locks/lock if that run is certainly gone")
                self.t.delete("locks/lock")   # provably dead owner (or unreadable stale lock)
        raise Locked(f"could not take the lock on {self.t.describe()}")

    def _read_lock(self) -> dict | None:
        """The holder's record; {} when unreadable; None when the lock vanished meanwhile."""
        try:
            info = json.loads(self.small("locks/lock", "the lock file"))
            return info if isinstance(info, dict) and info else {}
        except NotFound:
            return None
        except (ValueError, RecursionError, CorruptObject):
            return {}

    @staticmethod
    def _owner_dead(info: dict) -> bool:
        if info.get("host") != socket.gethostname():
            return False                      # another machine: we cannot know
        if info.get("boot_id") and info.get("boot_id") != boot_id():
            return True                       # this host rebooted since
        pid = info.get("pid")
        if not isinstance(pid, int):
            return False
        ticks = proc_start_ticks(pid)
        if ticks is None:
            return True                       # no such process
        return info.get("start_ticks") is not None and ticks != info.get("start_ticks")

    def unlock_repo(self) -> None:
        if self._lock_name:
            # the run is over whether or not the delete gets through (a hung target): from now
            # on a lock file it leaves behind is stale, and the next run of this process breaks it
            _HELD_HERE.discard(self._lock_key())
            name, self._lock_name = self._lock_name, None
            self.t.delete(name)

    def _lock_key(self) -> str:
        return f"{self.t.describe()}|{self.hostname}"

    def _left_by_us(self, info: dict) -> bool:
        """A lock of this very process that no run of it holds: an earlier run of the daemon was
        forced out (job_timeout on a hung target) before it could remove its lock. Its PID is
        alive -- it is ours -- so without this every later run would wait for ourselves."""
        return (info.get("host") == socket.gethostname() and info.get("pid") == os.getpid()
                and info.get("boot_id") == boot_id() and info.get("start_ticks") == proc_start_ticks(os.getpid())
                and self._lock_key() not in _HELD_HERE)

    # --- listing ---------------------------------------------------------------------------
    def chains(self) -> list[str]:
        return sorted(c.rsplit("/", 1)[-1] for c in self.t.list_dirs("chains")
                      if CHAIN_RE.match(c.rsplit("/", 1)[-1]))

    def chain_objects(self, chain: str) -> list[str]:
        return [n.rsplit("/", 1)[-1] for n in self.t.list(f"chains/{chain}")]

    def catalog_header(self, chain: str, snap: str) -> Header:
        name = f"chains/{chain}/{snap}.catalog"
        head = self.t.get(name, 0, 64 * 1024)
        try:
            header, _ = decode_catalog_header(head, self.keys.catalog, self.id, chain, snap)
        except CorruptObject:
            start = len(CATALOG_MAGIC) + 4
            if len(head) < 64 * 1024:
                raise
            (n,) = struct.unpack_from("<I", head, len(CATALOG_MAGIC))
            if n > MAX_HEADER or start + n <= len(head):
                raise
            # a long volume list: read exactly the header, whose length is capped above
            header, _ = decode_catalog_header(self.t.get(name, 0, start + n),
                                              self.keys.catalog, self.id, chain, snap)
        return header

    def snapshots(self, *, on_error=None) -> list[SnapshotRef]:
        """Every committed snapshot, ordered by (chain number, seq).

        A damaged catalog is passed to ``on_error`` or, by default, recorded in
        ``self.damaged`` and skipped: one bad catalog must not make the others unusable
        (``verify`` reports it)."""
        explicit = on_error is not None
        if on_error is None:
            def on_error(chain, snap, exc):
                if (chain, snap) not in {(c, s) for c, s, _ in self.damaged}:
                    self.damaged.append((chain, snap, str(exc)))
        out, bad = [], set()
        for chain in self.chains():
            for obj in self.chain_objects(chain):
                if not obj.endswith(".catalog") or is_temporary(obj):
                    continue
                snap = obj[: -len(".catalog")]
                if not SNAP_RE.match(snap):
                    continue
                try:
                    out.append(SnapshotRef(chain, snap, self.catalog_header(chain, snap)))
                except CorruptObject as exc:
                    bad.add((chain, snap))
                    on_error(chain, snap, exc)
        out.sort(key=lambda s: (s.chain_no, s.header.seq, s.id))
        self._check_newest(out, bad, on_error, explicit)
        return out

    # --- what this machine saw last ------------------------------------------------------------
    def older_than_seen(self, what: str) -> str:
        return (f"the repository on {self.t.describe()} is older than what this machine saw last: {what} "
                "is missing (an older copy of the disk was put back, or its newest files were deleted). "
                "Find the newer disk or share; if you put an older copy back on purpose, run "
                f"`dmbackup init {self.t.name}` to accept it")

    def _check_newest(self, snaps: list[SnapshotRef], bad: set, on_error, explicit: bool) -> None:
        """Compare a listing with what was seen. A missing config bundle is reported only to
        writers (fatal) and to a caller that asked for every problem (verify): a mail restore
        must not refuse because a config-only bundle is gone."""
        w = self.watch
        if w.config_newest and (w.fatal or explicit):
            names = [n.rsplit("/", 1)[-1][: -len(".bundle")] for n in self.t.list("config")
                     if n.endswith(".bundle") and not is_temporary(n)]
            committed = {x.id for x in snaps} | {b for _, b in bad}
            msg = self.check_config_bundles(names, committed)
            if msg and w.fatal:
                raise WrongRepository(msg)
            if msg:
                on_error("config", w.config_newest, CorruptObject(msg))
        seen = w.newest
        if seen:
            try:
                key = (int(seen["chain"][:4]), int(seen["seq"]))
                where = (seen["chain"], seen["id"])
            except (KeyError, TypeError, ValueError):
                seen = None             # a state file we cannot read proves nothing
        if seen:
            # a damaged newest catalog is damage (reported as such), not a rollback
            present = where in bad or any((s.chain, s.id) == where for s in snaps)
            if not present and not any((s.chain_no, s.header.seq) > key for s in snaps):
                msg = self.older_than_seen(f"snapshot {where[0]}/{where[1]} of {seen.get('time')}")
                if w.fatal:
                    raise WrongRepository(msg)
                on_error(where[0], where[1], CorruptObject(msg))
                return
        if snaps and w.on_newest:
            self._saw(snaps[-1].chain, snaps[-1].id, snaps[-1].header)

    def _saw(self, chain: str, snap: str, header: Header) -> None:
        w = self.watch
        rec = {"chain": chain, "seq": header.seq, "id": snap, "time": header.time}
        cur = w.newest
        try:
            newer = not cur or (int(chain[:4]), header.seq) > (int(cur["chain"][:4]), int(cur["seq"]))
        except (KeyError, TypeError, ValueError):
            newer = True
        if newer and w.on_newest:
            w.newest = rec
            w.on_newest(rec)
        if header.config_bundle:
            self.saw_config(snap)

    def saw_config(self, name: str) -> None:
        w = self.watch
        if w.on_config_newest and (not w.config_newest or name[:16] > w.config_newest[:16]):
            w.config_newest = name
            w.on_config_newest(name)

    def check_config_bundles(self, names: list[str], committed: set) -> str | None:
        """A message when the newest config bundle this machine saw is gone and nothing newer
        is there (None otherwise); records the newest present. Only config-only bundles and
        those of ``committed`` mail snapshots count: a killed run leaves its snapshot's bundle
        without a catalog, and the next run deletes it."""
        names = [n for n in names if n.endswith("-config") or n in committed]
        seen = self.watch.config_newest
        if seen and seen not in names and not any(n[:16] > seen[:16] for n in names):
            return self.older_than_seen(f"config bundle config/{seen}.bundle")
        if names:
            self.saw_config(max(names, key=lambda n: (n[:16], n)))
        return None

    def _catalog_committed(self, name: str, data: bytes) -> None:
        if not self.watch.on_newest or self.keys is None:
            return
        _, chain, obj = name.split("/", 2)
        snap = obj[: -len(".catalog")]
        try:
            header, _ = decode_catalog_header(data, self.keys.catalog, self.id, chain, snap)
        except CorruptObject:
            return
        self._saw(chain, snap, header)

    def catalog_body(self, ref: SnapshotRef):
        """(page rows in tree order, warnings) of a snapshot, its table resolved through its parents."""
        return self._table(ref.chain, ref.id, 0), self._warnings.get((ref.chain, ref.id), [])

    def table_depth(self, ref: SnapshotRef) -> int:
        """How many parent tables a snapshot's table builds on (0: a full table)."""
        self._table(ref.chain, ref.id, 0)
        return self._depths.get((ref.chain, ref.id), 0)

    def _table(self, chain: str, snap: str, depth: int) -> list[PageRow]:
        key = (chain, snap)
        hit = self._tables.get(key)
        if hit is not None:
            return hit
        if depth > 1000 or not SNAP_RE.match(snap):
            raise CorruptObject(f"catalog {chain}/{snap}: bad page table chain")
        name = f"chains/{chain}/{snap}.catalog"
        if self.t.stat(name).size > MAX_CATALOG:
            raise CorruptObject(f"catalog {chain}/{snap} is larger than {MAX_CATALOG >> 20} MiB: damaged")
        data = self.t.get(name)
        _, start = decode_catalog_header(data, self.keys.catalog, self.id, chain, snap)
        table, warnings = decode_catalog_body(data[start:], self.keys.catalog, self.id, chain, snap)
        self._warnings[key] = warnings
        self._depths[key] = table.depth
        if table.rows is not None:
            rows = tree_order(table.rows)
        else:
            try:
                base = {r.dir: r for r in self._table(chain, table.base, depth + 1)}
            except NotFound:
                raise CorruptObject(
                    f"catalog {chain}/{snap} builds on snapshot {table.base}, whose catalog is missing") from None
            for d in table.removed:
                base.pop(d, None)
            for r in table.changed:
                base[r.dir] = r
            rows = tree_order(base.values())
        self._tables[key] = rows
        if len(self._tables) > 64:
            self._tables.pop(next(iter(self._tables)))
        return rows

    def content_index(self, ref: SnapshotRef):
        """The snapshot's content index (``.get(sha256 hex)`` -> extents), or None."""
        if not ref.header.index:
            return None
        size = ref.header.index["size"]         # recorded by the authenticated header
        data = self.t.get(f"chains/{ref.chain}/{ref.header.index['name']}", 0, size + 1)
        if len(data) != size:
            raise CorruptObject(f"content index {ref.chain}/{ref.id} has {len(data)} bytes, the catalog says {size}")
        return decode_index(data, self.keys.catalog, self.id, ref.chain, ref.id)

    def page(self, chain: str, row: PageRow) -> list:
        """The entries of one directory: its stored base page with the row's delta applied."""
        base = self.page_at(chain, row.owner, row.offset, row.length, row.dir)
        return apply_delta(base, row.delta, f"page of {row.dir or '/'} in {chain}")

    def page_at(self, chain: str, owner: str, offset: int, length: int, d: str = "") -> list:
        key = (chain, owner, offset)
        hit = self._page_cache.get(key)
        if hit is not None:
            return hit
        what = f"page of {d or '/'} in {chain}/{owner}@{offset}"
        if not SNAP_RE.match(owner):
            raise CorruptObject(f"{what}: bad owner name")
        sealed = self.t.get(f"chains/{chain}/{owner}.pages", offset, length)
        plain = decompress(
            self.keys.catalog.open(sealed, page_aad(self.id, chain, owner, offset), what),
            what, MAX_PAGE_PLAIN)
        page = decode_page_list(plain, what)
        self._page_cache[key] = page
        if len(self._page_cache) > 16:
            self._page_cache.pop(next(iter(self._page_cache)))
        return page

    def resolve(self, spec: str | None, snaps: list[SnapshotRef] | None = None) -> SnapshotRef:
        snaps = snaps if snaps is not None else self.snapshots()
        if not snaps:
            raise OperationFailed(f"no snapshots on {self.t.describe()}")
        if spec is None or spec == "latest":
            return snaps[-1]
        matches = [s for s in snaps if s.id == spec or f"{s.chain}/{s.id}" == spec]
        if not matches:
            matches = [s for s in snaps if s.id.startswith(spec)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise OperationFailed(f"no snapshot {spec!r} on {self.t.describe()}: see `dmbackup snapshots`")
        raise OperationFailed(f"snapshot {spec!r} is ambiguous: {', '.join(m.id for m in matches[:5])}")

    def cleanup_leftovers(self, log=None) -> int:
        """Delete temporary names and objects of snapshots without a catalog (under the lock)."""
        removed = 0
        for chain in self.chains():
            objs = self.chain_objects(chain)
            committed = {o[: -len(".catalog")] for o in objs if o.endswith(".catalog") and not is_temporary(o)}
            for o in objs:
                snap = o.split(".", 1)[0]
                if is_temporary(o) or snap not in committed:
                    self.t.delete(f"chains/{chain}/{o}")
                    removed += 1
                    if log:
                        log.info("removed_leftover", object=f"chains/{chain}/{o}")
        all_committed = set()       # by name: a damaged catalog still owns its objects
        for chain in self.chains():
            all_committed |= {o[: -len(".catalog")] for o in self.chain_objects(chain)
                              if o.endswith(".catalog") and not is_temporary(o)}
        for o in self.t.list("config"):
            base = o.rsplit("/", 1)[-1]
            snap = base[: -len(".bundle")] if base.endswith(".bundle") else ""
            # a mail snapshot's bundle without its catalog: left by an interrupted run
            if SNAP_RE.match(snap) and snap not in all_committed:
                self.t.delete(o)
                removed += 1
                if log:
                    log.info("removed_leftover", object=o)
        for d in ("config", "keys", ""):
            for o in self.t.list(d):
                if is_temporary(o):
                    self.t.delete(o)
                    removed += 1
        return removed
