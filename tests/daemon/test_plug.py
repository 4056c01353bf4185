"""On-plug job selection (dmbackup.daemon.plug): the one answer the daemon's USB watcher and the
udev unit (``backup --on-plug-device``) both use. Selection against real udev data is tested
under umockdev (tests/system/usb); here the disks are described directly."""

from __future__ import annotations

import json
import textwrap

from dmbackup.config import holds_repository, parse
from dmbackup.context import App
from dmbackup.daemon import daemonlock, plug
from dmbackup.log import Logger
from dmbackup.system.usbdetect import UsbDisk
from tests.world import base_config

JOBS = """
[targets.usb1]
type = "usb"
label = "DMBACKUP"
[targets.stick]
type = "usb"
uuid = "6BBA-F738"
[jobs.nightly]
target = "usb1"
on_plug = true
[jobs.also-on-usb1]
what = "config"
target = "usb1"
on_plug = true
[jobs.config-on-stick]
what = "config"
target = "stick"
on_plug = true
[jobs.scheduled-only]
target = "usb1"
schedule = "daily at 02:30"
[jobs.not-a-usb-target]
target = "local"
on_plug = true
"""


def make_app(tmp_path) -> App:
    text = base_config(tmp_path) + textwrap.dedent(JOBS)
    return App(parse(text, str(tmp_path / "dmbackup.toml")), log=Logger(None, keep=100))


def test_jobs_for_a_disk_are_its_targets_on_plug_jobs(tmp_path):
    app = make_app(tmp_path)
    jobs = plug.plug_jobs(app.config, app.log)
    assert [j.name for j, _ in jobs] == ["nightly", "also-on-usb1", "config-on-stick"]
    ignored = [json.loads(x) for x in app.log.recent if '"on_plug_ignored"' in x]
    assert [r["job"] for r in ignored] == ["not-a-usb-target"]

    ours = UsbDisk("/dev/sdz1", "ext4", "1111-2222", "DMBACKUP", bus="usb")
    stick = UsbDisk("/dev/sdy1", "vfat", "6BBA-F738", "STICK", bus="usb")
    other = UsbDisk("/dev/sdx1", "ext4", "3333-4444", "PHOTOS", bus="usb")
    sata = UsbDisk("/dev/sda1", "ext4", "5555-6666", "DMBACKUP", bus="ata")
    assert plug.jobs_for_disk(jobs, ours) == ["also-on-usb1", "nightly"]
    assert plug.jobs_for_disk(jobs, stick) == ["config-on-stick"]
    assert plug.jobs_for_disk(jobs, other) == []
    assert plug.jobs_for_disk(jobs, sata) == []            # bus = "usb" (the default)


def test_the_udev_unit_leaves_the_disk_to_a_running_daemon(tmp_path, monkeypatch):
    app = make_app(tmp_path)
    looked_up = []
    monkeypatch.setattr(plug, "jobs_for_device", lambda *a, **kw: looked_up.append(a) or [])
    lock = daemonlock.take(app.config.state_dir)
    try:
        res = plug.run_plugged(app, "/dev/sdz1")
    finally:
        lock.close()
    assert res.runs == [] and res.exit_code == 0 and looked_up == []
    assert res.summary() == "the dmbackup daemon is running and handles plug-ins: nothing to do for /dev/sdz1"

    res = plug.run_plugged(app, "/dev/sdz1")        # no daemon now: asked, and no job uses the disk
    assert looked_up and res.runs == [] and res.summary() == "no on_plug job uses the disk at /dev/sdz1: nothing to do"


def test_holds_repository_tells_targets_from_bundle_stores(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("x")
    pw.chmod(0o600)
    text = base_config(tmp_path).replace('mode = "none"', f'mode = "repokey"\npassphrase_file = "{pw}"')
    text += textwrap.dedent(f"""
        [targets.offbox]
        type = "mailbox"
        smtp_host = "smtp.example.net"
        to = "admin@example.net"
        username = "u"
        password_file = "{pw}"
    """)
    cfg = parse(text, str(tmp_path / "dmbackup.toml"))
    assert holds_repository(cfg.target("local")) and not holds_repository(cfg.target("offbox"))
