"""RetryingTarget (bounded retries on transient errors only) and the tests' LoggingTarget.

``FlakyTarget`` is a real MemoryTarget that raises injected errors before doing the work
(or, for ``create_exclusive``, optionally after it, as when the server's answer is lost).
Sleeps are recorded, never slept, so backoff is checked without any timing.
"""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from dmbackup.errors import AuthFailed, NoSpace, NotFound, TargetUnavailable, TransientTargetError
from dmbackup.targets.base import AlreadyExists, Target, validate_name
from dmbackup.targets.memory import MemoryTarget, _MemWriter
from dmbackup.targets.retry import RetryingTarget
from tests.targets.contract import TargetContract
from tests.targets.logging_target import LoggingTarget


class _FlakyWriter(_MemWriter):
    def write(self, data):
        if self.target.fail_writes:
            self.target.fail_writes -= 1
            raise TransientTargetError("connection lost mid-stream")
        super().write(data)


class FlakyTarget(MemoryTarget):
    """Fails chosen operations a chosen number of times (or every other call)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.failures: Counter = Counter()      # op -> failures still to inject
        self.errors: dict = {}                  # op -> exception class (default transient)
        self.calls: Counter = Counter()
        self.alternate = False                  # every odd call of every op fails
        self.create_then_fail = 0               # create_exclusive succeeds, answer "lost"
        self.fail_writes = 0

    def _maybe_fail(self, op):
        self.calls[op] += 1
        if self.alternate and op != "list-after-first" and self.calls[op] % 2 == 1:
            raise TransientTargetError(f"flaky {op}")
        if self.failures[op] > 0:
            self.failures[op] -= 1
            raise self.errors.get(op, TransientTargetError)(f"injected failure of {op}")

    def open(self):
        self._maybe_fail("open")

    def put(self, name, data):
        self._maybe_fail("put")
        validate_name(name)
        with _MemWriter(self, name) as w:     # not through self.writer: one op, one failure
            w.write(data)

    def writer(self, name):
        self._maybe_fail("writer")
        super().writer(name)
        return _FlakyWriter(self, name)

    def create_exclusive(self, name, data):
        self._maybe_fail("create_exclusive")
        super().create_exclusive(name, data)
        if self.create_then_fail:
            self.create_then_fail -= 1
            raise TransientTargetError("answer lost")

    def get(self, name, offset=0, length=None):
        self._maybe_fail("get")
        return super().get(name, offset, length)

    def stat(self, name):
        self._maybe_fail("stat")
        return super().stat(name)

    def list(self, directory=""):
        it = super().list(directory)
        self._maybe_fail("list")
        first = next(it, None)
        if first is None:
            return
        yield first
        self._maybe_fail("list-after-first")     # a listing that breaks half way
        yield from it

    def list_dirs(self, directory=""):
        self._maybe_fail("list_dirs")
        yield from super().list_dirs(directory)

    def delete(self, name):
        self._maybe_fail("delete")
        super().delete(name)

    def free_space(self):
        self._maybe_fail("free_space")
        return 12345

    def sync(self):
        self._maybe_fail("sync")


@pytest.fixture
def flaky():
    return FlakyTarget("flaky")


@pytest.fixture
def sleeps():
    return []


def retrying(inner, sleeps, **kw):
    kw.setdefault("attempts", 4)
    kw.setdefault("backoff", 1.0)
    return RetryingTarget(inner, sleep=sleeps.append, **kw)


# --- the contract holds through the wrappers ---------------------------------------------------
class TestRetryingContract(TargetContract):
    many_objects = 200

    @pytest.fixture
    def target(self):
        with RetryingTarget(MemoryTarget("m"), sleep=lambda s: None) as t:
            yield t


class TestRetryingOverFlakyContract(TargetContract):
    """Every retryable call fails once first: callers never notice."""

    many_objects = 200

    @pytest.fixture
    def target(self):
        inner = FlakyTarget("flaky")
        inner.alternate = True
        with RetryingTarget(inner, attempts=2, sleep=lambda s: None) as t:
            yield t


class TestLoggingContract(TargetContract):
    many_objects = 200

    @pytest.fixture
    def target(self):
        with LoggingTarget(MemoryTarget("m")) as t:
            yield t


# --- retries -----------------------------------------------------------------------------------
def test_wrapper_is_a_target_with_inner_identity(flaky, sleeps):
    t = retrying(flaky, sleeps)
    assert isinstance(t, Target)
    assert (t.name, t.kind, t.capabilities, t.describe()) == (
        flaky.name, flaky.kind, flaky.capabilities, flaky.describe())


def test_get_succeeds_after_transient_failures(flaky, sleeps):
    flaky.put("a", b"1")
    flaky.failures["get"] = 2
    t = retrying(flaky, sleeps, attempts=3, backoff=0.5)
    assert t.get("a") == b"1"
    assert flaky.calls["get"] == 3
    assert sleeps == [0.5, 1.0]


def test_gives_up_after_attempts(flaky, sleeps):
    flaky.put("a", b"1")
    flaky.failures["get"] = 10
    t = retrying(flaky, sleeps, attempts=4, backoff=1.0)
    with pytest.raises(TransientTargetError):
        t.get("a")
    assert flaky.calls["get"] == 4
    assert sleeps == [1.0, 2.0, 4.0]


def test_backoff_is_capped(flaky, sleeps):
    flaky.failures["stat"] = 10
    t = retrying(flaky, sleeps, attempts=7, backoff=1.0, max_backoff=5.0)
    with pytest.raises(TransientTargetError):
        t.stat("x")
    assert sleeps == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_single_attempt_means_no_retry(flaky, sleeps):
    flaky.failures["get"] = 1
    with pytest.raises(TransientTargetError):
        retrying(flaky, sleeps, attempts=1).get("a")
    assert sleeps == []
    with pytest.raises(ValueError):
        RetryingTarget(flaky, attempts=0)


@pytest.mark.parametrize("error", [AuthFailed, NotFound, TargetUnavailable, NoSpace, AlreadyExists, ValueError])
def test_non_transient_errors_are_not_retried(flaky, sleeps, error):
    flaky.put("a", b"1")
    flaky.failures["get"] = 1
    flaky.errors["get"] = error
    with pytest.raises(error):
        retrying(flaky, sleeps).get("a")
    assert flaky.calls["get"] == 1
    assert sleeps == []


def test_auth_failure_at_open_is_not_retried(flaky, sleeps):
    flaky.failures["open"] = 1
    flaky.errors["open"] = AuthFailed
    with pytest.raises(AuthFailed):
        retrying(flaky, sleeps).open()
    assert sleeps == []


@pytest.mark.parametrize("op,call", [
    ("open", lambda t: t.open()),
    ("put", lambda t: t.put("p", b"data")),
    ("stat", lambda t: t.stat("a")),
    ("delete", lambda t: t.delete("a")),
    ("free_space", lambda t: t.free_space()),
    ("sync", lambda t: t.sync()),
    ("list_dirs", lambda t: list(t.list_dirs())),
    ("stat", lambda t: t.exists("a")),
])
def test_idempotent_calls_are_retried(flaky, sleeps, op, call):
    flaky.put("a", b"1")
    flaky.failures[op] = 2
    call(retrying(flaky, sleeps))
    assert len(sleeps) == 2


def test_list_broken_half_way_is_retried_without_duplicates(flaky, sleeps):
    for n in ("d/a", "d/b", "d/c"):
        flaky.put(n, b"")
    flaky.failures["list-after-first"] = 2
    assert list(retrying(flaky, sleeps).list("d")) == ["d/a", "d/b", "d/c"]
    assert len(sleeps) == 2


def test_put_after_failure_leaves_the_right_object(flaky, sleeps):
    flaky.put("obj", b"old")
    flaky.failures["put"] = 1
    retrying(flaky, sleeps).put("obj", b"new")
    assert flaky.get("obj") == b"new"


def test_create_exclusive_whose_answer_was_lost_succeeds(flaky, sleeps):
    flaky.create_then_fail = 1
    retrying(flaky, sleeps).create_exclusive("locks/l", b"host=a pid=1")
    assert flaky.get("locks/l") == b"host=a pid=1"
    assert len(sleeps) == 1


def test_create_exclusive_retry_finding_a_foreign_lock_fails(flaky, sleeps):
    flaky.failures["create_exclusive"] = 1
    t = retrying(flaky, sleeps)
    # the first attempt failed before creating anything; meanwhile someone else took it
    orig = flaky._maybe_fail

    def sneak(op):
        orig(op)
        if op == "create_exclusive" and "locks/l" not in flaky.objects:
            flaky.objects["locks/l"] = b"host=b pid=2"

    flaky._maybe_fail = sneak
    with pytest.raises(AlreadyExists):
        t.create_exclusive("locks/l", b"host=a pid=1")
    assert flaky.get("locks/l") == b"host=b pid=2"


def test_create_exclusive_on_existing_object_without_retry_fails(flaky, sleeps):
    flaky.put("locks/l", b"same bytes")
    with pytest.raises(AlreadyExists):
        retrying(flaky, sleeps).create_exclusive("locks/l", b"same bytes")
    assert sleeps == []


def test_writer_opening_is_retried(flaky, sleeps):
    flaky.failures["writer"] = 2
    with retrying(flaky, sleeps).writer("w") as w:
        w.write(b"ok")
    assert flaky.get("w") == b"ok"
    assert len(sleeps) == 2


def test_writer_failure_mid_stream_is_not_retried(flaky, sleeps):
    t = retrying(flaky, sleeps)
    flaky.fail_writes = 1
    with pytest.raises(TransientTargetError):
        with t.writer("vol") as w:
            w.write(b"first chunk")
    assert sleeps == []
    assert not flaky.exists("vol")


# --- logging -------------------------------------------------------------------------------------
def test_logging_target_logs_calls_not_contents(caplog):
    t = LoggingTarget(MemoryTarget("m"))
    with caplog.at_level(logging.DEBUG, logger="dmbackup.targets"):
        t.put("a/b", b"SECRET-CONTENT")
        assert t.get("a/b") == b"SECRET-CONTENT"
        with t.writer("w") as w:
            w.write(b"SECRET-STREAM")
        with pytest.raises(NotFound):
            t.get("missing")
    text = caplog.text
    assert "put a/b ok 14 bytes" in text
    assert "get a/b ok 14 bytes" in text
    assert "commit w ok 13 bytes" in text
    assert "SECRET" not in text
    assert all(r.levelno == logging.DEBUG for r in caplog.records)   # NotFound is an answer


def test_logging_target_warns_on_failure(caplog, flaky):
    flaky.failures["get"] = 1
    t = LoggingTarget(flaky)
    with caplog.at_level(logging.DEBUG, logger="dmbackup.targets"):
        with pytest.raises(TransientTargetError):
            t.get("x")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "get x failed" in warnings[0].getMessage()


def test_retrying_logs_each_retry(caplog, flaky, sleeps):
    flaky.put("a", b"1")
    flaky.failures["get"] = 1
    with caplog.at_level(logging.WARNING, logger="dmbackup.targets"):
        retrying(flaky, sleeps).get("a")
    assert "retry 1 of 3" in caplog.text


def test_app_retries_exactly_the_targets_that_say_network(tmp_path):
    """App.target() chooses the wrapper by capability, not by type name."""
    from dmbackup.config import parse
    from dmbackup.context import App

    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    text = (f'hostname = "mx.test"\nstate_dir = "{tmp_path}/state"\n[encryption]\nmode = "none"\n'
            f'[targets.local]\ntype = "dir"\npath = "{tmp_path}"\n'
            '[targets.usb]\ntype = "usb"\nlabel = "DMBACKUP"\n'
            '[targets.nas]\ntype = "nfs"\nexport = "nas.test:/srv/backup"\n'
            '[targets.nasu]\ntype = "nfs"\nexport = "nas.test:/srv/backup"\ntransport = "userspace"\n'
            f'[targets.smb]\ntype = "smb"\nserver = "nas.test"\nshare = "b"\nusername = "u"\npassword_file = "{pw}"\n')
    app = App(parse(text, str(tmp_path / "dmbackup.toml")))
    wrapped = {name: isinstance(app.target(name), RetryingTarget) for name in ("local", "usb", "nas", "nasu", "smb")}
    assert wrapped == {"local": False, "usb": False, "nas": True, "nasu": True, "smb": True}
    assert all(app.target(n).capabilities.network is w for n, w in wrapped.items())
