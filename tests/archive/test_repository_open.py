"""dmbackup.archive.repository on a dir target in a temporary directory: create, open
(load_meta, unlock), the one-writer lock, listing and resolving snapshots, leftovers of
interrupted runs. (The kept listing and objects by id: tests/archive/test_repository.py.)"""

from __future__ import annotations

import json
import os
import socket

import pytest

from dmbackup.archive import crypto, layout
from dmbackup.archive.repository import Repository
from dmbackup.errors import (CorruptObject, Locked, NoRepository, OperationFailed, WrongPassphrase,
                             WrongRepository)
from dmbackup.targets.dir import DirTarget
from tests.world import PASSPHRASE

PW = PASSPHRASE.encode()


def open_target(path) -> DirTarget:
    t = DirTarget("local", str(path))
    t.open()
    return t


def repo_at(path, hostname: str = "mx.test") -> Repository:
    return Repository(open_target(path), hostname)


@pytest.fixture
def created(tmp_path):
    repo = repo_at(tmp_path)
    repo.create(PW, encrypted=True)
    return tmp_path, repo


def test_create_writes_the_documented_layout(created):
    root, repo = created
    top = root / "dmbackup" / "mx.test"
    assert sorted(os.listdir(top)) == ["README-RESTORE.txt", "keys", "repo.json"]
    meta = json.loads((top / "repo.json").read_text())
    assert set(meta) == {"format", "id", "created", "hostname", "encryption", "mac"}
    assert meta["format"] == 1 and meta["hostname"] == "mx.test" and meta["encryption"] == "aes-256-gcm"
    assert len(meta["id"]) == 32 and int(meta["id"], 16) >= 0 and meta["id"] == repo.id
    assert json.loads((top / "keys" / "master.json").read_text())["kdf"] == "scrypt"
    assert "mx.test" in (top / "README-RESTORE.txt").read_text()
    assert repo.exists() and repo.encrypted and repo.meta_mac == "ok"
    assert repo.snapshots() == [] and repo.chains() == [] and repo.bundle_ids() == []


def test_open_with_the_passphrase(created):
    root, made = created
    repo = repo_at(root)
    assert repo.load_meta()["id"] == made.id
    repo.unlock(lambda: PW)
    assert repo.encrypted and repo.meta_mac == "ok"
    assert repo.keys.fingerprint == made.keys.fingerprint


def test_a_wrong_passphrase_does_not_open(created):
    root, _ = created
    with pytest.raises(WrongPassphrase):
        repo_at(root).unlock(lambda: b"not the passphrase")


def test_the_passphrase_is_asked_only_for_an_encrypted_repository(tmp_path):
    repo = repo_at(tmp_path)
    repo.create(None, encrypted=False)
    top = tmp_path / "dmbackup" / "mx.test"
    assert not (top / "keys").exists()
    meta = json.loads((top / "repo.json").read_text())
    assert meta["encryption"] == "none" and "mac" not in meta

    def never():
        raise AssertionError("asked for a passphrase")

    again = repo_at(tmp_path)
    again.unlock(never, encrypted=False)
    assert not again.encrypted and again.meta_mac == "absent" and again.keys.fingerprint is None


def test_an_encrypted_repository_is_not_opened_as_plain(created):
    root, _ = created
    with pytest.raises(WrongRepository, match="is encrypted"):
        repo_at(root).unlock(lambda: PW, encrypted=False)


def test_an_edited_repo_json_is_refused_unless_init_repairs_it(created):
    root, _ = created
    path = root / "dmbackup" / "mx.test" / "repo.json"
    meta = json.loads(path.read_text())
    meta["created"] = "2020-01-01T00:00:00Z"
    path.write_text(json.dumps(meta))
    with pytest.raises(WrongRepository, match="changed after dmbackup wrote it"):
        repo_at(root).unlock(lambda: PW)
    repo = repo_at(root)
    repo.unlock(lambda: PW, check_meta=False)
    assert repo.meta_mac == "mismatch"
    repo.rewrite_meta()
    fresh = repo_at(root)
    fresh.unlock(lambda: PW)
    assert fresh.meta_mac == "ok"


def test_no_repository(tmp_path):
    with pytest.raises(NoRepository):
        repo_at(tmp_path).load_meta()
    assert not repo_at(tmp_path).exists()


@pytest.mark.parametrize("text", ["", "{", "[]", '{"id": 5}', '{"id": "../../etc"}', "\xff"])
def test_a_damaged_repo_json_is_corrupt(created, text):
    root, _ = created
    (root / "dmbackup" / "mx.test" / "repo.json").write_text(text, errors="surrogateescape")
    with pytest.raises(CorruptObject):
        repo_at(root).load_meta()


def test_another_format_is_not_opened(created):
    root, _ = created
    path = root / "dmbackup" / "mx.test" / "repo.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": 2}))
    with pytest.raises(OperationFailed, match="format 2"):
        repo_at(root).load_meta()


def test_create_never_replaces_a_repository_or_its_key(created):
    root, _ = created
    with pytest.raises(OperationFailed, match="already exists"):
        repo_at(root).create(PW, encrypted=True)
    (root / "dmbackup" / "mx.test" / "repo.json").unlink()          # repo.json lost, the key still there
    with pytest.raises(OperationFailed, match="refusing to create"):
        repo_at(root).create(PW, encrypted=True)


