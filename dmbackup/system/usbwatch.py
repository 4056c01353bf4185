"""Hot-plug: call back when a matching backup disk is plugged in.

``watch(on_disk, match, stop_event)`` listens to udev's netlink events for block devices
(``source='udev'``: the events udev sends after it has probed the file system, so ID_FS_*
are known) and calls ``on_disk(disk)`` once each time a disk that ``match`` accepts appears.
The daemon runs it in a thread; ``on_disk`` runs in that thread, so it should hand the work
to the scheduler's queue and return quickly.

"Once per plug": a disk counts as present from its first ``add`` (or ``change``, which is
how a card reader reports new media and how udev reports a re-probe) until its ``remove``;
more events in between do not call back again, a re-plug does. Disks that ``match`` rejects
and devices without a file system are ignored. An exception from ``on_disk`` is logged and
the watch goes on: one failed backup must not stop the next plug-in from being noticed.
"""

from __future__ import annotations

import errno
import logging
import threading
from typing import Callable

from dmbackup.system.usbdetect import UsbDisk, disk_from_device, list_disks

log = logging.getLogger(__name__)


def watch(on_disk: Callable[[UsbDisk], None], match: Callable[[UsbDisk], bool],
          stop_event: threading.Event, *, bus: str = "usb", context=None,
          initial: bool = False, poll_interval: float = 0.5,
          ready: threading.Event | None = None) -> None:
    """Block until ``stop_event`` is set, calling ``on_disk`` for each matching plug-in.

    ``bus``: "usb" (default) or "any", as in the target config. ``initial=True`` also calls
    back for matching disks already present when the watch starts. ``ready`` is set once
    the netlink socket listens, so a caller (or a test) knows no event can be missed after.
    ``poll_interval`` bounds how long a stop request waits; it is not a timing contract.
    """
    import pyudev

    ctx = context if context is not None else pyudev.Context()
    monitor = pyudev.Monitor.from_netlink(ctx, source="udev")
    monitor.filter_by("block")
    monitor.start()
    present: set[str] = set()          # sys paths of matching disks seen since their last add

    def offer(disk: UsbDisk, key: str) -> None:
        try:
            accepted = match(disk)
        except Exception:               # a broken matcher must not end the watch
            log.exception("usb watch: matcher failed for %s", disk.device_node)
            return
        if not accepted or key in present:
            return
        present.add(key)
        log.info("usb watch: backup disk plugged in: %s", disk.describe())
        try:
            on_disk(disk)
        except Exception:
            log.exception("usb watch: handling %s failed", disk.device_node)

    if initial:
        for disk in list_disks(bus, ctx):
            offer(disk, disk.sys_path or disk.device_node)
    if ready is not None:
        ready.set()

    while not stop_event.is_set():
        try:
            device = monitor.poll(timeout=poll_interval)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                # the kernel dropped events: forget who is present and rescan
                log.warning("usb watch: udev events were lost; rescanning")
                present.clear()
                for disk in list_disks(bus, ctx):
                    offer(disk, disk.sys_path or disk.device_node)
                continue
            raise
        if device is None:
            continue
        key = device.sys_path
        action = device.action
        if action == "remove":
            present.discard(key)
            continue
        if action not in ("add", "change"):
            continue
        disk = disk_from_device(device, bus)
        if disk is None:
            if action == "change":      # the file system was wiped or its media ejected
                present.discard(key)
            continue
        offer(disk, key)
