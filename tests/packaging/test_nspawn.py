"""The Debian package under a real, booted systemd (issue 14): systemd-nspawn --boot of a
Debian 12 root made by debootstrap.

What it proves, with nothing faked:

1. ``apt-get install`` of the .deb (built from this checkout by scripts/build-deb.sh) works in
   a minimal bookworm system with systemd as PID 1;
2. ``systemctl enable --now dmbackup.service`` returns with the daemon active (``Type=notify``:
   systemd leaves "activating" only on the daemon's READY=1) and its STATUS= line shown;
3. ``dmbackup-job@nightly.timer`` fires (a drop-in makes it fire 1 s after it starts) and runs
   ``dmbackup-job@nightly.service`` (systemd-inhibit + dmbackup backup): the run is recorded with
   trigger "timer", the snapshot is on the target and verifies;
4. an upgrade (``apt-get install`` of a higher version) under a daemon that is running a job
   does not touch that job: postinst sends SIGUSR2, the daemon finishes the job, exits 75 and
   systemd restarts it (RestartForceExitStatus=75): the job ends "ok", then the daemon's
   MainPID changes;
5. ``systemctl stop dmbackup.service`` ends it cleanly: result success, exit status 0, no
   SIGKILL, no stop timeout; then the container powers off and systemd-nspawn exits 0.

The root is built once per machine with ``debootstrap --variant=minbase`` and cached under
/var/tmp/dmbackup-test-nspawn/ (keyed by suite, variant and include list; CI machines are
fresh, so there it is built, about a minute, while the two .debs are being built). The container runs
on it with ``--volatile=overlay``: every write goes to a tmpfs upper layer that vanishes with
the container, so the cached root stays clean. The backup targets are host directories bound
into the container (a dir target on overlayfs is refused by dmbackup: files of an overlay
report another st_dev than its directories). Interaction goes through ``nsenter`` into the
container's PID 1 (``--register=no --keep-unit``: no machined needed on the host).

Root only; skipped when systemd-nspawn, debootstrap, nsenter or the .deb tools are missing
(scripts/install-test-deps.sh installs them) or when this machine's /usr/bin/python3 is not
bookworm's 3.11 (the package's venv is built against it). The Debian mirror used by debootstrap
is $DMBACKUP_TEST_DEBIAN_MIRROR (default http://deb.debian.org/debian).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "scripts" / "build-deb.sh"
SUITE, VARIANT, INCLUDE = "bookworm", "minbase", ("dbus", "python3", "systemd")
MIRROR = os.environ.get("DMBACKUP_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CACHE = Path("/var/tmp/dmbackup-test-nspawn")
HOSTNAME = "dmbackup-nspawn"                        # the config's hostname (the repository's name)
CPATH = "/usr/sbin:/usr/bin:/sbin:/bin"
DEBS_IN = "/srv/dmbackup-test-debs"                 # bind-mounted, read-only
APT_ENV = ["DEBIAN_FRONTEND=noninteractive"]
BOOT_TIMEOUT = 180
T0 = time.monotonic()


def _host_python_is_bookworms() -> bool:
    try:
        out = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return False
    return out == "(3, 11)"


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="boots a container with systemd-nspawn: run as root"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in
                           ("dpkg-deb", "apt-get", "systemd-nspawn", "debootstrap", "nsenter")),
                       reason="dpkg-deb/apt-get/systemd-nspawn/debootstrap/nsenter missing: "
                              "run scripts/install-test-deps.sh"),
    pytest.mark.skipif(not _host_python_is_bookworms(),
                       reason="the .deb's venv is built on this machine's /usr/bin/python3, which "
                              "is not Debian 12's 3.11: it would not run in a bookworm root"),
]


def say(msg: str) -> None:
    print(f"[nspawn +{time.monotonic() - T0:5.1f}s] {msg}", flush=True)


def host(cmd, *, check=True, env=None, timeout=600, **kw) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("DMBACKUP_", "PYTHON"))}
    e.update(env or {})
    r = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout, **kw)
    if check:
        assert r.returncode == 0, f"{cmd} -> {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r


def wait_for(what: str, probe, timeout: float, interval: float = 0.5):
    """Poll ``probe()`` until it returns something true; that value is returned."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


