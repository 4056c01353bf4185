"""The smb target against a real, private smbd on 127.0.0.1 (tests/fixtures/smbd.py).

The contract suite runs against a server that requires SMB 3 encryption. The rest shows
what an administrator meets: a wrong password, a missing share, a closed port, a server
without encryption, a full share, a server killed in the middle of a write, and a server
that hangs (SIGSTOP) and must produce an error instead of a backup that never ends.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import threading

import pytest

from dmbackup import config
from dmbackup.errors import (
    AuthFailed,
    ConfigError,
    NoSpace,
    NotFound,
    TargetUnavailable,
    TransientTargetError,
)
from dmbackup.targets import registry
from dmbackup.targets.retry import RetryingTarget
from dmbackup.targets.smb import RECEIVE_TIMEOUT_ENV, SmbConfig, SmbTarget
from tests.fixtures.smbd import SmbServer, free_port
from tests.targets.contract import TargetContract

_paths = itertools.count()
HANG_GUARD = 120      # seconds: only to turn a hang into a failure, never asserted on


def smb_target(srv: SmbServer, **kw) -> SmbTarget:
    name = kw.pop("name", "nas")
    args = dict(server=srv.host, share=srv.share, username=srv.username,
                password_file=str(srv.password_file), port=srv.port)
    args.update(kw)
    return SmbTarget(name, **args)


def run_bounded(fn, limit: float = HANG_GUARD):
    """Run fn in a thread; its exception (or result) comes back. A hang fails the test."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as exc:   # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        pytest.fail(f"the call was still hanging after {limit}s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


class TestSmbContract(TargetContract):
    @pytest.fixture
    def target(self, smbd_module):
        with smb_target(smbd_module, path=f"contract/c{next(_paths)}") as t:
            yield t


# --- config -----------------------------------------------------------------------------
def _toml(tmp_path, body: str, mode: int = 0o600) -> str:
    pw = tmp_path / "nas.pw"
    pw.write_text("secret\n")
    pw.chmod(mode)
    return f"""
hostname = "mail.example.it"
[targets.nas]
type = "smb"
password_file = "{pw}"
{body}
"""


def test_config_defaults_and_build(tmp_path):
    cfg = config.parse(_toml(tmp_path, 'server = "nas.example.it"\nshare = "backup"\nusername = "dm"'), "t.toml")
    t = cfg.targets["nas"]
    assert isinstance(t, SmbConfig)
    assert (t.port, t.path, t.encrypt, t.timeout, t.max_object_size) == (445, "", True, 60, None)
    assert config.holds_repository(t)
    target = registry.build(t, None)
    assert isinstance(target, SmbTarget)
    assert target.describe() == "smb target 'nas' (//nas.example.it/backup)"


def test_config_all_keys(tmp_path):
    cfg = config.parse(_toml(tmp_path, '''
server = "10.0.0.5"
port = 4455
share = "Backups"
path = "/appliances\\\\mail/"
username = "CORP\\\\dmbackup"
encrypt = false
timeout = 15
max_object_size = "2G"'''), "t.toml")
    t = cfg.targets["nas"]
    assert (t.server, t.port, t.share, t.path, t.username) == ("10.0.0.5", 4455, "Backups", "appliances/mail", "CORP\\dmbackup")
    assert (t.encrypt, t.timeout, t.max_object_size) == (False, 15, 2 << 30)
    target = registry.build(t, None)
    assert target.capabilities.max_object_size == 2 << 30
    assert target.url == "//10.0.0.5/Backups/appliances/mail"


@pytest.mark.parametrize("body,field", [
    ('share = "b"\nusername = "u"', "targets.nas.server"),
    ('server = "s"\nusername = "u"', "targets.nas.share"),
    ('server = "s"\nshare = "b"', "targets.nas.username"),
    ('server = "//s/b"\nshare = "b"\nusername = "u"', "targets.nas.server"),
    ('server = "s"\nshare = "a/b"\nusername = "u"', "targets.nas.share"),
    ('server = "s"\nshare = "b"\nusername = "u"\npath = "../up"', "targets.nas.path"),
    ('server = "s"\nshare = "b"\nusername = "u"\nport = 0', "targets.nas.port"),
    ('server = "s"\nshare = "b"\nusername = "u"\ntimeout = 0', "targets.nas.timeout"),
    ('server = "s"\nshare = "b"\nusername = "u"\nencrypt = "yes"', "targets.nas.encrypt"),
    ('server = "s"\nshare = "b"\nusername = "u"\ndomain = "X"', "targets.nas.domain"),
])
def test_config_errors_name_the_field(tmp_path, body, field):
    with pytest.raises(ConfigError) as ei:
        config.parse(_toml(tmp_path, body), "t.toml")
    assert f"t.toml: {field}:" in str(ei.value)


