"""Hook directories: order, environment, ignored files, timeout, abort, skip (75), teardown.

Hooks are real executables (shell scripts) run by the real code; the App is the real one with
a config parsed from TOML. The engine-level test (on-failure after a real backup failure)
uses a dir target whose directory does not exist, so the engine itself raises exit 7.
"""

from __future__ import annotations

import json
import os
import stat
import textwrap
import threading
from pathlib import Path

import pytest

from dmbackup import hooks
from dmbackup.app import App
from dmbackup.config import parse
from dmbackup.errors import HookFailed, Interrupted
from dmbackup.log import Logger


def make_app(tmp_path: Path, *, hook_timeout: int = 20, extra: str = "", target_path: str | None = None) -> App:
    (tmp_path / "vmail").mkdir(exist_ok=True)
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "target").mkdir(exist_ok=True)
    (tmp_path / "hooks").mkdir(exist_ok=True)
    toml = textwrap.dedent(f"""
        hostname = "mail.test"
        state_dir = "{tmp_path}/state"
        hooks_dir = "{tmp_path}/hooks"
        hook_timeout = {hook_timeout}
        [source]
        mail_store = "{tmp_path}/vmail"
        config_paths = ["{tmp_path}/etc"]
        [encryption]
        mode = "none"
        [targets.local]
        type = "dir"
        path = "{target_path or (str(tmp_path) + '/target')}"
        [jobs.nightly]
        what = "mail"
        target = "local"
        schedule = "daily at 02:30"
    """) + extra
    cfg = parse(toml, str(tmp_path / "dmbackup.toml"))
    return App(cfg, log=Logger(None, keep=500))


def add_hook(app: App, phase: str, name: str, body: str, mode: int = 0o755) -> Path:
    d = Path(app.config.hooks_dir) / f"{phase}.d"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    p = d / name
    p.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    os.chmod(p, mode)
    return p


def trace_hook(trace: Path) -> str:
    """A hook body that appends one JSON line with its name and the DMBACKUP_* env."""
    return f"""\
        python3 - "$0" >> {trace} <<'EOF'
        import json, os, sys
        env = {{k: v for k, v in os.environ.items() if k.startswith("DMBACKUP_")}}
        print(json.dumps({{"hook": os.path.basename(sys.argv[1]), "env": env}}))
        EOF
        """


def traces(trace: Path) -> list[dict]:
    if not trace.exists():
        return []
    return [json.loads(line) for line in trace.read_text().splitlines()]


def events(app: App, name: str) -> list[dict]:
    return [r for r in (json.loads(x) for x in app.log.recent) if r["event"] == name]


def test_order_env_and_ignored_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DMBACKUP_PASSPHRASE", "secret-pass-phrase")
    app = make_app(tmp_path)
    trace = tmp_path / "trace.jsonl"
    for name in ("20-second", "10-first", "3-third-by-bytes"):
        add_hook(app, "pre-backup", name, trace_hook(trace))
    # none of these may run
    for name in ("15-editor~", "16-x.dpkg-old", "17-y.dpkg-dist", ".hidden", "18-z.ucf-old", "19.bak"):
        add_hook(app, "pre-backup", name, f"echo {name} >> {trace}.bad\n")
    add_hook(app, "pre-backup", "12-not-executable", f"echo bad >> {trace}.bad\n", mode=0o644)
    (Path(app.config.hooks_dir) / "pre-backup.d" / "13-a-directory").mkdir()
    add_hook(app, "post-backup", "50-post", trace_hook(trace))

    ctx = hooks.HookContext(action="backup", target="local", what="mail", job="nightly")
    with hooks.around(app, ctx):
        ctx.snapshot = "20261128T023000Z-abc"
    assert ctx.status == "ok" and ctx.exit_code == 0

    runs = traces(trace)
    assert [r["hook"] for r in runs] == ["10-first", "20-second", "3-third-by-bytes", "50-post"]
    pre, post = runs[0]["env"], runs[-1]["env"]
    assert pre["DMBACKUP_JOB"] == "nightly"
    assert pre["DMBACKUP_TARGET"] == "local"
    assert pre["DMBACKUP_WHAT"] == "mail"
    assert pre["DMBACKUP_STATUS"] == "running"
    assert pre["DMBACKUP_SNAPSHOT"] == ""
    assert pre["DMBACKUP_PHASE"] == "pre-backup"
    assert pre["DMBACKUP_ACTION"] == "backup"
    assert pre["DMBACKUP_HOSTNAME"] == "mail.test"
    assert "DMBACKUP_PASSPHRASE" not in pre, "the passphrase must never reach a hook"
    assert post["DMBACKUP_STATUS"] == "ok"
    assert post["DMBACKUP_SNAPSHOT"] == "20261128T023000Z-abc"
    assert not Path(f"{trace}.bad").exists()


