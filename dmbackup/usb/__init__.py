"""USB backup disks: finding them (detect), mounting them (mount), noticing them (watch).

The three layers are independent so each can be tested on its own: detection reads udev
through pyudev and never touches a disk; mounting takes a device node and knows nothing
about udev; the watcher turns udev events into "this disk was plugged in" callbacks. The
``usb`` target (dmbackup.targets.usb) composes them with a ``dir`` target.

Only ``detect`` is imported here: ``watch`` imports pyudev lazily so the daemon pays for it
only when it watches.
"""

from .detect import AmbiguousDisk, DiskNotPresent, UsbDisk, find_disk, list_disks, matches, probe_node

__all__ = ["AmbiguousDisk", "DiskNotPresent", "UsbDisk", "find_disk", "list_disks", "matches", "probe_node"]