def test_config_password_file_must_be_private(tmp_path):
    with pytest.raises(ConfigError) as ei:
        config.parse(_toml(tmp_path, 'server = "s"\nshare = "b"\nusername = "u"', mode=0o644), "t.toml")
    assert "targets.nas.password_file" in str(ei.value) and "chmod 600" in str(ei.value)


# --- sessions and errors ------------------------------------------------------------------
def test_session_is_encrypted_and_path_is_created(smbd):
    with smb_target(smbd, path="appliances/mail") as t:
        sessions = [s for c in t.session.cache.values() for s in c.session_table.values()]
        assert sessions and all(s.encrypt_data for s in sessions)
        t.put("repo.json", b"{}")
        assert os.environ[RECEIVE_TIMEOUT_ENV] == str(t.session.receive_timeout)
    assert (smbd.share_dir / "appliances" / "mail" / "repo.json").read_bytes() == b"{}"


def test_receive_timeout_env_restored_after_close(smbd, monkeypatch):
    monkeypatch.setenv(RECEIVE_TIMEOUT_ENV, "777")
    a = smb_target(smbd, timeout=10)
    b = smb_target(smbd, timeout=4)
    with a:
        assert os.environ[RECEIVE_TIMEOUT_ENV] == "5"
        with b:
            assert os.environ[RECEIVE_TIMEOUT_ENV] == "2"
        assert os.environ[RECEIVE_TIMEOUT_ENV] == "5"
    assert os.environ[RECEIVE_TIMEOUT_ENV] == "777"


def test_wrong_password_is_auth_failed(smbd, tmp_path):
    pw = tmp_path / "wrong.pw"
    pw.write_text("not-the-password-xyz\n")
    pw.chmod(0o600)
    t = smb_target(smbd, password_file=str(pw))
    with pytest.raises(AuthFailed) as ei:
        t.open()
    msg = str(ei.value)
    assert msg.startswith(f"authentication failed for user {smbd.username} on //127.0.0.1/{smbd.share}")
    assert "not-the-password-xyz" not in msg
    assert ei.value.exit_code == 7


def test_wrong_password_is_not_retried(smbd, tmp_path):
    pw = tmp_path / "wrong.pw"
    pw.write_text("nope\n")
    pw.chmod(0o600)
    sleeps = []
    t = RetryingTarget(smb_target(smbd, password_file=str(pw)), attempts=5, sleep=sleeps.append)
    with pytest.raises(AuthFailed):
        t.open()
    assert sleeps == []


def test_domain_qualified_user_name(smbd):
    # what an Active Directory share needs; a standalone Samba accepts its own workgroup
    with smb_target(smbd, username="WORKGROUP\\" + smbd.username) as t:
        t.put("x", b"1")
        assert t.get("x") == b"1"


def test_password_is_read_at_open(smbd, tmp_path):
    pw = tmp_path / "later.pw"
    pw.write_text("wrong at build time\n")
    pw.chmod(0o600)
    t = smb_target(smbd, password_file=str(pw))
    pw.write_text(smbd.password + "\n")
    with t:
        t.put("x", b"1")


def test_missing_share_is_target_unavailable(smbd):
    t = smb_target(smbd, share="nosuchshare")
    with pytest.raises(TargetUnavailable) as ei:
        t.open()
    assert not isinstance(ei.value, (NotFound, AuthFailed, TransientTargetError))
    assert "'nosuchshare' does not exist" in str(ei.value)


def test_closed_port_is_target_unavailable(smbd):
    port = free_port()
    t = smb_target(smbd, port=port)
    with pytest.raises(TargetUnavailable) as ei:
        t.open()
    assert not isinstance(ei.value, TransientTargetError)
    assert str(ei.value).startswith(f"cannot reach //127.0.0.1/{smbd.share} (port {port})")


def test_encryption_required_but_not_offered(smbd_factory):
    srv = smbd_factory(encrypt="off")
    with pytest.raises(TargetUnavailable) as ei:
        smb_target(srv).open()
    assert "encryption" in str(ei.value) and "encrypt = false" in str(ei.value)
    with smb_target(srv, encrypt=False) as t:       # the administrator opted out
        t.put("plain", b"text")
        assert t.get("plain") == b"text"


def test_operations_open_lazily(smbd):
    t = smb_target(smbd)
    try:
        t.put("lazy", b"1")
        assert t.get("lazy") == b"1"
    finally:
        t.close()


def test_free_space_reports_the_share(smbd):
    with smb_target(smbd) as t:
        free = t.free_space()
    st = os.statvfs(smbd.share_dir)
    assert isinstance(free, int) and 0 < free <= st.f_blocks * st.f_frsize


