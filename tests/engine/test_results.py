"""One result type: the engine's results are ``dmbackup.engine.result.Result``s whose ``summary()``
is exactly the line the CLI printed for them and whose ``as_dict()`` is exactly the documented
``--json`` object.

The reference functions below are the CLI's own formatting as it was before the results
carried it (dmbackup/cli/{backup,restore,verify,prune}_cmd.py at ea230bf), applied to the
``--json`` dict as the CLI did.
"""

from __future__ import annotations

from dmbackup import humanize
from dmbackup.engine.backup import BackupResult
from dmbackup.engine.prune import PruneResult
from dmbackup.engine.restore import RestoreResult
from dmbackup.engine.result import Result
from dmbackup.engine.verify import VerifyResult


# --- what the CLI printed (cli/*_cmd.py at ea230bf) ---------------------------------------------
def cli_backup_text(d: dict, what: str = "mail") -> str:
    text = (f"{d.get('kind', what)} snapshot {d.get('id')} on {d.get('target')}: {d.get('files')} files, "
            f"{humanize.size(d.get('bytes'))}, {humanize.size(d.get('stored_bytes'))} stored")
    if d.get("duplicate_names_dropped") or d.get("expunged_during_backup"):
        text += (f"; {d.get('duplicate_names_dropped', 0)} message(s) seen under two names kept once, "
                 f"{d.get('expunged_during_backup', 0)} expunged or moved during the backup left out")
    return text


def cli_restore_text(d: dict) -> str:
    failed = d.get("failed") or []
    text = (f"restored {d.get('files')} files ({humanize.size(d.get('bytes'))}) from "
            f"{d.get('snapshot')} into {d.get('destination')}")
    if d.get("skipped_complete"):
        text += f"; {d['skipped_complete']} already complete (--resume)"
    if failed:
        text += f"\nNOT restored ({d['failed_count']}):" + "".join(
            f"\n  {f.get('path')}: {f.get('error')}" for f in failed[:200])
    return text


def cli_restore_incomplete(d: dict) -> str | None:
    failed = d.get("failed") or []
    if not failed:
        return None
    n, first = d["failed_count"], failed[0]
    why = ("damaged or unsafe in the backup: run `dmbackup verify --read-data` and restore them from "
           "another snapshot" if d.get("exit_code") == 4 else
           "they could not be written: fix the destination and run the same restore with --resume")
    return (f"restore incomplete: {n} entr{'y' if n == 1 else 'ies'} not restored (first: "
            f"{first.get('path')}: {first.get('error')}), everything else was restored; {why}")


def cli_verify_text(res: VerifyResult) -> str:
    # verify_cmd printed res.summary() already; this is that summary as it was
    d = res.as_dict()
    if not d["problems"]:
        what = "all data read and authenticated" if d["read_data"] else "catalogs and volume sizes checked"
        return f"verify ok: {d['snapshots']} snapshot(s), {d['volumes']} volume(s); {what}"
    snaps = ", ".join(d["damaged_snapshots"]) or "(repository structure)"
    nfiles = sum(len(v) for v in d["damaged_files"].values())
    return (f"verify found damage: {len(d['problems'])} problem(s) affecting snapshot(s) {snaps}"
            f"{f' and {nfiles} file(s)' if nfiles else ''}: {d['problems'][0]}")


def cli_prune_text(res) -> str:
    verb = "would delete" if res.dry_run else "deleted"
    return (f"{verb} {len(res.deleted)} chain(s){': ' + ', '.join(res.deleted) if res.deleted else ''}; "
            f"kept {', '.join(res.kept) or 'none'}")


# --- backup ------------------------------------------------------------------------------------
def _backup(**kw) -> BackupResult:
    base = dict(snapshot_id="20261128T023000Z-inc", chain="0001-20261120T023000Z", kind="incremental",
                files=1234, bytes=5 << 30, stored_bytes=17 << 20, time="2026-11-28T02:30:00Z", target="usb1")
    base.update(kw)
    return BackupResult(**base)


def test_backup_result_summary_and_json():
    for res in (_backup(), _backup(kind="full", files=0, bytes=0, stored_bytes=900),
                _backup(duplicates=3), _backup(gone=2), _backup(duplicates=1, gone=5, warnings=["w1", "w2"]),
                _backup(config_bundle="config/20261128T023000Z-inc.bundle", unchanged_dirs=7)):
        assert isinstance(res, Result)
        d = res.as_dict()
        assert res.summary() == cli_backup_text(d)
        assert d == {"id": res.snapshot_id, "chain": res.chain, "kind": res.kind, "time": res.time,
                     "files": res.files, "bytes": res.bytes, "stored_bytes": res.stored_bytes,
                     "target": res.target, "warnings": res.warnings, "config_bundle": res.config_bundle,
                     "unchanged_dirs": res.unchanged_dirs, "duplicate_names_dropped": res.duplicates,
                     "expunged_during_backup": res.gone, "exit_code": 1 if res.warnings else 0}
    assert _backup(duplicates=1, gone=5).summary().endswith(
        "; 1 message(s) seen under two names kept once, 5 expunged or moved during the backup left out")


