"""Backing up the mail store into a repository: full or incremental (format: dmbackup.archive).

Commit protocol: volumes, then the pages object, then (optionally) the config bundle are
written under temporary names and renamed; the target is synced; the catalog is written last.
Until the catalog exists the snapshot does not exist; any failure aborts the writers (their
temporary files are removed) and the next run deletes whatever a killed run left behind.

The run is here; what it captures is dmbackup.engine.capture (the walk and directories),
.folder (Maildir folders) and .filecapture (files and their content); the page table it
writes is dmbackup.engine.pages.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from datetime import timedelta

from dmbackup import humanize, utctime
from dmbackup.archive import layout
from dmbackup.archive.hidx import write_hidx
from dmbackup.archive.catalog import Header, encode_catalog, encode_index_parts
from dmbackup.archive.repository import Repository, SnapshotRef
from dmbackup.engine import dirrecord, pagekeys
from dmbackup.engine.capture import Capture
from dmbackup.engine.pages import PageQueue, ParentView
from dmbackup.engine.result import Result
from dmbackup.errors import CorruptObject, DmError, NoSpace, SourceError

MiB = 1 << 20


@dataclass
class BackupResult(Result):
    snapshot_id: str
    chain: str
    kind: str
    files: int
    bytes: int
    stored_bytes: int
    time: str
    target: str
    config_bundle: str | None = None
    unchanged_dirs: int = 0
    duplicates: int = 0
    gone: int = 0
    header_index: dict | None = None     # {"messages", "not_a_header", "problems": {name: n}} or None

    def as_dict(self) -> dict:
        d = {"id": self.snapshot_id, "chain": self.chain, "kind": self.kind, "time": self.time,
             "files": self.files, "bytes": self.bytes, "stored_bytes": self.stored_bytes,
             "target": self.target, "warnings": self.warnings, "config_bundle": self.config_bundle,
             "unchanged_dirs": self.unchanged_dirs, "duplicate_names_dropped": self.duplicates,
             "expunged_during_backup": self.gone,
             "exit_code": self.exit_code}
        if self.header_index is not None:
            d["header_index"] = self.header_index
        return d

    def summary(self) -> str:
        """One line (the warnings are shown on their own)."""
        text = (f"{self.kind} snapshot {self.snapshot_id} on {self.target}: {self.files} files, "
                f"{humanize.size(self.bytes)}, {humanize.size(self.stored_bytes)} stored")
        if self.duplicates or self.gone:
            # a live store under load: what the capture settled, so nobody wonders
            text += (f"; {self.duplicates} message(s) seen under two names kept once, "
                     f"{self.gone} expunged or moved during the backup left out")
        return text


def open_repository(app, target, target_name: str, *, require_enrolled: bool = True) -> Repository:
    """The repository, unlocked with the config's mode and checked against this machine's
    enrolment (key fingerprint, repo.json MAC, newest snapshot seen): dmbackup.archive.trust."""
    from dmbackup.archive.trust import open_trusted

    return open_trusted(app, target, target_name, require_enrolled=require_enrolled)


class BackupRun:
    def __init__(self, app, repo: Repository, target_name: str, *, parent: SnapshotRef | None,
                 chain: str, snap: str, seq: int, now, job_name: str | None,
                 snaps: list[SnapshotRef] | None = None):
        self.app, self.repo, self.target_name = app, repo, target_name
        self.root = app.config.source.mail_store
        self.chain, self.snap, self.seq, self.now = chain, snap, seq, now
        self.job_name = job_name
        self.parent = parent
        parent_view = None
        if parent is not None:
            snaps = snaps if snaps is not None else repo.snapshots()
            parent_view = ParentView(repo, [s for s in snaps if s.chain == chain], parent)
        self.writer = repo.block_writer(chain, snap, app.config.volume_size, stop_check=app.check_stop,
                                        # incrementals are small: a stronger level costs little CPU
                                        level=3 if parent is None else 9)
        self.cap: Capture | None = None
        self.pages = PageQueue(repo, chain, snap, self.writer, parent_view, lambda: self.cap.held_blocks())
        self.cap = Capture(app, self.writer, self.pages, parent_view)
        if parent is not None:
            self.cap.dir_record = dirrecord.load(app.state, repo.id, parent)
        self.warnings = self.cap.warnings
        self.bundle_bytes = 0
        self.header_index: dict | None = None

    def warn(self, msg: str) -> None:
        self.cap.warn(msg)

    def run(self) -> BackupResult:
        from dmbackup.source.appliance import probe_ahead

        probe_ahead(self.app.config.source.dovecot_config)     # for the config bundle's manifest
        root_st = self._check_root()
        self.pages.open()
        try:
            self.cap.walk(self.root)
            self.writer.drain()
            self.pages.finalize(force=True)
            volumes = self.writer.finish()
            pages_info = self.pages.commit()
            hidx_info = self._write_hidx()          # first: it frees its frame buffer
            index_info = self._write_index()        # the run's memory peak (a million files: 38 MB, twice)
            bundle_name = self._config_bundle()
            self.repo.sync()
            header = self._header(root_st, volumes, pages_info, index_info, bundle_name,
                                  hidx_info["size"] if hidx_info else 0)
            # the last safe point before the commit: a stop asked for at any moment of the run
            # (even while a volume-writer thread held the main thread up) never commits
            self.app.check_stop()
            catalog = encode_catalog(header, self.pages.table(self.parent.id if self.parent else None),
                                     self.warnings, self.repo.keys.catalog, self.repo.id, count_self=True)
            self.repo.put_catalog(self.chain, self.snap, catalog)
            self.repo.sync()
        except BaseException:
            self.writer.abort()
            self.pages.abort()
            self._remove_committed()
            raise
        cap = self.cap
        try:
            dirrecord.save(self.app.state, self.repo.id, self.chain, self.snap, self.pages.rows, cap.msgdir_bytes,
                           cap.subdir_mtimes, self.pages.listings)
        except OSError as exc:      # committed: a lost record only makes the next run slower
            self.app.log.warning("dir_record_not_saved", error=str(exc))
        pagekeys.save_stored(self.app.state.dir, self.repo.id, self.chain, self.snap, self.pages.page_keys)
        return BackupResult(self.snap, self.chain, header.kind, cap.files, cap.bytes, header.stored_bytes,
                            header.time, self.target_name, warnings=self.warnings, config_bundle=bundle_name,
                            unchanged_dirs=cap.unchanged_dirs, duplicates=cap.duplicates, gone=cap.gone,
                            header_index=self.header_index)

    def _check_root(self) -> os.stat_result:
        try:
            root_st = os.lstat(self.root)
        except OSError as exc:
            raise SourceError(f"mail store {self.root} cannot be read ({exc.strerror}): check [source] mail_store") from None
        if not stat.S_ISDIR(root_st.st_mode):
            raise SourceError(f"mail store {self.root} is not a directory: check [source] mail_store")
        try:
            with os.scandir(self.root):
                pass
        except OSError as exc:
            # never commit an empty snapshot of a store we could not read
            raise SourceError(f"mail store {self.root} cannot be listed ({exc.strerror}): "
                              "check its permissions; nothing was committed") from None
        return root_st

    def _write_index(self) -> dict | None:
        """The content index of what this run stored (read by later incrementals of the chain)."""
        if not self.pages.new_index:
            return None
        parts = encode_index_parts(self.pages.new_index, self.repo.keys.catalog, self.repo.id, self.chain,
                                   self.snap)
        self.pages.new_index = None
        name = layout.index_name(self.snap)
        h = hashlib.sha256()
        with self.repo.object_writer(self.chain, name) as w:
            for part in parts:
                w.write(part)
                h.update(part)
        return {"name": name, "size": sum(map(len, parts)), "sha256": h.hexdigest()}

    def _write_hidx(self) -> dict | None:
        """The header index of the messages this run stored (``find``). Written always, even
        empty (a snapshot without one is reported "not indexed"), and before the catalog, so a
        run that fails later leaves it to the cleanup of snapshots without a catalog."""
        try:
            info = write_hidx(self.repo, self.chain, self.snap, self.pages.hidx)
        except DmError as exc:
            self.warn(f"header index not written ({exc}): `dmbackup reindex` builds it")
            return None
        finally:
            self.pages.hidx = None
        # malformed headers never fail a backup: what parsed is indexed, the rest counted here
        counts = dict(info["counts"])
        self.header_index = {"messages": counts.pop("records", 0), "not_a_header": counts.pop("skipped", 0),
                             "problems": counts}
        self.app.log.info("header_index", snapshot=self.snap, **self.header_index)
        return info

    def _header(self, root_st, volumes: list[dict], pages_info, index_info, bundle_name,
                hidx_size: int = 0) -> Header:
        """The catalog header; ``stored_bytes`` without the catalog itself (encode_catalog adds it).
        The header index is counted in ``stored_bytes`` but not listed (``reindex`` adds indexes
        to older snapshots, whose catalogs never change)."""
        stored = (sum(v["size"] for v in volumes) + sum(i["size"] for i in (pages_info, index_info) if i)
                  + self.bundle_bytes + hidx_size)
        cap = self.cap
        return Header(
            id=self.snap, chain=self.chain, seq=self.seq,
            parent=self.parent.id if self.parent else None,
            kind="incremental" if self.parent else "full", what="mail", time=utctime.iso(self.now),
            hostname=self.app.config.hostname, files=cap.files, dirs=cap.dirs, bytes=cap.bytes,
            stored_bytes=stored,
            root=[stat.S_IMODE(root_st.st_mode), root_st.st_uid, root_st.st_gid, root_st.st_mtime_ns],
            volumes=volumes, pages=pages_info, index=index_info, config_bundle=bundle_name,
            warnings=len(self.warnings), job=self.job_name)

    def _remove_committed(self) -> None:
        """After a failure: delete what this snapshot already committed (volumes, pages, index,
        bundle), so a full disk does not stay full. Best effort: a vanished target is cleaned
        by the next run (everything here belongs to a snapshot without a catalog)."""
        deletes = [(self.repo.delete_object, self.chain, v["name"]) for v in self.writer.volumes]
        deletes += [(self.repo.delete_object, self.chain, layout.pages_name(self.snap)),
                    (self.repo.delete_object, self.chain, layout.index_name(self.snap)),
                    (self.repo.delete_object, self.chain, layout.hidx_name(self.snap)),
                    (self.repo.delete_bundle, self.snap)]
        for delete, *args in deletes:
            try:
                delete(*args)
            except Exception:   # noqa: BLE001 - the original error is what the user must see
                break

    def _config_bundle(self) -> str | None:
        """Every mail snapshot carries the config bundle: one disk restores the whole appliance.
        A database dump that fails fails the backup (``DumpFailed``, exit 3, nothing committed):
        a snapshot whose bundle lacks the user database would restore an appliance that knows
        no users. Any other problem with the bundle leaves the snapshot without one, warned."""
        from dmbackup.engine.configbundle import make_config_bundle
        from dmbackup.engine.configdb import DumpFailed

        try:
            b = make_config_bundle(self.app.config, key=self.repo.keys.bundle,
                                   context=layout.bundle_aad(self.repo.id, self.snap),
                                   time=self.now, domains=self.cap.mailbox_stats())
        except DumpFailed:
            raise
        except DmError as exc:     # the mail snapshot stays useful without it
            self.warn(f"config bundle not included: {exc}")
            return None
        for w in b.manifest.get("warnings", []):
            self.warn(f"config bundle: {w}")
        self.repo.write_bundle(self.snap, b.data)
        self.bundle_bytes = len(b.data)
        return layout.bundle(self.snap)


def backup_mail(app, target, target_name: str, *, full: bool = False, job=None) -> BackupResult:
    """A mail snapshot on ``target``, already open (dmbackup.engine.backup opens it and starts
    the key derivation first)."""
    repo = open_repository(app, target, target_name)
    repo.lock("backup")
    try:
        repo.cleanup_leftovers(app.log)
        snaps = repo.snapshots()
        parent, start_warning = _pick_parent(repo, snaps, full, job)
        chain, snap, seq, now = _name_snapshot(repo, snaps, parent)
        _check_space(app, repo, parent, snaps)
        app.log.info("backup_start", target=target_name, snapshot=snap, chain=chain,
                     kind="full" if parent is None else "incremental")
        run = BackupRun(app, repo, target_name, parent=parent, chain=chain, snap=snap, seq=seq,
                        now=now, job_name=job.name if job else None, snaps=snaps)
        for c, bad, why in repo.damaged:
            run.warn(f"snapshot {c}/{bad} is damaged and was skipped ({why}): run `dmbackup verify`")
        if start_warning:
            run.warn(start_warning)
        result = run.run()
        pagekeys.forget_pruned(app, repo, {(s.chain, s.id) for s in snaps} | {(chain, snap)})
        app.log.info("backup_done", **result.as_dict())
        return result
    finally:
        repo.unlock_repo()


def _pick_parent(repo, snaps: list[SnapshotRef], full: bool, job) -> tuple[SnapshotRef | None, str | None]:
    """The snapshot this one builds on (None: a full backup starting a new chain), and why a
    new chain is started when it was not asked for."""
    parent = snaps[-1] if snaps else None
    if parent is not None and job is not None and job.full_every is not None:
        incs = sum(1 for s in snaps if s.chain == parent.chain) - 1
        if incs >= job.full_every:
            parent = None
    if full:
        parent = None
    if parent is not None:
        try:
            repo.catalog_body(parent)
        except CorruptObject as exc:
            # never let one damaged catalog stop every scheduled backup after it
            return None, (f"the newest snapshot {parent.id} cannot be read ({exc}): this backup "
                          "starts a new chain with a full backup; run `dmbackup verify`")
    return parent, None


def _name_snapshot(repo, snaps: list[SnapshotRef], parent: SnapshotRef | None):
    """(chain, snapshot id, seq, time) of the new snapshot."""
    now = utctime.utc_now()
    # one snapshot per second, whatever its kind: --at TIME must name exactly one
    taken = {s.id.split("-", 1)[0] for s in snaps} | {d[1].split("-", 1)[0] for d in repo.damaged}
    while layout.snap_time(now) in taken:
        now += timedelta(seconds=1)
    snap = layout.snapshot_id(layout.snap_time(now), "full" if parent is None else "inc")
    if parent is None:
        n = max((s.chain_no for s in snaps), default=0)
        n = max(n, max((layout.chain_number(c) for c in repo.chains()), default=0)) + 1
        return layout.chain_id(n, layout.snap_time(now)), snap, 0, now
    return parent.chain, snap, parent.header.seq + 1, now


def _store_size(root: str) -> int:
    """Bytes the store really holds: allocated blocks, so a sparse file planted by a mail user
    (8 TiB of holes) does not make every full backup fail its space check."""
    total = 0
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            st = e.stat(follow_symlinks=False)
                            total += min(st.st_size, st.st_blocks * 512)
                    except OSError:
                        pass
        except OSError:
            pass
    return total


def _check_space(app, repo, parent, snaps) -> None:
    if parent is not None:
        app.progress.total_bytes = parent.header.bytes   # yesterday's size: a good ETA
    free = repo.free_space()
    if free is None and parent is not None:
        return
    if parent is None:
        total = _store_size(app.config.source.mail_store)
        app.progress.total_bytes = total          # lets the progress line show an ETA
        need = int(total * 0.4) + 16 * MiB
        what = "a full backup"
    else:
        recent = [s.header.stored_bytes for s in snaps if s.header.kind == "incremental"][-3:]
        need = max(recent, default=0) + 16 * MiB
        what = "an incremental backup"
    if free is not None and free < need:
        raise NoSpace(
            f"{repo.describe()} has {free // MiB} MiB free, {what} needs about {need // MiB} MiB: "
            "free space (dmbackup prune) or use a larger disk; nothing was written")
