"""$DMBACKUP_PASSPHRASE never reaches a program dmbackup starts (issue 13, item 15).

The passphrase unlocks every backup ever made. dmbackup, as root, starts mount helpers (and the
FUSE daemons they leave running), blkid, umount, systemd-inhibit, doveadm, postconf/doveconf
probes and hooks; each would carry the secret in its /proc/PID/environ for its whole life.

Each test runs a real dmbackup run (the CLI as a subprocess) with the passphrase in its
environment and puts a recording wrapper in front of one real program: the wrapper writes its
environment to a file and then execs the real program, so the run itself is unchanged. The
recordings must exist (the program really ran) and hold no secret, while harmless
``DMBACKUP_*`` settings that hooks rely on still pass.
"""

from __future__ import annotations

import os
import shutil
import textwrap

import pytest

from dmbackup.system.childenv import child_env, is_secret
from tests.world import World

SECRET = "Pa55phrase-that-must-not-leak"
ENV = {"DMBACKUP_PASSPHRASE": SECRET, "DMBACKUP_SMB_PASSWORD": SECRET + "-2",
       "DMBACKUP_HOOKS_CONF": "/nonexistent/hooks.conf"}


def wrapper(bindir: str, dumps: str, name: str, real: str) -> str:
    """``bindir/name``: record the environment in ``dumps``, then exec ``real``."""
    os.makedirs(bindir, exist_ok=True)
    os.makedirs(dumps, exist_ok=True)
    path = os.path.join(bindir, name)
    with open(path, "w") as f:
        f.write(textwrap.dedent(f"""\
            #!/bin/sh
            env > "{dumps}/{name}.$$"
            exec {real} "$@"
            """))
    os.chmod(path, 0o755)
    return path


def recordings(dumps: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in sorted(os.listdir(dumps)):
        with open(os.path.join(dumps, n), encoding="utf-8", errors="replace") as f:
            out.setdefault(n.rsplit(".", 1)[0], []).append(f.read())
    return out


def assert_no_secret(dumps: str, *programs: str) -> None:
    seen = recordings(dumps)
    for p in programs:
        assert seen.get(p), f"{p} never ran (recorded: {sorted(seen)})"
    for p, envs in seen.items():
        for text in envs:
            assert SECRET not in text, f"the passphrase reached {p}: {text}"
            assert "DMBACKUP_PASSPHRASE" not in text and "DMBACKUP_SMB_PASSWORD" not in text, p


def env_hook(w: World, dumps: str) -> None:
    d = os.path.join(w.tmp, "hooks", "pre-backup.d")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "10-env"), "w") as f:
        f.write(f'#!/bin/sh\nenv > "{dumps}/hook.$$"\n')
    os.chmod(os.path.join(d, "10-env"), 0o755)