def test_output_is_captured_into_the_log(tmp_path):
    app = make_app(tmp_path)
    add_hook(app, "pre-backup", "10-talk", "echo hello from the hook\necho on stderr >&2\n")
    ctx = hooks.HookContext(action="backup", target="local", job="nightly")
    with hooks.around(app, ctx):
        pass
    lines = [e["line"] for e in events(app, "hook_output") if e["hook"] == "10-talk"]
    assert lines == ["hello from the hook", "on stderr"]
    done = events(app, "hook_done")
    assert done and done[0]["exit_code"] == 0


def test_failing_pre_hook_aborts_and_runs_teardown_and_on_failure(tmp_path):
    app = make_app(tmp_path)
    trace = tmp_path / "trace.jsonl"
    add_hook(app, "pre-backup", "10-ok", trace_hook(trace))
    add_hook(app, "pre-backup", "20-fails", "echo staging area missing\nexit 2\n")
    add_hook(app, "pre-backup", "30-never", trace_hook(trace))
    add_hook(app, "post-backup", "10-cleanup", trace_hook(trace))
    add_hook(app, "on-failure", "10-alert", trace_hook(trace))
    body_ran = []
    ctx = hooks.HookContext(action="backup", target="local", job="nightly")
    with pytest.raises(HookFailed) as ei:
        with hooks.around(app, ctx):
            body_ran.append(True)
    assert ei.value.exit_code == 3
    assert "20-fails" in str(ei.value) and "exited with status 2" in str(ei.value)
    assert "staging area missing" in str(ei.value)
    assert body_ran == []
    runs = traces(trace)
    assert [r["hook"] for r in runs] == ["10-ok", "10-cleanup", "10-alert"]
    assert runs[1]["env"]["DMBACKUP_STATUS"] == "failed"
    assert runs[2]["env"]["DMBACKUP_PHASE"] == "on-failure"
    assert "20-fails" in runs[2]["env"]["DMBACKUP_ERROR"]
    assert runs[2]["env"]["DMBACKUP_EXIT_CODE"] == "3"


def test_exit_75_skips_the_run_without_error(tmp_path):
    app = make_app(tmp_path)
    trace = tmp_path / "trace.jsonl"
    add_hook(app, "pre-backup", "10-not-today", "exit 75\n")
    add_hook(app, "post-backup", "10-cleanup", trace_hook(trace))
    add_hook(app, "on-failure", "10-alert", trace_hook(trace))
    ctx = hooks.HookContext(action="backup", target="local", job="nightly")
    body_ran = []
    with pytest.raises(hooks.RunSkipped) as ei:
        with hooks.around(app, ctx):
            body_ran.append(True)
    assert ei.value.exit_code == 0
    assert body_ran == []
    assert ctx.status == "skipped"
    runs = traces(trace)
    assert [r["hook"] for r in runs] == ["10-cleanup"], "teardown runs; on-failure does not"
    assert runs[0]["env"]["DMBACKUP_STATUS"] == "skipped"


