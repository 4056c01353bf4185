"""Every unit file in systemd/ passes ``systemd-analyze verify``; the timer drop-ins we document work.

What this proves, and what it does not: ``systemd-analyze verify`` (offline, no systemd as
PID 1 here) parses every unit, rejects unknown keys and bad values (stderr must stay empty),
loads each template as itself and as an instance (``x@example``), reads drop-ins next to them and checks that each ExecStart=
executable exists. Units name /usr/bin/dmbackup, where the Debian package puts it; the test
copies them to a temporary directory with that path rewritten to the console script installed
in this Python environment. verify checks only the executable of a command line, so for
``systemd-inhibit ... /usr/bin/dmbackup backup %i`` the test checks the wrapped program
itself. Runtime behaviour under a real systemd (Type=notify readiness, sandboxing with mounts)
cannot be shown on this machine; the daemon's sd_notify messages are tested in
test_scheduler.py against a real datagram socket.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dmbackup.daemon.schedule_spec import parse_schedule
from dmbackup.daemon.scheduler import timer_oncalendar

UNITS = Path(__file__).resolve().parents[2] / "systemd"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing: run scripts/install-test-deps.sh")


def installed_dmbackup() -> str:
    exe = Path(sys.executable).parent / "dmbackup"
    if not exe.exists():
        found = shutil.which("dmbackup")
        assert found, "the dmbackup console script is not installed (pip install -e .)"
        exe = Path(found)
    return str(exe)


@pytest.fixture
def unit_dir(tmp_path) -> Path:
    exe = installed_dmbackup()
    for f in UNITS.iterdir():
        if f.is_file():
            (tmp_path / f.name).write_text(f.read_text().replace("/usr/bin/dmbackup", exe))
    return tmp_path


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="")
    return subprocess.run([ANALYZE, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


UNIT_SUFFIXES = (".service", ".timer", ".socket", ".path", ".mount", ".target")
UNIT_FILES = sorted(p.name for p in UNITS.iterdir() if p.is_file() and p.name.endswith(UNIT_SUFFIXES))


def _names_to_verify() -> list[str]:
    """Every unit file; a template also as an instance, which is how systemd loads it."""
    out = []
    for name in UNIT_FILES:
        out.append(name)
        stem, dot, suffix = name.rpartition(".")
        if stem.endswith("@"):
            out.append(f"{stem}example{dot}{suffix}")
    return out


def test_this_issue_s_units_exist():
    assert {"dmbackup.service", "dmbackup-job@.service", "dmbackup-job@.timer"} <= set(UNIT_FILES)


@pytest.mark.parametrize("unit", _names_to_verify())
def test_verify(unit_dir, unit):
    r = analyze("verify", f"./{unit}", cwd=unit_dir)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr


def test_every_wrapped_dmbackup_command_exists(unit_dir):
    """verify checks only argv[0]; dmbackup behind systemd-inhibit is checked here."""
    for name in UNIT_FILES:
        for line in (unit_dir / name).read_text().splitlines():
            if line.startswith(("ExecStart=", "ExecStartPre=", "ExecStop=", "ExecReload=")):
                for word in line.split("=", 1)[1].split():
                    if word.startswith("/") and word.rsplit("/", 1)[-1] in ("dmbackup", "systemd-inhibit", "kill"):
                        assert os.access(word, os.X_OK), (name, word)


def test_verify_notices_a_missing_binary(tmp_path):
    """The check is real: with the unrewritten path (no /usr/bin/dmbackup here) verify fails."""
    if Path("/usr/bin/dmbackup").exists():
        pytest.skip("/usr/bin/dmbackup exists on this machine")
    shutil.copy(UNITS / "dmbackup.service", tmp_path)
    r = analyze("verify", "./dmbackup.service", cwd=tmp_path)
    assert r.returncode != 0 and "/usr/bin/dmbackup" in r.stderr


def _exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return line.removeprefix("ExecStart=").split()


def test_wrapped_command_exists_and_is_the_job_runner(unit_dir):
    argv = _exec_start(unit_dir / "dmbackup-job@.service")
    assert Path(argv[0]).name == "systemd-inhibit" and os.access(argv[0], os.X_OK)
    assert "--what=sleep:shutdown" in argv
    i = next(i for i, a in enumerate(argv) if a.endswith("/dmbackup"))
    assert os.access(argv[i], os.X_OK)
    assert argv[i + 1:] == ["backup", "%i"]
    assert _exec_start(unit_dir / "dmbackup.service")[1:] == ["daemon"]


def test_hardening_and_scheduling_settings_are_present():
    for name in ("dmbackup.service", "dmbackup-job@.service"):
        text = (UNITS / name).read_text()
        for setting in ("ProtectSystem=full", "PrivateTmp=yes", "NoNewPrivileges=yes", "Nice=19",
                        "IOSchedulingClass=idle", "KillMode=mixed"):
            assert re.search(rf"^{re.escape(setting)}$", text, re.M), (name, setting)
        assert not re.search(r"^PrivateDevices=yes", text, re.M), "USB mounting needs /dev"
    assert re.search(r"^Type=notify$", (UNITS / "dmbackup.service").read_text(), re.M)
    assert re.search(r"^Type=oneshot$", (UNITS / "dmbackup-job@.service").read_text(), re.M)
    timer = (UNITS / "dmbackup-job@.timer").read_text()
    for setting in ("Persistent=true", "RandomizedDelaySec=15min"):
        assert re.search(rf"^{re.escape(setting)}$", timer, re.M)


def test_exposure_does_not_regress(unit_dir):
    """systemd's own offline score of the sandbox (lower is better; 10 = no hardening)."""
    for unit in ("dmbackup.service", "dmbackup-job@nightly.service"):
        r = analyze("security", "--offline=true", "--no-pager", f"./{unit}", cwd=unit_dir)
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout + r.stderr)
        if m is None:
            pytest.skip(f"this systemd-analyze cannot score offline: {r.stderr.strip()[:200]}")
        assert float(m.group(1)) <= 6.5, r.stdout[-2000:]