# --- the cached root --------------------------------------------------------------------------

def _root_path() -> Path:
    key = hashlib.sha256(f"{SUITE} {VARIANT} {','.join(sorted(INCLUDE))}".encode()).hexdigest()[:12]
    return CACHE / f"{SUITE}-{VARIANT}-{key}"


@contextlib.contextmanager
def cached_root():
    """Yields a callable returning the root once it is ready; debootstrap (when the root is not
    cached yet) runs in the background meanwhile. A lock keeps two runs from building it twice;
    a half-built root is never at the final path (built beside it, then renamed)."""
    root = _root_path()
    CACHE.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = open(CACHE / ".lock", "w")
    proc = log = build = None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if root.is_dir():
            say(f"cached root {root}")
        else:
            for stale in CACHE.glob(f".build-{root.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            build = CACHE / f".build-{root.name}-{os.getpid()}"
            log = open(CACHE / f"{root.name}.debootstrap.log", "w")
            cmd = ["debootstrap", f"--variant={VARIANT}", f"--include={','.join(INCLUDE)}",
                   SUITE, str(build), MIRROR]
            say("building the root in the background: " + " ".join(cmd))
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def ready() -> Path:
            nonlocal proc
            if proc is not None:
                rc = proc.wait(timeout=1200)
                proc = None
                if rc != 0:
                    tail = Path(log.name).read_text(errors="replace")[-3000:]
                    raise AssertionError(f"debootstrap failed ({rc}); {log.name}:\n{tail}")
                os.rename(build, root)
                say(f"root ready: {root}")
            return root

        yield ready
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        if build is not None and build.exists():
            shutil.rmtree(build, ignore_errors=True)
        if log is not None:
            log.close()
        lock.close()


# --- the packages -------------------------------------------------------------------------------

def upstream_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def build_deb(version: str, dest: Path) -> Path:
    """scripts/build-deb.sh at ``version`` (unique to this run: dist/ is shared with other
    tests and people), moved out of dist/ into ``dest``."""
    say(f"building the .deb {version}")
    r = host(["bash", str(BUILD)], env={"DMBACKUP_DEB_VERSION": version}, cwd=REPO)
    built = REPO / r.stdout.strip().splitlines()[-1]
    assert built.is_file() and f"_{version}_" in built.name, r.stdout
    out = dest / built.name
    shutil.move(built, out)
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(root, deb A, deb B): the cached root and two versions of the package, A < B."""
    debs = tmp_path_factory.mktemp("debs")
    v = upstream_version()
    va, vb = f"{v}~nspawn{os.getpid()}", f"{v}+nspawn{os.getpid()}"
    assert host(["dpkg", "--compare-versions", vb, "gt", va], check=False).returncode == 0
    # both builds (each in its own staging directory) beside debootstrap: 2 cores are enough
    with cached_root() as ready, concurrent.futures.ThreadPoolExecutor(2) as pool:
        builds = [pool.submit(build_deb, ver, debs) for ver in (va, vb)]
        deb_a, deb_b = (b.result() for b in builds)
        root = ready()
    return root, deb_a, deb_b


# --- the container ------------------------------------------------------------------------------

class Container:
    """systemd-nspawn --boot in the background; commands run in it through nsenter."""

    def __init__(self, root: Path, binds: dict[str, tuple[Path, bool]], log: Path):
        self.root, self.binds, self.log_path = root, binds, log
        self.proc: subprocess.Popen | None = None
        self.leader = 0

    def boot(self) -> None:
        cmd = ["systemd-nspawn", "--quiet", "--boot", "--directory", str(self.root),
               "--register=no", "--keep-unit", "--volatile=overlay", "--console=read-only"]
        for inside, (outside, writable) in self.binds.items():
            cmd.append(f"--bind{'' if writable else '-ro'}={outside}:{inside}")
        say("booting: " + " ".join(cmd))
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.leader = wait_for("the container's PID 1", self._find_leader, 60, 0.2)
        say(f"container PID 1 is host PID {self.leader}")

        def booted():
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.console()}")
            r = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=BOOT_TIMEOUT)
            return r.stdout.strip() if r.stdout.strip() in ("running", "degraded") else None

        state = wait_for("the container's boot", booted, BOOT_TIMEOUT, 1)
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"], check=False).stdout
            say(f"booted, degraded (not dmbackup's doing): {failed.strip()}")
        else:
            say("booted: running")

    def _find_leader(self) -> int:
        """The child of systemd-nspawn that runs systemd (PID 1 in the container)."""
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.console()}")
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == self.proc.pid and comm == "systemd":
                return int(d.name)
        return 0

    def console(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def run(self, argv: list[str], *, check=True, input=None, timeout=300) -> subprocess.CompletedProcess:
        cmd = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={CPATH}", "LANG=C.UTF-8",
               "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "TERM=dumb", *argv]
        try:
            r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"in the container: {argv} still running after {timeout} s") from None
        if check:
            assert r.returncode == 0, (f"in the container: {argv} -> {r.returncode}\n"
                                       f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}")
        return r

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess:
        return self.run(["sh", "-ec", script], **kw)

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        self.run(["sh", "-ec", f'mkdir -p "$(dirname "$0")"; umask 077; cat > "$0"; chmod {mode} "$0"', path],
                 input=text)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> list[dict]:
        """The unit's journal entries: {"pid", "message", "event" (dmbackup's JSON lines)}."""
        out = self.run(["journalctl", "--no-pager", "-o", "json", "-u", unit]).stdout
        entries = []
        for line in out.splitlines():
            e = json.loads(line)
            msg = e.get("MESSAGE")
            if not isinstance(msg, str):
                continue
            ev = None
            if msg.startswith("{"):
                with contextlib.suppress(ValueError):
                    ev = json.loads(msg)
            entries.append({"pid": int(e.get("_PID", 0)), "message": msg, "event": ev})
        return entries

    def dm(self, *args: str, check=True) -> subprocess.CompletedProcess:
        return self.run(["dmbackup", *args], check=check)

    def poweroff(self) -> int:
        say("powering off")
        self.run(["systemctl", "poweroff"], check=False, timeout=60)
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the container did not power off:\n{self.console()}") from None

    def kill(self) -> None:
        """After a failure: SIGKILL to the container's PID 1 (every process in its PID
        namespace dies with it), then to systemd-nspawn (it unmounts the overlay)."""
        if self.proc is not None and self.proc.poll() is None:
            if self.leader and self._find_leader() == self.leader:
                os.kill(self.leader, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=30)
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=60)
        if getattr(self, "log", None):
            self.log.close()


@pytest.fixture
def container(prepared, tmp_path):
    root, deb_a, _ = prepared
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup2").mkdir()
    c = Container(root, {DEBS_IN: (deb_a.parent, False),
                         "/srv/backup": (tmp_path / "backup", True),
                         "/srv/backup2": (tmp_path / "backup2", True)},
                  tmp_path / "console.log")
    try:
        c.boot()
        yield c
    except BaseException:
        if c.proc is not None:
            print(c.console())
        raise
    finally:
        c.kill()


@contextlib.contextmanager
def journal_on_failure(c: Container):
    """On a failure, print what the dmbackup units logged (pytest shows it with the failure)."""
    try:
        yield
    except BaseException:
        if c.leader and c.proc.poll() is None:
            r = c.run(["journalctl", "--no-pager", "-o", "short-monotonic", "-u", "dmbackup*"], check=False)
            print("--- journal of the dmbackup units in the container:\n" + r.stdout[-30000:])
        raise


# --- setting dmbackup up inside -----------------------------------------------------------------

HOLD_HOOK = """#!/bin/sh
# test hook: holds the job "slow" until the test creates /run/dmbackup-test/release
[ "$DMBACKUP_JOB" = slow ] || exit 0
touch /run/dmbackup-test/slow-started
while [ ! -e /run/dmbackup-test/release ]; do sleep 0.2; done
echo released
"""


def configure(c: Container) -> None:
    """The installed example config, adapted: a small Maildir, two dir targets (bound host
    directories), the passphrase in a 0600 file; jobs "nightly" (no schedule: run by its
    timer) and "slow" (every minute, on its own target: run by the daemon, held by a hook)."""
    maildir = "/var/vmail/example.it/anna/Maildir"
    c.sh(f'for d in cur new tmp .Sent/cur .Sent/new .Sent/tmp; do mkdir -p "{maildir}/$d"; done')
    for i in range(1, 6):
        c.write(f"{maildir}/cur/170000000{i}.M{i}P1.{HOSTNAME}:2,S",
                f"From: bob@example.it\nTo: anna@example.it\nSubject: message {i}\n"
                f"Message-ID: <{i}@example.it>\n\nbody {i}\n" + "x" * 2000 * i + "\n")
    c.write(f"{maildir}/.Sent/cur/1700000010.M9P1.{HOSTNAME}:2,RS",
            "From: anna@example.it\nSubject: sent\n\nsent\n")
    c.write("/etc/dmbackup/passphrase", "correct horse battery staple inside nspawn\n", mode="0600")

    conf = c.run(["cat", "/etc/dmbackup/dmbackup.toml"]).stdout
    for old, new in (('# hostname = "mail.example.it"', f'hostname = "{HOSTNAME}"'),
                     ('"/srv/dmbackup"', '"/srv/backup"'),
                     ('["/etc/postfix", "/etc/dovecot", "/etc/dmbackup"]', '["/etc/dmbackup"]'),
                     ('schedule = "daily at 02:30"\n', '')):
        assert old in conf, f"the installed example config no longer has {old!r}"
        conf = conf.replace(old, new, 1)
    conf += """
