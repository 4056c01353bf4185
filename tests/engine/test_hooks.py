"""Hook directories: order, environment, ignored files, timeout, abort, skip (75), teardown;
and the example hooks shipped in hooks/.

Hooks are real executables (shell scripts) run by the real code; the App is the real one with
a config parsed from TOML. The job-level tests use the real engine on a dir target; a failing
backup is a target directory that does not exist, so the engine itself raises exit 7. The
Dovecot staging example runs against a private Dovecot, the healthchecks one against an HTTP
server on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import stat
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest

from tests.world import base_config
from dmbackup.engine import hooks
from dmbackup.context import App
from dmbackup.config import parse
from dmbackup.errors import HookFailed, Interrupted
from dmbackup.daemon.jobs import run_job
from dmbackup.log import Logger


def make_app(tmp_path: Path, *, hook_timeout: int = 20, extra: str = "", target_path: str | None = None) -> App:
    toml = base_config(tmp_path, target_path=target_path, hook_timeout=hook_timeout) + textwrap.dedent("""
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


def test_on_failure_runs_when_the_backup_itself_fails(tmp_path):
    app = make_app(tmp_path, target_path=str(tmp_path / "unplugged"))
    trace = tmp_path / "trace.jsonl"
    add_hook(app, "pre-backup", "10-prepare", trace_hook(trace))
    add_hook(app, "post-backup", "10-cleanup", trace_hook(trace))
    add_hook(app, "on-failure", "10-alert", trace_hook(trace))
    result = run_job(app, "nightly", send_notifications=False)
    assert result.status == "failed" and result.exit_code == 7
    runs = traces(trace)
    assert [r["hook"] for r in runs] == ["10-prepare", "10-cleanup", "10-alert"]
    alert = runs[2]["env"]
    assert alert["DMBACKUP_STATUS"] == "failed" and alert["DMBACKUP_EXIT_CODE"] == "7"
    assert "unplugged" in alert["DMBACKUP_ERROR"]
    assert app.state.runs()["nightly"]["last_run"]["status"] == "failed"


def test_job_skipped_by_a_hook_is_recorded_as_skipped(tmp_path):
    app = make_app(tmp_path)
    add_hook(app, "pre-backup", "10-only-on-weekdays", "echo not today\nexit 75\n")
    result = run_job(app, "nightly")
    assert result.status == "skipped" and result.exit_code == 0 and not result.notified
    assert result.backup is None and result.snapshot_id is None
    last = app.state.runs()["nightly"]
    assert last["last_run"]["status"] == "skipped" and "last_success" not in last
    assert list((tmp_path / "target").iterdir()) == [], "nothing was written"


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


# --- the example hooks shipped in hooks/ ---------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "hooks"
EXAMPLE_SCRIPTS = sorted(p for p in EXAMPLES.glob("*.d/*") if p.is_file())


def install_example(app: App, rel: str) -> Path:
    src = EXAMPLES / rel
    dst = Path(app.config.hooks_dir) / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(dst.parent, 0o755)
    shutil.copy2(src, dst)
    return dst


def hooks_conf(tmp_path: Path, monkeypatch, text: str) -> None:
    conf = tmp_path / "hooks.conf"
    conf.write_text(textwrap.dedent(text))
    monkeypatch.setenv("DMBACKUP_HOOKS_CONF", str(conf))