def test_appliances_share_a_target_without_seeing_each_other(tmp_path):
    a, b = repo_at(tmp_path, "mx1.example.it"), repo_at(tmp_path, "mx2.example.it")
    a.create(PW, encrypted=True)
    with pytest.raises(NoRepository):
        b.load_meta()
    b.create(b"another passphrase", encrypted=True)
    assert a.id != b.id
    assert repo_at(tmp_path, "mx1.example.it").load_meta()["id"] == a.id
    assert sorted(os.listdir(tmp_path / "dmbackup")) == ["mx1.example.it", "mx2.example.it"]


# --- the lock -----------------------------------------------------------------------------------
def lock_file(root):
    return root / "dmbackup" / "mx.test" / layout.LOCK


def test_one_writer_at_a_time(created):
    root, repo = created
    repo.lock("backup")
    info = json.loads(lock_file(root).read_text())
    assert info["pid"] == os.getpid() and info["purpose"] == "backup" and info["host"] == socket.gethostname()
    other = repo_at(root)
    with pytest.raises(Locked, match="locked by backup") as e:
        other.lock("prune")
    assert e.value.exit_code == 5
    repo.unlock_repo()
    assert not lock_file(root).exists()
    other.lock("prune")
    other.unlock_repo()


def _plant_lock(root, **info):
    lock_file(root).parent.mkdir(parents=True, exist_ok=True)
    lock_file(root).write_text(json.dumps(info))


def test_a_lock_whose_process_is_gone_is_broken(created):
    root, repo = created
    gone = 2 ** 22 + 12345                       # above pid_max's default: no such process
    _plant_lock(root, host=socket.gethostname(), pid=gone, boot_id="", start_ticks=1, purpose="backup")
    repo.lock("backup")
    assert json.loads(lock_file(root).read_text())["pid"] == os.getpid()
    repo.unlock_repo()


def test_a_lock_from_before_a_reboot_is_broken(created):
    root, repo = created
    _plant_lock(root, host=socket.gethostname(), pid=1, boot_id="an-older-boot", start_ticks=1, purpose="backup")
    repo.lock("backup")
    repo.unlock_repo()


def test_a_lock_of_another_machine_is_never_broken(created):
    root, repo = created
    _plant_lock(root, host="another-machine", pid=1, boot_id="x", start_ticks=1, purpose="backup",
                time="2026-11-28T02:30:00Z")
    with pytest.raises(Locked, match="another-machine"):
        repo.lock("backup")
    assert json.loads(lock_file(root).read_text())["host"] == "another-machine"


def test_an_unreadable_lock_is_reported_not_broken(created):
    root, repo = created
    lock_file(root).parent.mkdir(parents=True, exist_ok=True)
    lock_file(root).write_bytes(b"\0garbage")
    with pytest.raises(Locked, match="unreadable"):
        repo.lock("backup")


# --- snapshots ------------------------------------------------------------------------------------
def _open(world) -> Repository:
    repo = repo_at(world.repo_dir)
    repo.unlock(lambda: PW)
    return repo


def test_snapshots_list_what_backups_made(ready):
    ready.ok("backup", "--target", "local")
    ready.ok("backup", "--target", "local")
    repo = _open(ready)
    snaps = repo.snapshots()
    assert [s.header.kind for s in snaps] == ["full", "incremental"]
    assert len({s.chain for s in snaps}) == 1 and layout.CHAIN_RE.match(snaps[0].chain)
    assert all(layout.SNAP_RE.match(s.id) for s in snaps)
    assert [s.header.seq for s in snaps] == [0, 1] and snaps[1].header.parent == snaps[0].id
    assert repo.resolve(None) == snaps[-1] and repo.resolve("latest") == snaps[-1]
    assert repo.resolve(snaps[0].id) == snaps[0] and repo.resolve(f"{snaps[0].chain}/{snaps[0].id}") == snaps[0]
    assert repo.chains() == [snaps[0].chain]
    with pytest.raises(OperationFailed, match="no snapshot"):
        repo.resolve("19990101T000000Z-full")
    assert repo.damaged == []


def test_leftovers_of_an_interrupted_run_are_removed(ready):
    ready.ok("backup", "--target", "local")
    repo = _open(ready)
    chain = repo.chains()[0]
    kept = sorted(repo.chain_objects(chain))
    orphan = layout.snapshot_id("20991231T000000Z", "incremental")
    repo.put_object(chain, layout.volume_name(orphan, 1), b"half a run")          # no catalog: leftover
    repo.put_object(chain, layout.pages_name(orphan), b"pages")
    with open(os.path.join(ready.repo_root, layout.chain_dir(chain), f"{kept[0]}.tmp-1a2b"), "wb") as f:
        f.write(b"temporary")
    repo.lock("backup")
    try:
        assert repo.cleanup_leftovers() == 3
    finally:
        repo.unlock_repo()
    assert sorted(repo.chain_objects(chain)) == kept
    assert [s.id for s in _open(ready).snapshots()] == [layout.catalog_id(n) for n in kept if n.endswith(".catalog")]


def test_the_master_key_never_changes(ready):
    """Changing the passphrase rewrites only the key file; the data stays readable."""
    ready.ok("backup", "--target", "local")
    repo = _open(ready)
    key = os.path.join(ready.repo_root, layout.KEY_FILE)
    with open(key, "wb") as f:
        f.write(crypto.wrap_master(repo.keys.master, b"a new passphrase", repo.id))
    again = repo_at(ready.repo_dir)
    again.unlock(lambda: b"a new passphrase")
    assert [s.id for s in again.snapshots()] == [s.id for s in repo.snapshots()]
