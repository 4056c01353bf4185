"""Fixtures for the USB tests: a umockdev testbed, and real loop-device disks.

Two worlds that cannot share a process (see /work/shared/TESTING.md, USB): tests marked
``umockdev`` need libumockdev-preload in LD_PRELOAD (run them with
tests/system/usb/run-umockdev-tests.sh) and are skipped otherwise; tests marked ``realdev`` need
root and real losetup/mount, which fail under the preload, so they are skipped there.
"""

from __future__ import annotations

import gc
import os
import shutil

import pytest

from . import loopdev

DEVICES = os.path.join(os.path.dirname(__file__), "devices")


def under_umockdev() -> bool:
    return "umockdev" in os.environ.get("LD_PRELOAD", "")


def pytest_runtest_setup(item):
    if item.get_closest_marker("umockdev") and not under_umockdev():
        pytest.skip("needs umockdev-wrapper: run tests/system/usb/run-umockdev-tests.sh")
    if item.get_closest_marker("realdev"):
        if under_umockdev():
            pytest.skip("real loop devices and mounts do not work under the umockdev preload")
        if os.geteuid() != 0:
            pytest.skip("needs root for loop devices and mounts")
        if not os.path.exists("/dev/loop-control"):
            pytest.skip("no loop device support (/dev/loop-control missing)")


# -- umockdev ------------------------------------------------------------------------------
class Bed:
    """A umockdev testbed plus helpers to load the hand-written descriptions."""

    def __init__(self, testbed):
        self.tb = testbed
        self.loaded: set[str] = set()

    def load(self, *names: str) -> None:
        for name in names:
            assert name not in self.loaded, f"{name} loaded twice (umockdev aborts on re-adding a path)"
            self.tb.add_from_file(os.path.join(DEVICES, f"{name}.umockdev"))
            self.loaded.add(name)

    def uevent(self, sys_path: str, action: str) -> None:
        self.tb.uevent(sys_path, action)

    def context(self):
        import pyudev

        return pyudev.Context()


@pytest.fixture
def bed():
    import gi

    gi.require_version("UMockdev", "1.0")
    from gi.repository import UMockdev

    # The testbed must exist before any pyudev Context of this test is created.
    testbed = UMockdev.Testbed.new()
    old = os.environ.get("UMOCKDEV_DIR")
    os.environ["UMOCKDEV_DIR"] = testbed.get_root_dir()   # for subprocesses; the preload reads C env
    try:
        yield Bed(testbed)
    finally:
        del testbed
        gc.collect()
        if old is None:
            os.environ.pop("UMOCKDEV_DIR", None)
        else:
            os.environ["UMOCKDEV_DIR"] = old


# -- real loop devices ---------------------------------------------------------------------
@pytest.fixture
def loop_disk(tmp_path):
    """Factory: ``loop_disk("ext4"|"exfat"|"vfat", label=..., size_mb=...) -> LoopDisk``.

    Everything it attached is unmounted and detached at teardown, whatever the test did.
    """
    made: list[loopdev.LoopDisk] = []

    def make(fs: str, label: str = "DMUSB", size_mb: int = 64) -> loopdev.LoopDisk:
        disk = loopdev.create(str(tmp_path / f"disk{len(made)}-{fs}.img"), fs, label, size_mb)
        made.append(disk)
        return disk

    try:
        yield make
    finally:
        errors = []
        for disk in reversed(made):
            try:
                loopdev.destroy(disk)
            except Exception as exc:     # keep detaching the others
                errors.append(exc)
        loopdev.unmount_under(str(tmp_path))
        if errors:
            raise errors[0]


@pytest.fixture
def mount_dir(tmp_path):
    """A mount-point path under the test's tmp dir (not created: the mount layer does that)."""
    path = tmp_path / "mnt"
    yield str(path)
    loopdev.unmount_under(str(tmp_path))


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
