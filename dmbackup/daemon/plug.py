"""USB backup disks: which jobs run when one is plugged in, running them once for the udev
unit, and the disks that could be one (``dmbackup usb list``).

A job with ``on_plug = true`` whose target is a ``usb`` target runs (trigger "usb") when that
target's disk appears. Two things notice it: the daemon's watcher (``dmbackup.system.usbwatch``,
``scheduler.Daemon``), and on timer-only appliances the udev rule, which starts
``dmbackup backup --on-plug-device DEVNAME`` (``run_plugged``). Both ask ``jobs_for_disk``, so
both pick the same jobs. A disk nobody configured selects nothing and is not touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dmbackup import humanize
from dmbackup.daemon.daemonlock import daemon_running
from dmbackup.daemon.jobs import JobResult, run_job
from dmbackup.engine.result import Result


def plug_jobs(config, log=None) -> list[tuple]:
    """(job, usb target config) of every ``on_plug`` job, in config order; an ``on_plug`` job
    whose target is not a usb target is left out (and logged, with ``log``)."""
    out = []
    for job in config.jobs.values():
        if not job.on_plug:
            continue
        tcfg = config.targets.get(job.target)
        if tcfg is None or tcfg.type != "usb":
            if log is not None:
                log.warning("on_plug_ignored", job=job.name, reason=f"target {job.target!r} is not a usb target")
            continue
        out.append((job, tcfg))
    return out


def jobs_for_disk(jobs: list[tuple], disk) -> list[str]:
    """Names of the jobs (from ``plug_jobs``) whose target is ``disk`` (a UsbDisk), sorted."""
    return sorted(job.name for job, tcfg in jobs if tcfg.matches(disk))


def jobs_for_device(config, device_node: str, context=None) -> list[str]:
    """Names of the ``on_plug`` jobs whose usb target is the disk at ``device_node``."""
    from dmbackup.targets.usb import disk_for_node

    return jobs_for_disk(plug_jobs(config), disk_for_node(device_node, context))


@dataclass
class PlugResult(Result):
    """``dmbackup backup --on-plug-device DEV``: the jobs run, or why none was (``note``)."""

    device: str
    runs: list[JobResult] = field(default_factory=list)
    note: str | None = None

    @property
    def exit_code(self) -> int:
        return max((r.exit_code for r in self.runs), default=0)     # the worst one wins

    def as_dict(self) -> dict:
        return {"device": self.device, "runs": [r.as_dict() for r in self.runs], "note": self.note,
                "exit_code": self.exit_code}

    def as_json(self) -> list[dict]:
        return [r.as_dict() for r in self.runs]

    def summary(self) -> str:
        return self.note if self.note is not None else "\n".join(f"job {r.job}: {r.status}" for r in self.runs)

    def notes(self) -> list[str]:
        return [f"dmbackup: {r.error}" for r in self.runs if r.error]


def run_plugged(app, device: str, *, context=None) -> PlugResult:
    """Run the ``on_plug`` jobs of the disk at ``device``, one after another (trigger "usb");
    nothing when the daemon runs (it handles plug-ins itself) or no job uses that disk."""
    if daemon_running(app.config.state_dir):
        return PlugResult(device, note=f"the dmbackup daemon is running and handles plug-ins: nothing to do "
                                       f"for {device}")
    names = jobs_for_device(app.config, device, context)
    if not names:
        return PlugResult(device, note=f"no on_plug job uses the disk at {device}: nothing to do")
    return PlugResult(device, runs=[run_job(app, name, trigger="usb") for name in names])


@dataclass
class DiskList(Result):
    """``dmbackup usb list``: USB partitions that could be a backup disk, which configured
    targets each one is, and whether such a target has a repository enrolled here (which disk
    holds it is checked when it is mounted for a run)."""

    disks: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"disks": self.disks, "exit_code": self.exit_code}

    def as_json(self) -> list[dict]:
        return self.disks

    def summary(self) -> str:
        if not self.disks:
            return "no USB disks found"
        lines = [f"{'device':<12} {'label':<16} {'uuid':<38} {'fs':<6} {'size':>10}  target"]
        for r in self.disks:
            mark = (", ".join(r["targets"]) + (" (enrolled)" if r["enrolled"] else " (not enrolled)")
                    if r["targets"] else "-")
            lines.append(f"{r.get('device', '-'):<12} {r.get('label') or '-':<16} {r.get('uuid') or '-':<38} "
                         f"{r.get('fstype') or '-':<6} {humanize.size(r.get('size')):>10}  {mark}")
        return "\n".join(lines)


def usb_disks(app) -> DiskList:
    from dmbackup.system import usbdetect

    usb_targets = {n: t for n, t in app.config.targets.items() if t.type == "usb"}
    rows = []
    for d in usbdetect.list_disks():
        r = d.as_dict()
        r["targets"] = sorted(n for n, t in usb_targets.items() if t.matches(d))
        r["enrolled"] = any(app.state.enrolled(n) for n in r["targets"])
        rows.append(r)
    return DiskList(disks=rows)
