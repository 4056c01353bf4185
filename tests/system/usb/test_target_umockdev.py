"""The usb target and the on-plug job lookup, with detection under umockdev."""

from __future__ import annotations

import pytest

from dmbackup.config import parse
from dmbackup.errors import EXIT_TARGET, TargetUnavailable
from dmbackup.targets.registry import build
from dmbackup.daemon.plug import jobs_for_device
from dmbackup.targets.usb import UsbTarget, disk_for_node

pytestmark = pytest.mark.umockdev


def config(tmp_path, targets: str, jobs: str = ""):
    text = f'hostname = "mail.example.it"\n[encryption]\nmode = "none"\n{targets}\n{jobs}'
    return parse(text, str(tmp_path / "dmbackup.toml"))


def test_open_with_disk_absent_is_exit_7_and_creates_nothing(bed, tmp_path):
    bed.load("sata_decoy", "usb_stick")
    mp = tmp_path / "mnt"
    cfg = config(tmp_path, f'[targets.usb1]\ntype = "usb"\nlabel = "DMBACKUP"\nmount_point = "{mp}"\n')
    target = build(cfg.target("usb1"), None)
    assert isinstance(target, UsbTarget)
    with pytest.raises(TargetUnavailable) as info:
        target.open()
    assert info.value.exit_code == EXIT_TARGET
    assert str(info.value).startswith("USB disk labelled 'DMBACKUP' is not plugged in")
    assert "usb1" in str(info.value) and "/dev/sda1" in str(info.value)
    assert not mp.exists()
    # and no operation can sneak past the failed open
    with pytest.raises(TargetUnavailable):
        target.put("x", b"data")
    assert not mp.exists()


def test_ambiguous_label_fails_open(bed, tmp_path):
    bed.load("usb_disk", "usb_twin")
    cfg = config(tmp_path, f'[targets.usb1]\ntype = "usb"\nlabel = "DMBACKUP"\nmount_point = "{tmp_path}/m"\n')
    with pytest.raises(TargetUnavailable, match="2 USB disks labelled 'DMBACKUP'"):
        with build(cfg.target("usb1"), None):
            pass
    assert not (tmp_path / "m").exists()


def test_disk_for_node_from_udev(bed):
    bed.load("usb_disk", "sata_decoy")
    ctx = bed.context()
    assert disk_for_node("/dev/sdb1", ctx).uuid == "3316ca0d-967d-41cd-8cd6-8dac3a4c37e4"
    assert disk_for_node("/dev/sda1", ctx).bus == "ata"


def test_on_plug_jobs_pick_the_targets_of_that_disk(bed, tmp_path):
    bed.load("usb_disk", "usb_stick", "sata_decoy", "usb_other")
    cfg = config(tmp_path, """
[targets.usb1]
type = "usb"
label = "DMBACKUP"
[targets.stick]
type = "usb"
uuid = "6bba-f738"
[targets.anydisk]
type = "usb"
label = "DMBACKUP"
bus = "any"
""", """
[jobs.nightly]
target = "usb1"
on_plug = true
[jobs.config-on-stick]
what = "config"
target = "stick"
on_plug = true
[jobs.scheduled-only]
target = "usb1"
schedule = "daily at 02:30"
[jobs.internal]
target = "anydisk"
on_plug = true
""")
    ctx = bed.context()
    assert jobs_for_device(cfg, "/dev/sdb1", ctx) == ["internal", "nightly"]
    assert jobs_for_device(cfg, "/dev/sdc", ctx) == ["config-on-stick"]
    # the SATA disk with the same label only matches the bus = "any" target
    assert jobs_for_device(cfg, "/dev/sda1", ctx) == ["internal"]
    assert jobs_for_device(cfg, "/dev/sde1", ctx) == []


def test_usb_list_cli_shows_usb_file_systems_only(bed, tmp_path):
    import json

    from typer.testing import CliRunner

    from dmbackup.cli.main import app

    bed.load("usb_disk", "usb_stick", "sata_decoy", "virtio_decoy")
    cfg = tmp_path / "dmbackup.toml"
    cfg.write_text(f'hostname = "mx.test"\nstate_dir = "{tmp_path}/state"\n[encryption]\nmode = "none"\n')
    res = CliRunner().invoke(app, ["--config", str(cfg), "usb", "list", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [(r["device"], r["label"], r["fstype"], r["bus"]) for r in rows] == [
        ("/dev/sdb1", "DMBACKUP", "ext4", "usb"), ("/dev/sdc", "MAIL BACKUP", "vfat", "usb")]
    assert rows[0]["uuid"] == "3316ca0d-967d-41cd-8cd6-8dac3a4c37e4" and rows[0]["size"] == 58017792 * 512
    assert [(r["targets"], r["enrolled"]) for r in rows] == [([], False), ([], False)]
    # a configured target that matches the first disk, enrolled on this machine
    cfg.write_text(f'hostname = "mx.test"\nstate_dir = "{tmp_path}/state"\n[encryption]\nmode = "none"\n'
                   '[targets.usb1]\ntype = "usb"\nlabel = "DMBACKUP"\n')
    from dmbackup.state import State
    State(f"{tmp_path}/state").enrol("usb1", "0" * 32)
    res = CliRunner().invoke(app, ["--config", str(cfg), "usb", "list", "--json"], catch_exceptions=False)
    rows = json.loads(res.stdout)
    assert [(r["targets"], r["enrolled"]) for r in rows] == [(["usb1"], True), ([], False)]
    res = CliRunner().invoke(app, ["--config", str(cfg), "usb", "list"], catch_exceptions=False)
    assert "usb1 (enrolled)" in res.stdout and "/dev/sdc" in res.stdout
