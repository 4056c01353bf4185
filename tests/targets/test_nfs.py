"""The ``nfs`` target against a real NFSv3 server (nfs-ganesha) and real mounts.

Everything here needs rpcbind (it binds 0.0.0.0:111) or mounts file systems, so this module
runs only inside the private network and mount namespace of tests/nfs/run-in-netns.sh, and
skips as a whole anywhere else; tests/nfs/test_in_netns.py runs it there from a plain
``pytest``. Config parsing is tested in tests/nfs/test_nfs_config.py.

- The userspace transport (libnfs) passes the generic Target contract suite against ganesha,
  ends a write with TransientTargetError when the server is killed or frozen under it, and
  carries the whole CLI: init, full + incremental backup, verify --read-data, restore.
- The mount transport passes the same suite with a real mount standing in for the export,
  since this kernel has no NFS client: ``mount -t overlay SERVER:/PATH -o ...,upperdir=SHARE
  MP`` makes mountinfo show the export as the source, exactly as a kernel NFS mount does, and
  keeps what was written in SHARE after the unmount (a ``tmpfs -o size=2m`` is the full share).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading

import pytest

from dmbackup.config import Section
from dmbackup.errors import (
    EXIT_TARGET,
    AuthFailed,
    NoSpace,
    NotFound,
    TargetUnavailable,
    TransientTargetError,
)
from dmbackup.targets import nfs
from dmbackup.targets.base import AlreadyExists, is_temporary
from dmbackup.system.mountinfo import mount_at
from tests.fixtures.ganesha import Ganesha, skip_reason
from tests.targets.contract import TargetContract
from tests.world import diff_trees, tree

if skip_reason():
    pytest.skip(skip_reason(), allow_module_level=True)


def cfg_of(data: dict, name: str = "nas") -> nfs.NfsConfig:
    s = Section(dict(data, type="nfs"), "/etc/dmbackup/dmbackup.toml", f"targets.{name}")
    s.str("type")
    c = nfs.parse_config(name, s, "nfs")
    s.finish()
    return c


# --- userspace transport on ganesha ------------------------------------------------------
def userspace(g: Ganesha, **extra) -> nfs.NfsUserspaceTarget:
    data = {"export": g.export, "transport": "userspace", "timeout": 3}
    data.update(extra)
    return nfs.build(cfg_of(data), None)


@pytest.fixture
def nfs_user(ganesha):
    """An opened userspace target on a fresh server, in a sub-directory of its export."""
    t = userspace(ganesha, path="sub")
    t.open()
    try:
        yield t
    finally:
        t.close()


def test_userspace_objects_land_on_the_server(ganesha):
    t = userspace(ganesha, path="appliances/mail")
    with t:
        t.put("chains/c1/s1.v0001", b"volume bytes")
        with t.writer("chains/c1/s1.catalog") as w:
            w.write(b"a" * 3_000_000)
            w.write(b"b" * 7)
    root = os.path.join(ganesha.export_dir, "appliances", "mail")
    with open(os.path.join(root, "chains/c1/s1.v0001"), "rb") as f:
        assert f.read() == b"volume bytes"
    assert os.path.getsize(os.path.join(root, "chains/c1/s1.catalog")) == 3_000_007
    assert sorted(os.listdir(os.path.join(root, "chains/c1"))) == ["s1.catalog", "s1.v0001"]
    assert os.stat(os.path.join(root, "chains/c1/s1.v0001")).st_mode & 0o777 == 0o600


def test_userspace_sees_what_another_client_wrote(nfs_user, ganesha):
    # no directory cache: a second appliance or a cleaner writing on the NAS is seen at once
    assert list(nfs_user.list("locks")) == []
    d = os.path.join(ganesha.export_dir, nfs_user.cfg.path, "locks")
    os.makedirs(d)
    with open(os.path.join(d, "other-host.lock"), "wb") as f:
        f.write(b"x")
    assert list(nfs_user.list("locks")) == ["locks/other-host.lock"]
    with pytest.raises(AlreadyExists):
        nfs_user.create_exclusive("locks/other-host.lock", b"me")


def test_userspace_roundtrip_and_errors(nfs_user):
    nfs_user.put("a/b/c", b"0123456789")
    assert nfs_user.get("a/b/c", 3, 4) == b"3456"
    assert nfs_user.get("a/b/c", 8) == b"89"
    assert nfs_user.get("a/b/c", 8, 100) == b"89"
    assert nfs_user.stat("a/b/c").size == 10
    with pytest.raises(NotFound):
        nfs_user.get("a/b/missing")
    with pytest.raises(NotFound):
        nfs_user.stat("nope/x")
    assert list(nfs_user.list("nope")) == [] and list(nfs_user.list_dirs("nope")) == []
    nfs_user.delete("nope/x")
    assert nfs_user.free_space() > 0


def test_userspace_reopens_after_a_parent_vanished(nfs_user, ganesha):
    nfs_user.put("chains/c1/x", b"1")
    shutil.rmtree(os.path.join(ganesha.export_dir, nfs_user.cfg.path, "chains"))
    nfs_user.put("chains/c1/y", b"2")            # the cached parent is made again
    assert nfs_user.get("chains/c1/y") == b"2"


def test_userspace_server_down_at_open_is_exit_7(ganesha):
    ganesha.stop()
    t = userspace(ganesha)
    with pytest.raises(TargetUnavailable) as ei:
        t.open()
    assert ei.value.exit_code == EXIT_TARGET
    assert ganesha.export in str(ei.value)


def test_userspace_export_not_offered_is_exit_7(ganesha):
    t = nfs.build(cfg_of({"export": f"127.0.0.1:{ganesha.export_dir}-other", "transport": "userspace",
                          "timeout": 3}), None)
    with pytest.raises(TargetUnavailable) as ei:
        t.open()
    assert ei.value.exit_code == EXIT_TARGET
    assert not isinstance(ei.value, NotFound)


def test_userspace_export_for_another_host_is_authfailed(nfs_netns):
    g = Ganesha(clients="192.0.2.10").start(probe=False)
    try:
        with pytest.raises(AuthFailed) as ei:
            userspace(g).open()
        assert ei.value.exit_code == EXIT_TARGET
        assert "exported to this host" in str(ei.value)
    finally:
        g.cleanup()


def test_userspace_server_killed_mid_write(ganesha):
    t = userspace(ganesha, path="d")
    t.open()
    t.put("keep", b"committed before the crash")
    w = t.writer("chains/c1/s1.v0001")
    w.write(b"x" * 1_000_000)
    ganesha.kill()
    with pytest.raises(TargetUnavailable) as ei:       # TransientTargetError in practice
        for _ in range(1000):
            w.write(b"x" * 1_000_000)
        w.commit()
    assert isinstance(ei.value, TransientTargetError), ei.value
    # the next calls fail the same way (reconnecting, not hanging) until the server is back
    with pytest.raises(TransientTargetError):
        t.stat("keep")
    ganesha.start()
    assert t.get("keep") == b"committed before the crash"
    left = list(t.list("chains/c1"))
    assert left and all(is_temporary(n) for n in left)    # no half object under the final name
    with pytest.raises(NotFound):
        t.stat("chains/c1/s1.v0001")
    t.close()


def test_userspace_server_hung_mid_write(ganesha):
    t = userspace(ganesha, path="d", timeout=2)
    t.open()
    w = t.writer("v")
    w.write(b"x" * 100_000)
    ganesha.freeze()
    try:
        with pytest.raises(TransientTargetError) as ei:
            w.write(b"y" * 100_000)
            w.commit()
        assert "did not answer within 2 s" in str(ei.value)
    finally:
        ganesha.thaw()
    t.put("after", b"ok")                        # a new session once the server answers again
    assert t.get("after") == b"ok"
    t.close()


def test_userspace_silent_host_fails_instead_of_hanging(nfs_netns):
    """A NAS that is off behind a router drops our SYNs: the RPC timeout does not cover
    connect(), so without a cap on SYN retries nfs_mount waited ~130 s. Stand-in: rpcbind's
    port held by a socket whose accept queue is full, so the kernel drops further SYNs."""
    nfs_netns.stop()
    fill = []
    try:
        with socket.socket() as hole:
            hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            hole.bind(("127.0.0.1", 111))
            hole.listen(0)
            while True:                           # queue connections until one is not answered
                c = socket.socket()
                fill.append(c)
                c.settimeout(1)
                try:
                    c.connect(("127.0.0.1", 111))
                except OSError:
                    break
            t = nfs.build(cfg_of({"export": "127.0.0.1:/export", "transport": "userspace",
                                  "timeout": 3}), None)
            with pytest.raises(TransientTargetError) as ei:
                t.open()
            assert ei.value.exit_code == EXIT_TARGET
    finally:
        for c in fill:
            c.close()
        nfs_netns.start()


def test_userspace_parallel_writers_share_one_session(nfs_user):
    errors = []

    def work(i):
        try:
            for j in range(5):
                nfs_user.put(f"p/{i}-{j}", bytes([i]) * (50_000 + j))
        except Exception as exc:        # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(list(nfs_user.list("p"))) == 20
    assert nfs_user.get("p/3-4") == b"\x03" * 50_004


# --- mount transport: a real mount stands in for the export ------------------------------
# ``mount -t overlay EXPORT -o lowerdir=..,upperdir=SHARE,.. MP``: mountinfo shows EXPORT as
# the source, as for a kernel NFS mount, and what is written survives in SHARE after the
# unmount, as on a NAS. A tmpfs with ``size=2m`` stands in for a full share.
EXPORT = "nas.test:/srv/backup"


@pytest.fixture
def mount_env(nfs_netns, tmp_path):
    """A private place for shares and mount points; whatever a test leaves mounted goes."""
    yield tmp_path
    for line in reversed(open("/proc/self/mountinfo").read().splitlines()):
        mp = line.split()[4]
        if mp.startswith(str(tmp_path)) or mp.startswith("/run/dmbackup"):
            subprocess.run(["umount", "-l", mp], check=False)


def share_of(tmp) -> str:
    return str(tmp / "share")


def standin(tmp, mp: str | None = None, **extra) -> nfs.NfsMountTarget:
    for d in ("share", ".lower", ".work"):
        os.makedirs(tmp / d, exist_ok=True)
    data = {"export": EXPORT, "mount_command": ["mount", "-t", "overlay"], "timeout": 10,
            "options": f"lowerdir={tmp / '.lower'},upperdir={tmp / 'share'},workdir={tmp / '.work'}"}
    if mp is not None:
        data["mount_point"] = mp
    data.update(extra)
    return nfs.build(cfg_of(data), None)


def test_mount_write_unmount(mount_env):
    mp = str(mount_env / "mnt")
    t = standin(mount_env, mp, path="appliances")
    with t:
        m = mount_at(mp)
        assert m is not None and m.source == EXPORT
        assert t.root == os.path.join(mp, "appliances") and t.mounted_by_us
        t.put("dmbackup/host/repo.json", b"{}")
        assert t.get("dmbackup/host/repo.json") == b"{}"
    assert mount_at(mp) is None
    assert not os.path.exists(mp)          # the mount point it created is gone again
    with open(os.path.join(share_of(mount_env), "appliances/dmbackup/host/repo.json"), "rb") as f:
        assert f.read() == b"{}"


def test_mount_default_mount_point_under_run(mount_env):
    t = standin(mount_env)
    with t:
        assert mount_at("/run/dmbackup/nas").source == EXPORT
        t.put("x", b"1")
    assert mount_at("/run/dmbackup/nas") is None


def test_mount_reuses_an_existing_mount_and_leaves_it(mount_env):
    mp = str(mount_env / "admin-mounted")
    os.makedirs(mp)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", EXPORT, mp], check=True)
    t = standin(mount_env, str(mount_env / "unused"))
    with t:
        t.put("x", b"1")
        assert not t.mounted_by_us and t.root == mp
    assert mount_at(mp).source == EXPORT
    with open(os.path.join(mp, "x"), "rb") as f:
        assert f.read() == b"1"
    assert not os.path.exists(mount_env / "unused")


def test_mount_command_failing_is_exit_7_and_writes_nothing(mount_env):
    mp = mount_env / "mnt"
    mp.mkdir()                              # as an administrator would have prepared it
    # like mount.nfs: the export is whichever argument looks like host:/path (options come too)
    fail = ["sh", "-c", 'for a; do case "$a" in *:/*) e=$a;; esac; done; '
                        'echo "mount.nfs: access denied by server while mounting $e" >&2; '
                        'echo "second line" >&2; exit 32', "mount.nfs"]
    t = standin(mount_env, str(mp), mount_command=fail, options="")
    with pytest.raises(TargetUnavailable) as ei:
        t.open()
    msg = str(ei.value)
    assert ei.value.exit_code == EXIT_TARGET
    assert "\n" not in msg
    assert f"access denied by server while mounting {EXPORT}; second line" in msg
    assert os.listdir(mp) == [] and mount_at(str(mp)) is None
    with pytest.raises(TargetUnavailable):
        t.put("x", b"never")                # a later write tries to mount again, and fails again
    assert os.listdir(mp) == []


def test_mount_success_without_a_mount_is_refused(mount_env):
    # what `mount -o bg` does when the server is down: exit 0, retry in the background
    mp = mount_env / "mnt"
    mp.mkdir()
    t = standin(mount_env, str(mp), mount_command=["true"])
    with pytest.raises(TargetUnavailable) as ei:
        t.open()
    assert "does not show" in str(ei.value)
    assert os.listdir(mp) == []


def test_mount_of_something_else_is_refused_and_undone(mount_env):
    mp = mount_env / "mnt"
    mp.mkdir()
    wrong = ["sh", "-c", 'eval "mp=\\${$#}"; mount -t tmpfs other:/elsewhere "$mp"', "wrapper"]
    t = standin(mount_env, str(mp), mount_command=wrong)
    with pytest.raises(TargetUnavailable) as ei:
        t.open()
    assert "other:/elsewhere" in str(ei.value)
    assert mount_at(str(mp)) is None and os.listdir(mp) == []


def test_mount_point_taken_by_another_file_system(mount_env):
    mp = mount_env / "mnt"
    mp.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "usbstick", str(mp)], check=True)
    t = standin(mount_env, str(mp))
    with pytest.raises(TargetUnavailable) as ei:
        t.open()
    assert "usbstick" in str(ei.value)


def test_mount_full_share_is_nospace(mount_env):
    mp = str(mount_env / "mnt")
    t = standin(mount_env, mp, mount_command=["mount", "-t", "tmpfs"], options="size=2m,mode=0700")
    with t:
        assert t.free_space() <= 2 << 20
        with pytest.raises(NoSpace) as ei:
            with t.writer("chains/c1/s1.v0001") as w:
                for _ in range(100):
                    w.write(os.urandom(64 * 1024))
        assert ei.value.exit_code == 3
        assert list(t.list("chains/c1")) == []       # the temporary was removed
    assert mount_at(mp) is None


def test_mount_unmounted_behind_our_back(mount_env):
    mp = mount_env / "mnt"
    mp.mkdir()
    t = standin(mount_env, str(mp))
    t.open()
    t.put("a", b"1")
    w = t.writer("late")
    w.write(b"2")
    subprocess.run(["umount", "-l", str(mp)], check=True)
    with pytest.raises(TargetUnavailable) as ei:
        t.put("b", b"2")
    assert "no longer mounted" in str(ei.value)
    with pytest.raises(TargetUnavailable):
        w.commit()                          # nothing becomes visible after the share went away
    with pytest.raises(TargetUnavailable):
        list(t.list(""))                    # never "an empty repository"
    with pytest.raises(TargetUnavailable) as ei:
        t.get("a")                          # never "a missing object" (damage)
    assert not isinstance(ei.value, NotFound)
    assert os.listdir(mp) == []             # nothing landed on the file system underneath
    t.close()
    left = sorted(os.listdir(share_of(mount_env)))   # at most a temporary name besides "a"
    assert left[0] == "a" and all(is_temporary(n) for n in left[1:])


def test_mount_with_the_real_nfs_command(mount_env, ganesha):
    """The default `mount -t nfs` against the real server: this kernel has no NFS client, so
    here it must fail cleanly (exit 7, one line, nothing written); with one it round-trips."""
    mp = mount_env / "mnt"
    mp.mkdir()
    t = nfs.build(cfg_of({"export": ganesha.export, "mount_point": str(mp), "timeout": 10,
                          "options": "vers=3,nolock,soft"}), None)
    try:
        t.open()
    except TargetUnavailable as exc:
        assert exc.exit_code == EXIT_TARGET and "\n" not in str(exc)
        assert os.listdir(mp) == [] and mount_at(str(mp)) is None
        return
    with t:
        t.put("x", b"1")
    assert open(os.path.join(ganesha.export_dir, "x"), "rb").read() == b"1"
    assert mount_at(str(mp)) is None


# --- the generic contract suite ------------------------------------------------------------
class TestNfsUserspaceContract(TargetContract):
    """libnfs against a fresh ganesha per test, in a sub-directory of the export."""

    @pytest.fixture
    def target(self, ganesha):
        with userspace(ganesha, path="repo") as t:
            yield t
        # nothing outside the configured sub-directory, and no temporary left open
        assert os.listdir(ganesha.export_dir) == ["repo"]


class TestNfsMountContract(TargetContract):
    """The mount transport, with the overlay stand-in for the export."""

    @pytest.fixture
    def target(self, mount_env):
        mp = str(mount_env / "mnt")
        with standin(mount_env, mp) as t:
            yield t
        assert mount_at(mp) is None


# --- end to end: the CLI over the userspace transport --------------------------------------
def _chown_like_store(world, path):
    if os.geteuid() == 0:
        os.lchown(path, 5000, 5000)


def test_cli_end_to_end_over_userspace_nfs(world, ganesha):
    """init, full + incremental backup, verify --read-data and restore of both snapshots, all
    through libnfs to ganesha; the repository is on the server's disk where a NAS keeps it."""
    world.write_config(targets=f'[targets.nas]\ntype = "nfs"\nexport = "{ganesha.export}"\n'
                               f'transport = "userspace"\npath = "backups"\ntimeout = 5\n')
    world.ok("init", "nas")
    assert os.path.isfile(os.path.join(ganesha.export_dir, "backups/dmbackup/mx.test/repo.json"))
    before = tree(world.store)
    full = json.loads(world.ok("backup", "--target", "nas", "--full", "--json").out)
    assert full["kind"] == "full" and full["files"] > 200

    # a day of mail: a flag change (rename), a move between folders, a deletion, a new message
    inbox = os.path.join(world.store, "example.it", "mario", "Maildir")
    cur = sorted(os.listdir(os.path.join(inbox, "cur")))
    flagged = os.path.join(inbox, "cur", cur[0])
    os.rename(flagged, flagged.split(":2,")[0] + ":2,RS")
    os.rename(os.path.join(inbox, "cur", cur[1]), os.path.join(inbox, ".Archivio", "cur", cur[1]))
    os.unlink(os.path.join(inbox, "cur", cur[2]))
    new = os.path.join(inbox, "new", "1795000000.M1P1.mail,S=24,W=26")
    with open(new, "wb") as f:
        f.write(b"Subject: new\r\n\r\nhello\r\n")
    os.chmod(new, 0o600)
    _chown_like_store(world, new)
    after = tree(world.store)

    inc = json.loads(world.ok("backup", "--target", "nas", "--json").out)
    assert inc["kind"] == "incremental" and inc["chain"] == full["chain"]
    assert inc["stored_bytes"] < full["stored_bytes"] / 10      # no content stored again
    world.ok("verify", "--target", "nas", "--read-data")

    out_new = os.path.join(world.tmp, "restored-newest")
    world.ok("restore", "--target", "nas", "--uid-gap", "0", "--to", out_new)    # new/ mail has no UID yet
    assert diff_trees(after, tree(out_new)) == []
    out_full = os.path.join(world.tmp, "restored-full")
    world.ok("restore", "--target", "nas", full["id"], "--to", out_full)
    assert diff_trees(before, tree(out_full)) == []
    names = os.listdir(os.path.join(ganesha.export_dir, "backups/dmbackup/mx.test/chains", full["chain"]))
    assert names and not [n for n in names if is_temporary(n)]


def test_cli_backup_to_a_dead_server_is_exit_7(world, ganesha):
    world.write_config(targets=f'[targets.nas]\ntype = "nfs"\nexport = "{ganesha.export}"\n'
                               f'transport = "userspace"\ntimeout = 2\n')
    world.ok("init", "nas")
    ganesha.kill()
    r = world.run("backup", "--target", "nas")
    assert r.code == EXIT_TARGET, r
    assert ganesha.export in r.err and "Traceback" not in r.err