def env_passphrase_world(tmp_path, targets: str | None = None) -> World:
    """The passphrase comes from the environment only (no passphrase_file)."""
    w = World(tmp_path)
    md = os.path.join(w.store, "example.it", "mario", "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(md, sub))
    with open(os.path.join(md, "cur", "1700000000.M1P1.mail:2,S"), "wb") as f:
        f.write(b"Subject: x\r\nMessage-ID: <1@t>\r\n\r\nbody\r\n")
    w.write_config(targets=targets, encryption="")
    return w


def test_child_env_drops_secrets_and_keeps_settings():
    env = child_env({"LC_ALL": "C"}, base={"PATH": "/usr/bin", "DMBACKUP_PASSPHRASE": "x",
                                           "DMBACKUP_NAS_PW": "y", "dmbackup_api_token": "z",
                                           "DMBACKUP_CONFIG": "/etc/dmbackup/dmbackup.toml",
                                           "DMBACKUP_HOOKS_CONF": "/etc/dmbackup/hooks.conf"})
    assert env == {"PATH": "/usr/bin", "LC_ALL": "C", "DMBACKUP_CONFIG": "/etc/dmbackup/dmbackup.toml",
                   "DMBACKUP_HOOKS_CONF": "/etc/dmbackup/hooks.conf"}
    assert is_secret("DMBACKUP_PASSPHRASE") and not is_secret("PASSPHRASE_HINT")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_nfs_mount_helpers_never_see_the_passphrase(tmp_path):
    bindir, dumps = str(tmp_path / "bin"), str(tmp_path / "dumps")
    mount = wrapper(bindir, dumps, "mount", shutil.which("mount"))
    umount = wrapper(bindir, dumps, "umount", shutil.which("umount"))
    # an overlay mount whose source reads like the export stands in for the NAS (this kernel
    # has no NFS client); what is written stays in share/ across runs, as on a NAS
    for d in ("share", "lower", "work"):
        os.makedirs(tmp_path / d)
    w = env_passphrase_world(tmp_path, f"""[targets.nas]
type = "nfs"
export = "nas.test:/srv/backup"
mount_point = "{tmp_path}/nfs"
options = "lowerdir={tmp_path}/lower,upperdir={tmp_path}/share,workdir={tmp_path}/work"
mount_command = ["{mount}", "-t", "overlay"]
umount_command = ["{umount}"]
""")
    env_hook(w, dumps)
    r = w.sub("init", "nas", env=ENV)
    assert r.code == 0, r.err
    r = w.sub("backup", "--target", "nas", env=ENV)
    assert r.code == 0, r.err
    assert_no_secret(dumps, "mount", "umount", "hook")
    assert "DMBACKUP_HOOKS_CONF=/nonexistent/hooks.conf" in recordings(dumps)["hook"][0]


@pytest.mark.realdev
@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/loop-control"), reason="needs root and loop devices")
def test_usb_probe_mount_and_fuse_helpers_never_see_the_passphrase(tmp_path):
    from tests.system.usb import loopdev

    if "umockdev" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("real loop devices do not work under the umockdev preload")
    disk = loopdev.create(str(tmp_path / "disk.img"), "exfat", "DMBACKUP")
    try:
        bindir, dumps = str(tmp_path / "bin"), str(tmp_path / "dumps")
        for name in ("blkid", "mount", "umount", "mount.exfat-fuse", "fusermount"):
            real = shutil.which(name)
            if real:
                wrapper(bindir, dumps, name, real)
        w = env_passphrase_world(tmp_path, f"""[targets.usb1]
type = "usb"
device = "{disk.device}"
mount_point = "{tmp_path}/usb"
""")
        env = dict(ENV, PATH=bindir + os.pathsep + os.environ["PATH"])
        r = w.sub("init", "usb1", env=env)
        assert r.code == 0, r.err
        r = w.sub("backup", "--target", "usb1", env=env)
        assert r.code == 0, r.err
        # the FUSE daemon (mount.exfat-fuse without a kernel exfat) lives for the whole mount:
        # it, blkid and umount all ran without the secret
        assert_no_secret(dumps, "blkid", "umount")
        assert recordings(dumps).get("mount") or recordings(dumps).get("mount.exfat-fuse")
    finally:
        loopdev.destroy(disk)


def test_systemd_inhibit_never_sees_the_passphrase(tmp_path, monkeypatch):
    from dmbackup.daemon.scheduler import _Inhibitor

    bindir, dumps = str(tmp_path / "bin"), str(tmp_path / "dumps")
    # a stand-in with systemd-inhibit's contract (hold until stdin closes): there is no
    # logind here for the real one to talk to
    wrapper(bindir, dumps, "systemd-inhibit", "cat >/dev/null; :")
    monkeypatch.setenv("PATH", bindir + os.pathsep + os.environ["PATH"])
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    inhibitor = _Inhibitor("dmbackup job nightly")
    assert inhibitor.proc is not None
    inhibitor.release()
    assert_no_secret(dumps, "systemd-inhibit")


def test_config_probes_during_a_backup_never_see_the_passphrase(tmp_path):
    bindir, dumps = str(tmp_path / "bin"), str(tmp_path / "dumps")
    wrapper(bindir, dumps, "postconf", "echo 3.7.11; :")
    w = env_passphrase_world(tmp_path)
    env = dict(ENV, PATH=bindir + os.pathsep + os.environ["PATH"])
    assert w.sub("init", "local", env=env).code == 0
    r = w.sub("backup", "--target", "local", env=env)
    assert r.code == 0, r.err
    assert_no_secret(dumps, "postconf")


def test_doveadm_after_a_live_restore_never_sees_the_passphrase(tmp_path):
    bindir, dumps = str(tmp_path / "bin"), str(tmp_path / "dumps")
    doveadm = wrapper(bindir, dumps, "doveadm", "true")
    w = env_passphrase_world(tmp_path)
    with open(w.config, "w") as f:
        f.write(f'hostname = "mx.test"\nstate_dir = "{w.state}"\nhooks_dir = "{w.tmp}/hooks"\n'
                f'[source]\nmail_store = "{w.store}"\nconfig_paths = ["{w.tmp}/etc"]\ndoveadm = "{doveadm}"\n'
                f'[targets.local]\ntype = "dir"\npath = "{w.repo_dir}"\n')
    assert w.sub("init", "local", env=ENV).code == 0
    assert w.sub("backup", "--target", "local", env=ENV).code == 0
    r = w.sub("restore", "--target", "local", "--mailbox", "mario@example.it", env=ENV)
    assert r.code == 0, r.err
    assert_no_secret(dumps, "doveadm")