@pytest.mark.parametrize("schedule", ["daily at 02:30", "daily", "weekly on monday at 06:00",
                                      "weekly on sunday at 23:59", "every 6 hours", "every 90 minutes"])
def test_documented_drop_in_for_each_schedule_kind(unit_dir, schedule):
    spec = parse_schedule(schedule)
    lines = timer_oncalendar(spec)
    d = unit_dir / "dmbackup-job@nightly.timer.d"
    d.mkdir()
    (d / "schedule.conf").write_text("[Timer]\n" + "\n".join(lines) + "\n")
    r = analyze("verify", "./dmbackup-job@nightly.timer", cwd=unit_dir)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    for line in lines:
        if line.startswith("OnCalendar=") and line != "OnCalendar=":
            expr = line.removeprefix("OnCalendar=")
            c = analyze("calendar", "--iterations=2", expr, cwd=unit_dir)
            assert c.returncode == 0, c.stderr
            if spec.at:
                assert re.search(rf"Next elapse: .* {spec.at}:00", c.stdout), c.stdout
            if spec.kind == "weekly":
                assert re.search(rf"Next elapse: {spec.day[:3].capitalize()} ", c.stdout), c.stdout


def test_timer_documentation_matches_the_generator():
    """The examples in the timer's comments are what timer_oncalendar() produces."""
    text = (UNITS / "dmbackup-job@.timer").read_text()
    for schedule in ("daily at 02:30", "weekly on monday at 06:00", "every 6 hours"):
        block = "\n".join(f"#   {x}" for x in timer_oncalendar(parse_schedule(schedule)))
        assert block in text, schedule


def _setting(text: str, key: str) -> str | None:
    found = re.findall(rf"^{re.escape(key)}=(.*)$", text, re.M)
    return found[-1] if found else None


@pytest.mark.parametrize("name", ["dmbackup.service", "dmbackup-job@.service", "dmbackup-usb@.service"])
def test_resource_limits_and_proc_hiding(name):
    """Issue 13 (item 18): bounded memory and tasks, no core dumps (they would hold the
    passphrase and the repository key), other users' processes hidden."""
    text = (UNITS / name).read_text()
    assert _setting(text, "MemoryMax") == "2G", name
    assert _setting(text, "TasksMax") == "512", name
    assert _setting(text, "LimitCORE") == "0", name
    assert _setting(text, "ProtectProc") == "invisible", name


@pytest.mark.parametrize("name", ["dmbackup-job@.service", "dmbackup-usb@.service"])
def test_job_units_have_a_start_timeout_above_the_job_timeout(name):
    """A oneshot job unit never runs forever (issue 13, item 8): systemd stops it at
    TimeoutStartSec=, which leaves dmbackup's own job_timeout (and the hooks around the run)
    room to end the run first with a clear error."""
    from dmbackup.config import JobConfig
    from dmbackup.configsection import parse_duration

    text = (UNITS / name).read_text()
    value = _setting(text, "TimeoutStartSec")
    assert value and value != "infinity", name
    hooks_allowance = 2 * 600          # a pre and a post hook at the default hook_timeout
    assert parse_duration(value) > JobConfig.job_timeout + hooks_allowance, value