def test_foreign_files_are_not_listed(smbd):
    (smbd.share_dir / "Thumbs.db").write_bytes(b"x")
    (smbd.share_dir / "My Notes.txt").write_bytes(b"x")
    (smbd.share_dir / "Old Stuff").mkdir()
    with smb_target(smbd) as t:
        assert list(t.list()) == ["Thumbs.db"]
        assert list(t.list_dirs()) == []


def test_full_share_is_no_space():
    srv = SmbServer()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(srv.share_dir)], check=True)
    try:
        srv.start()
        with smb_target(srv) as t:
            with pytest.raises(NoSpace):
                t.put("too-big", b"z" * (3 << 20))
            assert not t.exists("too-big")
            assert list(t.list()) == []          # the temporary was removed
            t.put("small", b"fits")              # the session survived
    finally:
        srv.stop()
        subprocess.run(["umount", str(srv.share_dir)], check=False)
        srv.cleanup()


# --- a dying server ------------------------------------------------------------------------
def test_server_killed_mid_write(smbd):
    t = smb_target(smbd, timeout=10)
    t.open()
    try:
        t.put("chains/c1/s1.v0000", b"before")
        w = t.writer("chains/c1/s1.v0001")
        w.write(os.urandom(1 << 20))
        smbd.kill()
        with pytest.raises(TargetUnavailable) as ei:
            for _ in range(64):                  # the failure shows on a write or on commit
                w.write(os.urandom(1 << 20))
            w.commit()
        assert isinstance(ei.value, TransientTargetError)
        assert not (smbd.share_dir / "chains" / "c1" / "s1.v0001").exists()
        # the server comes back on the same port: the target reconnects by itself
        smbd.start(same_port=True)
        r = RetryingTarget(t, attempts=5, backoff=0.2)
        assert r.get("chains/c1/s1.v0000") == b"before"
        assert not r.exists("chains/c1/s1.v0001")
        leftovers = list(r.list("chains/c1"))    # the temporary is there for the cleaner
        assert all(n == "chains/c1/s1.v0000" or n.startswith("chains/c1/s1.v0001.tmp-") for n in leftovers)
    finally:
        t.close()


def test_server_killed_then_unreachable(smbd):
    with smb_target(smbd, timeout=10) as t:
        t.put("a", b"1")
        smbd.kill()
        with pytest.raises(TargetUnavailable):   # transient (dropped) or unreachable (refused)
            t.get("a")
        with pytest.raises(TargetUnavailable) as ei:
            t.get("a")
        assert "cannot reach" in str(ei.value)


def test_hung_server_get_fails_within_timeout(smbd):
    with smb_target(smbd, timeout=3) as t:
        t.put("obj", b"data" * 1000)
        smbd.pause()
        try:
            with pytest.raises(TransientTargetError) as ei:
                run_bounded(lambda: t.get("obj"))
            assert "no answer from the server within 3s" in str(ei.value)
        finally:
            smbd.resume()
        assert t.get("obj") == b"data" * 1000     # reconnects once the server is back


def test_hung_server_put_fails_within_timeout(smbd):
    with smb_target(smbd, timeout=3) as t:
        t.put("warm", b"1")
        smbd.pause()
        try:
            with pytest.raises(TransientTargetError):
                run_bounded(lambda: t.put("big", os.urandom(24 << 20)))
        finally:
            smbd.resume()
        assert not t.exists("big")


def test_hung_server_with_full_send_window(smbd_factory):
    """The server stops reading in the middle of a write: the request cannot even be sent.

    Without SO_SNDTIMEO on smbprotocol's socket this hangs forever (the send blocks holding
    smbprotocol's socket lock, and its worker deadlocks on that lock); small socket buffers
    on both sides make the TCP window fill on loopback.
    """
    srv = smbd_factory(extra_global="   socket options = SO_RCVBUF=65536")
    with smb_target(srv, timeout=3) as t:
        w = t.writer("big")
        w.write(os.urandom(8 << 20))             # the file is open, credits for 8 MiB writes
        for conn in t.session.cache.values():
            conn.transport._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        srv.pause()
        try:
            with pytest.raises(TransientTargetError):
                run_bounded(lambda: w.write(os.urandom(64 << 20)))
        finally:
            srv.resume()
        assert not t.exists("big")
        t.put("after", b"reconnected")
        assert t.get("after") == b"reconnected"


def test_hung_server_at_open(smbd):
    smbd.pause()
    try:
        with pytest.raises(TransientTargetError):
            run_bounded(lambda: smb_target(smbd, timeout=3).open())
    finally:
        smbd.resume()