def test_timeout_kills_the_hook_and_its_children(tmp_path):
    app = make_app(tmp_path, hook_timeout=1)
    pidfile = tmp_path / "child.pid"
    add_hook(app, "pre-backup", "10-hangs", f"sleep 300 &\necho $! > {pidfile}\nwait\n")
    ctx = hooks.HookContext(action="backup", target="local", job="nightly")
    with pytest.raises(HookFailed) as ei:
        with hooks.around(app, ctx):
            pass
    assert "timed out after 1 s" in str(ei.value)
    child = int(pidfile.read_text())
    # the whole process group got SIGTERM; the orphaned sleep is gone (or a zombie being reaped)
    try:
        with open(f"/proc/{child}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        assert state in ("Z", "X")
    except FileNotFoundError:
        pass


def test_failing_post_hook_after_success_is_a_warning(tmp_path):
    app = make_app(tmp_path)
    add_hook(app, "post-backup", "10-umount", "echo device busy\nexit 1\n")
    ctx = hooks.HookContext(action="backup", target="local", job="nightly")
    with hooks.around(app, ctx):
        pass
    assert ctx.status == "warning" and ctx.exit_code == 1
    assert any("10-umount" in w and "device busy" in w for w in ctx.warnings)


def test_writable_hook_is_refused(tmp_path):
    app = make_app(tmp_path)
    trace = tmp_path / "trace.jsonl"
    p = add_hook(app, "pre-backup", "10-world-writable", trace_hook(trace))
    os.chmod(p, 0o777)
    ctx = hooks.HookContext(action="backup", target="local", job="nightly")
    with pytest.raises(HookFailed, match="writable by group or others"):
        with hooks.around(app, ctx):
            pass
    assert traces(trace) == []


def test_stop_request_interrupts_a_pre_hook_but_not_teardown(tmp_path):
    app = make_app(tmp_path)
    started = tmp_path / "started"
    trace = tmp_path / "trace.jsonl"
    add_hook(app, "pre-backup", "10-slow", f"touch {started}\nsleep 300\n")
    add_hook(app, "post-backup", "10-cleanup", trace_hook(trace))

    def stopper():
        for _ in range(400):
            if started.exists():
                break
            threading.Event().wait(0.05)
        app.stop.set()

    t = threading.Thread(target=stopper)
    t.start()
    ctx = hooks.HookContext(action="backup", target="local", job="nightly")
    with pytest.raises(Interrupted):
        with hooks.around(app, ctx):
            pass
    t.join()
    assert ctx.status == "interrupted"
    runs = traces(trace)
    assert [r["env"]["DMBACKUP_STATUS"] for r in runs] == ["interrupted"]


def test_restore_phases(tmp_path):
    app = make_app(tmp_path)
    trace = tmp_path / "trace.jsonl"
    add_hook(app, "pre-restore", "10-stop-dovecot", trace_hook(trace))
    add_hook(app, "post-restore", "10-start-dovecot", trace_hook(trace))
    add_hook(app, "pre-backup", "10-not-for-restore", trace_hook(trace))
    ctx = hooks.HookContext(action="restore", target="local", what="mail")
    with hooks.around(app, ctx):
        ctx.snapshot = "S1"
    assert [r["hook"] for r in traces(trace)] == ["10-stop-dovecot", "10-start-dovecot"]
    assert traces(trace)[1]["env"]["DMBACKUP_ACTION"] == "restore"


def test_scripts_listing_ignores_what_it_should(tmp_path):
    d = tmp_path / "pre-backup.d"
    d.mkdir()
    for name in ("b", "a", "c~", "d.dpkg-new", "#e#", "f.rpmsave"):
        (d / name).write_text("#!/bin/sh\n")
        os.chmod(d / name, 0o755)
    (d / "g").write_text("#!/bin/sh\n")
    os.chmod(d / "g", stat.S_IRUSR)
    assert [os.path.basename(p) for p in hooks.scripts(str(tmp_path), "pre-backup")] == ["a", "b"]
    assert hooks.scripts(str(tmp_path), "post-backup") == []
    with pytest.raises(ValueError):
        hooks.scripts(str(tmp_path), "pre-nothing")
