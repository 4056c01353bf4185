"""The config file names programs dmbackup runs as root (issue 13, item 17).

``mount_command``, ``umount_command``, ``doveadm``: whoever may write the config file, or
replace it (write its directory, or any directory above it), chooses what root runs at the next
backup. Run as root, dmbackup therefore refuses (exit 2, one line naming the file and the fix)
a config file that is not root's or that group or others may write, and one in a directory
others control. Mode 0644 owned by root is fine (readable is not the problem: secrets live in
their own 0600 files); the fix it suggests is ``chown root:root; chmod 600``.

The attack is performed for real: the config names an NFS "mount command" that would leave a
marker when run; the run must refuse before running it.
"""

from __future__ import annotations

import os

import pytest

from tests.world import World

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the check applies when dmbackup runs as root")
NOBODY = 65534


def trap_world(tmp_path) -> tuple[World, str]:
    """A config whose nfs target's mount command is a program that leaves a marker."""
    w = World(tmp_path)
    os.makedirs(w.store)
    marker = os.path.join(w.tmp, "RAN-AS-ROOT")
    evil = os.path.join(w.tmp, "evil-mount")
    with open(evil, "w") as f:
        f.write(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    os.chmod(evil, 0o755)
    w.write_config(targets=f'[targets.nas]\ntype = "nfs"\nexport = "nas.test:/x"\n'
                           f'mount_point = "{w.tmp}/mnt"\nmount_command = ["{evil}"]\n')
    return w, marker


def refused(w: World, marker: str, *needles: str) -> None:
    for args in (("backup", "--target", "nas"), ("check-config",)):
        r = w.run(*args)
        assert r.code == 2, (args, r.code, r.err)
        lines = [ln for ln in r.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("dmbackup: "), r.err
        for n in needles:
            assert n in lines[0], (n, lines[0])
        assert not os.path.exists(marker), "the program named by the untrusted config ran as root"


def test_a_root_owned_0644_or_0600_config_is_accepted(tmp_path):
    w, marker = trap_world(tmp_path)
    for mode in (0o644, 0o600):
        os.chmod(w.config, mode)
        assert w.run("check-config").code == 0
    # and the trap is real: with a trusted config the named program does run
    assert w.run("backup", "--target", "nas").code == 7
    assert os.path.exists(marker)


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_config_writable_by_group_or_others_is_refused(tmp_path, mode):
    w, marker = trap_world(tmp_path)
    os.chmod(w.config, mode)
    refused(w, marker, w.config, f"chown root:root {w.config}", f"chmod 600 {w.config}")


def test_config_owned_by_another_user_is_refused(tmp_path):
    w, marker = trap_world(tmp_path)
    os.chown(w.config, NOBODY, NOBODY)
    os.chmod(w.config, 0o600)
    refused(w, marker, w.config, f"owned by uid {NOBODY}", "chown root:root")


def test_config_in_a_directory_another_user_controls_is_refused(tmp_path):
    w, marker = trap_world(tmp_path)
    os.chown(w.tmp, NOBODY, NOBODY)           # that user can rename the file away and plant theirs
    refused(w, marker, w.tmp, "chown root:root")


def test_config_reached_through_a_symlink_in_a_writable_directory_is_refused(tmp_path):
    w, marker = trap_world(tmp_path)
    drop = os.path.join(w.tmp, "drop")
    os.makedirs(drop)
    os.chmod(drop, 0o777)                     # anyone may re-point the link
    link = os.path.join(drop, "dmbackup.toml")
    os.symlink(w.config, link)
    w.config = link
    refused(w, marker, drop, f"chmod go-w {drop}")


def test_the_daemon_keeps_its_config_when_the_file_becomes_untrusted(tmp_path):
    """SIGHUP re-reads the file: an untrusted one is logged and the running config kept."""
    from dmbackup.context import App
    from dmbackup.config import load
    from dmbackup.log import Logger
    from dmbackup.daemon.scheduler import Daemon

    w, marker = trap_world(tmp_path)
    app = App(load(w.config), log=Logger(None))
    d = Daemon(app, usb=False, inhibit=False)
    assert d.reload() is True
    os.chmod(w.config, 0o666)
    assert d.reload() is False
    assert any('"reload_failed"' in line and "chmod 600" in line for line in app.log.recent)
    assert d.app.config.file == w.config