def test_examples_are_executable_and_listed():
    assert {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLE_SCRIPTS} == {
        "pre-backup.d/10-dovecot-staging", "pre-backup.d/20-postfix-queue", "pre-backup.d/30-lvm-snapshot",
        "post-backup.d/30-lvm-snapshot", "post-backup.d/90-healthchecks-ping"}
    for p in EXAMPLE_SCRIPTS:
        assert os.access(p, os.X_OK), p
        assert str(p) in hooks.scripts(str(EXAMPLES), p.parent.name.removesuffix(".d"))


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_examples_are_shellcheck_clean():
    r = subprocess.run(["shellcheck", "--shell=sh", "-x", *map(str, EXAMPLE_SCRIPTS)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        type(self).hits.append((self.path, body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


@pytest.fixture
def ping_server():
    _Recorder.hits = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, _Recorder.hits
    srv.shutdown()
    srv.server_close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_healthchecks_ping_on_success_and_failure(tmp_path, monkeypatch, ping_server):
    from dmbackup import engine

    srv, hits = ping_server
    url_dir = tmp_path / "hc.d"
    url_dir.mkdir()
    (url_dir / "nightly.url").write_text(f"http://127.0.0.1:{srv.server_port}/ping/abc-123\n")
    hooks_conf(tmp_path, monkeypatch, f"HEALTHCHECKS_URL_DIR={url_dir}\nHEALTHCHECKS_URL_FILE=/nonexistent\n")
    mbox = tmp_path / "vmail" / "example.test" / "u" / "Maildir" / "cur"
    mbox.mkdir(parents=True)
    (mbox / "1.M1.host:2,S").write_text("Subject: hi\n\nhello\n")
    app = make_app(tmp_path)
    install_example(app, "post-backup.d/90-healthchecks-ping")
    engine.init_repo(app, "local")
    ok = run_job(app, "nightly")
    assert ok.status == "ok", ok.error
    assert len(hits) == 1 and hits[0][0] == "/ping/abc-123"
    assert "job=nightly status=ok" in hits[0][1] and f"snapshot={ok.snapshot_id}" in hits[0][1]

    broken = make_app(tmp_path, target_path=str(tmp_path / "unplugged"))
    bad = run_job(broken, "nightly")
    assert bad.status == "failed"
    assert hits[1][0] == "/ping/abc-123/fail"
    assert "status=failed" in hits[1][1] and "unplugged" in hits[1][1]
    # the URL never reaches the log (it is a secret), only the outcome
    assert all("abc-123" not in line for line in broken.log.recent)


def test_postfix_queue_listing(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "postqueue"
    fake.write_text(textwrap.dedent("""\
        #!/bin/sh
        case "$1" in
          -j) echo '{"queue_name": "deferred", "queue_id": "4F2A81C0A", "sender": "a@example.test"}'
              echo '{"queue_name": "active", "queue_id": "9B3C12D0F", "sender": "b@example.test"}' ;;
          -p) echo "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------" ;;
        esac
        """))
    os.chmod(fake, 0o755)
    extra = tmp_path / "extra"
    hooks_conf(tmp_path, monkeypatch, f"EXTRA_DIR={extra}\nPOSTQUEUE={fake}\n")
    app = make_app(tmp_path)
    install_example(app, "pre-backup.d/20-postfix-queue")
    ctx = hooks.HookContext(action="backup", target="local", job="nightly")
    with hooks.around(app, ctx):
        pass
    lines = (extra / "postfix-queue.json").read_text().splitlines()
    assert [json.loads(x)["queue_id"] for x in lines] == ["4F2A81C0A", "9B3C12D0F"]
    assert (extra / "postfix-queue.txt").read_text().startswith("-Queue ID-")
    assert stat.S_IMODE((extra / "postfix-queue.json").stat().st_mode) == 0o600
    assert any("2 messages listed" in e["line"] for e in events(app, "hook_output"))


def test_lvm_sketch_does_nothing_until_configured(tmp_path, monkeypatch):
    hooks_conf(tmp_path, monkeypatch, "")
    app = make_app(tmp_path)
    install_example(app, "pre-backup.d/30-lvm-snapshot")
    install_example(app, "post-backup.d/30-lvm-snapshot")
    ctx = hooks.HookContext(action="backup", target="local", job="nightly")
    with hooks.around(app, ctx):
        pass
    assert ctx.status == "ok" and ctx.warnings == []


def test_dovecot_staging_copy_is_backed_up(tmp_path, monkeypatch):
    """A real private Dovecot, the example hook, then a real backup of the staged tree."""
    from dmbackup import engine
    from tests.fixtures.dovecot import DovecotServer, shared_tmpdir

    users = ["alice@example.test", "bob@example.test"]
    with DovecotServer(None, users) as dove:
        for i, u in enumerate(users * 3):
            dove.lda(u, f"From: x@example.test\r\nSubject: m{i}\r\nMessage-ID: <{i}@t>\r\n\r\nbody {i}\r\n".encode())
        c = dove.imap("alice@example.test")
        c.create("Archivio/2024")
        c.subscribe("Archivio/2024")
        c.logout()
        staging = shared_tmpdir("dmb-staging-") / "staging"
        (staging / "example.test" / "gone").mkdir(parents=True)          # a deleted user's copy
        hooks_conf(tmp_path, monkeypatch, f"STAGING_DIR={staging}\nDOVECOT_CONFIG={dove.config_file}\n")
        app = make_app(tmp_path)
        app = App(app.config.__class__(**{**app.config.__dict__,
                                          "source": app.config.source.__class__(
                                              **{**app.config.source.__dict__, "mail_store": str(staging)})}),
                  log=app.log)
        install_example(app, "pre-backup.d/10-dovecot-staging")
        engine.init_repo(app, "local")
        result = run_job(app, "nightly")
        assert result.status == "ok", (result.error, [e.get("line") for e in events(app, "hook_output")])
        for u in users:
            local, dom = u.split("@")
            live = dove.vmail_root / dom / local / "Maildir"
            copy = staging / dom / local / "Maildir"
            assert (copy / "dovecot-uidlist").read_text() == (live / "dovecot-uidlist").read_text()
            assert not (copy / "maildirfolder").exists()
        assert (staging / "example.test" / "alice" / "Maildir" / "subscriptions").read_text() == \
            (dove.vmail_root / "example.test" / "alice" / "Maildir" / "subscriptions").read_text()
        assert not (staging / "example.test" / "gone").exists()
        assert result.backup["files"] >= 6
        assert any("staged 2 mailboxes" in e["line"] for e in events(app, "hook_output"))
