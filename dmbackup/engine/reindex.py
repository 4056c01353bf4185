"""``dmbackup reindex [SNAPSHOT]``: header indexes for snapshots made before they existed.

For each snapshot without a ``<snap>.hidx`` (or only the one named), the messages whose
content that snapshot stored are those entries of its message directories whose extents
lie in the snapshot's own volumes (an incremental keeps older content by reference, and
content found again in the chain's content index is not stored twice). Of each, only the
first block is read and at most the first 64 KiB given to ``headerindex.extract``; the
records are sealed into ``<snap>.hidx`` (dmbackup.archive.hidx). Messages are read in
volume order, so each block is fetched and opened once. An incremental's rows that are
its parent's unchanged cannot hold content it stored and are not read at all.

Runs under the repository lock, like every writer. An existing index is never replaced; a
damaged one is reported (delete the ``.hidx`` file by hand, then reindex that snapshot). A
message that cannot be read (a damaged block) is left out of the index and reported as
damage (exit 4); the index is still written for the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from dmbackup import humanize
from dmbackup.archive import layout
from dmbackup.archive.headerindex import HEADER_CAP
from dmbackup.archive.hidx import HidxWriter, has_hidx, index_message, read_hidx, write_hidx
from dmbackup.engine.find import check_repository_target
from dmbackup.engine.msgscan import MessageWalker, message_rows
from dmbackup.engine.result import Result
from dmbackup.errors import CorruptObject, DmError, EXIT_DAMAGE


@dataclass
class ReindexResult(Result):
    target: str
    indexed: list[dict] = field(default_factory=list)      # {"snapshot", "records", "skipped", "size"}
    already: list[str] = field(default_factory=list)
    damaged_indexes: list[str] = field(default_factory=list)
    bytes_fetched: int = 0
    seconds: float = 0.0
    damaged: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_DAMAGE if self.damaged else super().exit_code

    def as_dict(self) -> dict:
        return {"target": self.target, "indexed": self.indexed, "already_indexed": self.already,
                "damaged_indexes": self.damaged_indexes, "bytes_fetched": self.bytes_fetched,
                "seconds": self.seconds, "warnings": self.warnings, "exit_code": self.exit_code}

    def summary(self) -> str:
        if not self.indexed:
            text = "nothing to index"
        else:
            n = sum(i["records"] for i in self.indexed)
            text = (f"indexed {len(self.indexed)} snapshot(s): {n} message(s), "
                    f"{humanize.size(self.bytes_fetched)} read in {self.seconds:.1f} s")
            text += "".join(f"\n  {i['snapshot']}: {i['records']} message(s)"
                            + (f", {i['skipped']} not a message" if i["skipped"] else "") for i in self.indexed)
        if self.already:
            text += f"\n{len(self.already)} snapshot(s) already indexed"
        return text


def reindex(app, target_name: str, snapshot: str | None = None) -> ReindexResult:
    """Write the header index of every snapshot that has none (or of ``snapshot``)."""
    from dmbackup.archive.trust import open_trusted

    check_repository_target(app, target_name)
    t0 = time.monotonic()
    res = ReindexResult(target_name)
    target = app.target(target_name)
    with target:
        repo = open_trusted(app, target, target_name, require_enrolled=True)
        repo.lock("reindex")
        try:
            snaps = repo.snapshots()
            for chain, snap, why in repo.damaged:
                res.warnings.append(f"snapshot {chain}/{snap} is damaged and was not indexed ({why})")
            todo = [repo.resolve(snapshot, snaps)] if snapshot else snaps
            by_id = {(s.chain, s.id): s for s in snaps}
            for ref in todo:
                app.check_stop()
                if has_hidx(repo, ref.chain, ref.id):
                    try:
                        read_hidx(repo, ref)
                        res.already.append(ref.id)
                    except CorruptObject as exc:
                        res.damaged_indexes.append(ref.id)
                        res.damaged = True
                        res.warnings.append(
                            f"the header index of {ref.chain}/{ref.id} is damaged ({exc}); it is never replaced "
                            f"in place: delete {layout.hidx(ref.chain, ref.id)} on the target and run "
                            f"`dmbackup reindex {ref.id}`")
                    continue
                parent = by_id.get((ref.chain, ref.header.parent)) if ref.header.parent else None
                info = _index_snapshot(app, repo, ref, parent, res)
                if info is not None:
                    res.indexed.append(info)
                    app.log.info("reindexed", target=target_name, snapshot=ref.id, records=info["records"])
        finally:
            repo.unlock_repo()
        res.bytes_fetched = repo.bytes_read
    res.seconds = round(time.monotonic() - t0, 2)
    return res


def _index_snapshot(app, repo, ref, parent, res: ReindexResult) -> dict | None:
    try:
        rows, _ = repo.catalog_body(ref)
    except CorruptObject as exc:
        res.warnings.append(f"snapshot {ref.chain}/{ref.id} cannot be read ({exc}): not indexed")
        res.damaged = True
        return None
    unchanged: set[tuple] = set()
    if parent is not None:
        try:
            prow, _ = repo.catalog_body(parent)
            unchanged = {(r.dir, r.owner, r.offset, r.length, r.sha256) for r in prow}
        except CorruptObject:
            pass
    walker = MessageWalker(repo)
    stored: dict[str, tuple] = {}           # key -> (first extent, size, sha256 hex, path)
    prefix = ref.id + "."
    for row, md in message_rows(rows):
        if (row.dir, row.owner, row.offset, row.length, row.sha256) in unchanged:
            continue
        app.check_stop()
        try:
            entries = walker.entries(ref.chain, row)
        except (CorruptObject, DmError) as exc:
            res.warnings.append(f"the page of {row.dir} in {ref.chain}/{ref.id} cannot be read ({exc}): "
                                "its messages are not indexed")
            res.damaged = True
            continue
        for e in entries.values():
            if e.extents and e.extents[0][0].startswith(prefix) and e.hash[:32] not in stored:
                stored[e.hash[:32]] = (e.extents, e.size, e.hash, f"{row.dir}/{e.name}")
    writer = HidxWriter(repo, ref.chain, ref.id)      # written frame by frame as it fills
    reader = repo.block_reader()
    try:
        for exts, size, sha, path in sorted(stored.values(), key=lambda v: (v[0][0][0], v[0][0][1], v[0][0][3])):
            app.check_stop()
            try:
                head = b""
                for ext in exts:
                    head += reader.extent(ref.chain, ext)[:HEADER_CAP - len(head)]
                    if len(head) >= HEADER_CAP:
                        break
            except (CorruptObject, DmError) as exc:
                res.warnings.append(f"{ref.id}: {path} cannot be read ({exc}): not indexed")
                res.damaged = True
                continue
            index_message(writer, sha, size, head)
    except BaseException:
        writer.abort()
        raise
    info = write_hidx(repo, ref.chain, ref.id, writer)
    return {"snapshot": ref.id, "chain": ref.chain, "records": info["records"],
            "skipped": writer.counts.get("skipped", 0), "size": info["size"]}