# added by tests/packaging/test_nspawn.py
[targets.second]
type = "dir"
path = "/srv/backup2"
require_mount = false

[jobs.slow]
what = "mail"
target = "second"
schedule = "every 1 minute"
verify_after = "quick"
"""
    c.write("/etc/dmbackup/dmbackup.toml", conf, mode="0600")
    c.write("/etc/dmbackup/hooks/pre-backup.d/50-test-hold", HOLD_HOOK, mode="0755")
    c.sh("mkdir -p /run/dmbackup-test")

    say("dmbackup check-config; init local; init second")
    assert "ok" in c.dm("check-config").stdout
    c.dm("init", "local")
    c.dm("init", "second")


def events(entries: list[dict], name: str, **match) -> list[dict]:
    return [e for e in entries if e["event"] and e["event"].get("event") == name
            and all(e["event"].get(k) == v for k, v in match.items())]


def job_status(c: Container, job: str) -> dict:
    st = json.loads(c.dm("status", "--json").stdout)
    return next(j for j in st["jobs"] if j["name"] == job)


# --- the test -------------------------------------------------------------------------------------

def test_daemon_timer_upgrade_and_stop_under_booted_systemd(prepared, container, tmp_path):
    with journal_on_failure(container):
        scenario(prepared, container, tmp_path)


def scenario(prepared, c: Container, tmp_path: Path) -> None:
    _, deb_a, deb_b = prepared
    va = deb_a.name.split("_")[1]
    vb = deb_b.name.split("_")[1]

    # --- 1. install: apt-get resolves the Depends from the root (python3, libudev1, libc6)
    say(f"apt-get install {deb_a.name}")
    r = c.run(["env", *APT_ENV, "apt-get", "install", "-y", "--no-install-recommends",
               f"{DEBS_IN}/{deb_a.name}"])
    assert "nothing is enabled or started yet" in r.stdout, r.stdout
    st = c.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "dmbackup"]).stdout
    assert st == f"install ok installed {va}", st
    assert c.show("dmbackup.service", "UnitFileState")["UnitFileState"] == "disabled"
    configure(c)

    # --- 2. the daemon: Type=notify, so `systemctl start` returns once READY=1 arrived
    # enabled, as on an appliance; that also keeps the stopped unit loaded at the end (an
    # unreferenced inactive unit is garbage-collected and `systemctl show` reports defaults)
    say("systemctl enable --now dmbackup.service")
    c.run(["systemctl", "enable", "--now", "dmbackup.service"], timeout=120)
    d = c.show("dmbackup.service", "Type", "ActiveState", "SubState", "StatusText", "MainPID", "NRestarts")
    say(f"dmbackup.service: {d}")
    assert d["Type"] == "notify"
    assert (d["ActiveState"], d["SubState"]) == ("active", "running"), d
    assert d["StatusText"].startswith("idle"), d          # sent with READY=1 (and after each job)
    pid_a = int(d["MainPID"])
    assert pid_a > 0
    ready = events(c.journal("dmbackup.service"), "daemon_ready")
    assert [e["pid"] for e in ready] == [pid_a], ready

    # --- 3. a job through its timer: fires 1 s after it is started (drop-in), runs the service
    c.write("/etc/systemd/system/dmbackup-job@nightly.timer.d/50-test.conf",
            "[Timer]\nOnCalendar=\nOnActiveSec=1s\nRandomizedDelaySec=0\nAccuracySec=1s\nPersistent=false\n")
    c.run(["systemctl", "daemon-reload"])
    say("systemctl start dmbackup-job@nightly.timer")
    c.run(["systemctl", "start", "dmbackup-job@nightly.timer"])

    def job_finished():
        s = c.show("dmbackup-job@nightly.service", "ActiveState", "Result", "ExecMainStatus", "InvocationID")
        return s if s["InvocationID"] and s["ActiveState"] in ("inactive", "failed") else None

    s = wait_for("dmbackup-job@nightly.service to run and finish", job_finished, 300)
    jl = c.journal("dmbackup-job@nightly.service")
    say(f"dmbackup-job@nightly.service: {s}")
    assert (s["ActiveState"], s["Result"], s["ExecMainStatus"]) == ("inactive", "success", "0"), \
        "\n".join(e["message"] for e in jl)
    t = c.show("dmbackup-job@nightly.timer", "LastTriggerUSec", "ActiveState")
    assert t["LastTriggerUSec"] not in ("", "n/a", "0"), t            # the timer did fire it
    done = events(jl, "job_done", job="nightly")
    assert len(done) == 1 and done[0]["event"]["status"] == "ok", done
    start = events(jl, "job_start", job="nightly")
    assert start and start[0]["event"]["trigger"] == "timer", start   # DMBACKUP_TRIGGER of the unit
    last = job_status(c, "nightly")["last_run"]
    assert last["status"] == "ok" and last["trigger"] == "timer", last
    snap = last["snapshot"]
    snaps = c.dm("snapshots", "--target", "local", "--json").stdout
    assert snap in snaps, snaps
    say(f"snapshot {snap} made by the timer; dmbackup verify --read-data")
    c.dm("verify", "--target", "local", "--read-data")
    on_host = tmp_path / "backup" / "dmbackup" / HOSTNAME
    assert on_host.is_dir() and any(on_host.rglob("*")), "nothing on the bound target directory"

    # --- 4. upgrade while the daemon runs a job: the job is not interrupted, the daemon
    # restarts after it. "slow" falls due a minute after the daemon started; its hook holds it.
    say("waiting for the daemon to start job slow (every 1 minute)")
    wait_for("the daemon to start job slow",
             lambda: c.run(["test", "-e", "/run/dmbackup-test/slow-started"], check=False).returncode == 0,
             180)
    d = c.show("dmbackup.service", "StatusText", "MainPID")
    assert d["StatusText"] == "running job slow" and int(d["MainPID"]) == pid_a, d

    say(f"apt-get install {deb_b.name} (upgrade) while job slow runs")
    r = c.run(["env", *APT_ENV, "apt-get", "install", "-y", "--no-install-recommends",
               f"{DEBS_IN}/{deb_b.name}"])
    assert "restarts with the new version after its current job" in r.stdout, r.stdout
    st = c.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "dmbackup"]).stdout
    assert st == f"install ok installed {vb}", st
    d = c.show("dmbackup.service", "ActiveState", "StatusText", "MainPID")
    assert d == {"ActiveState": "active", "StatusText": "running job slow", "MainPID": str(pid_a)}, d

    say("releasing job slow; waiting for the daemon to finish it and restart")
    c.sh("touch /run/dmbackup-test/release")

    def restarted():
        s = c.show("dmbackup.service", "ActiveState", "SubState", "MainPID", "NRestarts", "StatusText")
        return s if s["ActiveState"] == "active" and int(s["MainPID"]) not in (0, pid_a) else None

    d = wait_for("dmbackup.service to restart (RestartSec=30s)", restarted, 240)
    pid_b = int(d["MainPID"])
    say(f"dmbackup.service restarted: {d}")
    assert d["NRestarts"] == "1", d
    jd = c.journal("dmbackup.service")
    old = [e for e in jd if e["pid"] == pid_a]
    slow_done = events(old, "job_done", job="slow")
    assert len(slow_done) == 1 and slow_done[0]["event"]["status"] == "ok", \
        "\n".join(e["message"] for e in old)
    assert events(old, "hook_output", line="released"), "the job went on without its hook's release"
    usr2 = events(old, "signal", signal="SIGUSR2")
    stopped = events(old, "daemon_stopped")
    assert usr2 and stopped and stopped[0]["event"].get("restart") is True, stopped
    assert old.index(slow_done[0]) < old.index(stopped[0]), "the daemon stopped before the job ended"
    assert not events(old, "job_done", status="interrupted")
    pid1 = [e["message"] for e in jd if e["pid"] == 1]                  # systemd's own lines
    say("systemd about dmbackup.service: " + " | ".join(pid1))
    assert any("Scheduled restart job" in m for m in pid1), pid1
    assert not any("Failed with result" in m or "Main process exited" in m for m in pid1), pid1
    assert [e["pid"] for e in events(jd, "daemon_ready")] == [pid_a, pid_b]
    # the new daemon may catch "slow" up at once (a minute passed): let that run end first
    wait_for("the restarted daemon to be idle",
             lambda: c.show("dmbackup.service", "StatusText")["StatusText"].startswith("idle"), 120)
    assert job_status(c, "slow")["last_run"]["status"] == "ok"
    c.dm("verify", "--target", "second")

    # --- 5. a clean stop: SIGTERM to the daemon, exit 0, well within TimeoutStopSec
    say("systemctl stop dmbackup.service")
    c.run(["systemctl", "stop", "dmbackup.service"], timeout=1200)
    s = c.show("dmbackup.service", "ActiveState", "Result", "ExecMainCode", "ExecMainStatus", "MainPID")
    say(f"dmbackup.service after stop: {s}")
    assert s["ActiveState"] == "inactive" and s["Result"] == "success", s   # not "timeout"
    assert (s["ExecMainCode"], s["ExecMainStatus"]) == ("1", "0"), s      # CLD_EXITED, status 0
    jd = [e for e in c.journal("dmbackup.service") if e["pid"] in (pid_b, 1)]
    new = [e for e in jd if e["pid"] == pid_b]
    assert events(new, "signal", signal="SIGTERM") and events(new, "daemon_stopped"), \
        "\n".join(e["message"] for e in new)
    pid1 = [e["message"] for e in jd if e["pid"] == 1]
    assert sum("Deactivated successfully" in m for m in pid1) == 2, pid1   # the restart and the stop
    bad = [m for m in pid1 if any(w in m for w in ("SIGKILL", "Killing process", "timed out", "code=killed",
                                                   "Failed with result", "Main process exited"))]
    assert bad == [], bad

    # --- the container goes down cleanly
    rc = c.poweroff()
    assert rc == 0, c.console()
    say("done")