# --- restore -----------------------------------------------------------------------------------
def _restore(**kw) -> RestoreResult:
    res = RestoreResult("20261128T023000Z-inc", "/srv/restored", selection=kw.pop("selection", ""),
                        uid_gap=kw.pop("uid_gap", 0))
    for k, v in kw.items():
        setattr(res, k, v)
    return res


def test_restore_result_summary_and_json():
    many = [{"path": f"d/f{i}", "error": "No space", "damage": False} for i in range(250)]
    cases = [
        _restore(files=10, dirs=3, bytes=12345),
        _restore(files=10, bytes=12345, skipped_complete=4, uid_gap=None, selection="example.it/anna"),
        _restore(files=1, failed=[{"path": "a/b", "error": "damaged block", "damage": True}], failed_count=1,
                 damaged=True),
        _restore(files=1, failed=many, failed_count=1300, warnings=["two names"]),
        _restore(warnings=["x"], uid_gap=1000, uid_gap_folders=2),
    ]
    for res in cases:
        assert isinstance(res, Result)
        d = res.as_dict()
        assert res.summary() == cli_restore_text(d)
        assert res.incomplete() == cli_restore_incomplete(d)
        assert d == {"snapshot": res.snapshot_id, "destination": res.destination, "files": res.files,
                     "dirs": res.dirs, "bytes": res.bytes, "bytes_fetched": res.bytes_fetched,
                     "selection": res.selection or "/", "warnings": res.warnings, "failed": res.failed,
                     "failed_count": res.failed_count, "skipped_complete": res.skipped_complete,
                     "uid_gap": "auto" if res.uid_gap is None else res.uid_gap,
                     "uid_gap_folders": res.uid_gap_folders, "exit_code": res.exit_code}
    assert [r.exit_code for r in cases] == [0, 0, 4, 3, 1]
    assert cases[3].summary().count("\n  d/f") == 200


# --- verify ------------------------------------------------------------------------------------
def test_verify_result_summary_and_json():
    ok = VerifyResult("usb1", False, snapshots=3, volumes=5)
    ok_read = VerifyResult("usb1", True, snapshots=1, volumes=2, bytes_read=999)
    bad = VerifyResult("usb1", True, snapshots=2, volumes=2)
    bad.damage("20261128T023000Z-inc", "0001-x/20261128T023000Z-inc.v0001 is missing")
    bad.damage(None, "config: repository structure")
    bad.damaged_files["20261128T023000Z-inc"] = ["a/b", "a/c"]
    structure = VerifyResult("usb1", False)
    structure.damage(None, "older than what this machine saw last")
    for res in (ok, ok_read, bad, structure):
        assert isinstance(res, Result)
        assert res.summary() == cli_verify_text(res)
        d = res.as_dict()
        assert d == {"target": "usb1", "read_data": res.read_data, "snapshots": res.snapshots,
                     "volumes": res.volumes, "bytes_read": res.bytes_read, "ok": not res.problems,
                     "problems": res.problems, "damaged_snapshots": res.damaged_snapshots,
                     "damaged_files": res.damaged_files, "exit_code": 4 if res.problems else 0}
    assert bad.damaged_snapshots == ["20261128T023000Z-inc"]
    assert bad.summary().startswith("verify found damage: 2 problem(s) affecting snapshot(s) "
                                    "20261128T023000Z-inc and 2 file(s): ")
    assert "(repository structure)" in structure.summary()


# --- prune -------------------------------------------------------------------------------------
def test_prune_result_summary_and_json():
    cases = [
        PruneResult("usb1", True, 2, kept=["0003-a", "0004-b"], deleted=["0001-x", "0002-y"]),
        PruneResult("usb1", False, 4, kept=["0001-x"]),
        PruneResult("usb1", False, 1, kept=[], deleted=["0001-x"], deleted_bundles=["20261101T000000Z-config"]),
        PruneResult("usb1", False, 1, kept=["0001-x", "0002-y"], kept_damaged=["0001-x"],
                    warnings=["chain 0001-x is kept although retention would delete it"]),
    ]
    for res in cases:
        assert isinstance(res, Result)
        assert res.summary() == cli_prune_text(res)
        # the --json object was the dataclass's fields, exit_code among them
        assert res.as_dict() == {"target": res.target, "dry_run": res.dry_run, "keep_chains": res.keep_chains,
                                 "kept": res.kept, "deleted": res.deleted, "deleted_bundles": res.deleted_bundles,
                                 "exit_code": 1 if res.kept_damaged else 0, "kept_damaged": res.kept_damaged,
                                 "warnings": res.warnings}
    assert cases[0].summary() == "would delete 2 chain(s): 0001-x, 0002-y; kept 0003-a, 0004-b"
    assert cases[2].summary() == "deleted 1 chain(s): 0001-x; kept none"
    assert [r.exit_code for r in cases] == [0, 0, 0, 1]
