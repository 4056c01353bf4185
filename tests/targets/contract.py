"""The one contract suite every Target must pass (modelled on restic's backend test suite).

Use it by subclassing ``TargetContract`` in a test module under a ``Test...`` name and
providing a ``target`` fixture that yields an OPEN, EMPTY target (and closes it after)::

    class TestDirContract(TargetContract):
        @pytest.fixture
        def target(self, tmp_path):
            with DirTarget("t", str(tmp_path)) as t:
                yield t

The class itself is not collected (its name does not start with ``Test``). The tests speak
only the interface of ``dmbackup.targets.base``: what its module docstring promises is what
is checked here, nothing about how a target stores things. Sizes are kept small except for
one streamed multi-megabyte object, so the suite runs in seconds against a real server.
"""

from __future__ import annotations

import functools
import hashlib

import pytest

from dmbackup.errors import NotFound, TargetUnavailable
from dmbackup.targets.base import (
    TMP_MARK,
    AlreadyExists,
    Capabilities,
    ObjectInfo,
    Target,
    is_temporary,
)

BAD_NAMES = [
    "", "/", "/abs", "/abs/x", "..", ".", "../x", "x/..", "a/../b", "a/./b", "a//b", "a/", "./a",
    "a b", "a\\b", "\\\\srv\\share", "a:b", "a*b", "a?b", "caf\u00e9", "a\x00b", "a\nb",
    ".hidden", "-dash", "+plus", "x" * 201, "ok/" + "y" * 201,
]
NOT_STRINGS = [None, b"bytes", 7]


@functools.lru_cache(maxsize=2)
def _pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes (so no layer can cheat by compressing)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64   # 2 KiB blocks
        counter += 1
    return bytes(out[:size])


class TargetContract:
    """Generic tests; subclasses provide the ``target`` fixture (open and empty)."""

    #: size of the streamed object in ``test_streamed_multi_megabyte_object``
    stream_size = 16 * (1 << 20) + 12345
    #: objects created by ``test_list_many_objects`` (more than one SMB directory page)
    many_objects = 1000

    #: test id (``test_x`` or ``test_x[param]``) -> reason, for failures reported to the
    #: target's owner and not fixed yet; they run as strict xfails, so a fix shows up.
    known_failures: dict[str, str] = {}

    @pytest.fixture
    def target(self):
        raise NotImplementedError("a TargetContract subclass must provide a `target` fixture")

    @pytest.fixture(autouse=True)
    def _known_failures(self, request):
        reason = self.known_failures.get(request.node.name) or self.known_failures.get(
            getattr(request.node, "originalname", ""))
        if reason:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))

    # -- declared properties ----------------------------------------------------------------
    def test_is_a_target_with_capabilities(self, target):
        assert isinstance(target, Target)
        caps = target.capabilities
        assert isinstance(caps, Capabilities)
        assert isinstance(caps.max_object_size, int) and caps.max_object_size > 0
        for flag in ("atomic_rename", "posix_metadata", "read_back", "network"):
            assert isinstance(getattr(caps, flag), bool)
        assert isinstance(target.describe(), str) and target.describe()

    def test_free_space_is_int_or_none(self, target):
        free = target.free_space()
        assert free is None or (isinstance(free, int) and not isinstance(free, bool) and free >= 0)

    def test_open_is_idempotent_and_sync_is_callable(self, target):
        target.open()
        target.open()
        target.put("a", b"1")
        target.sync()
        assert target.get("a") == b"1"

    def test_objects_survive_close_and_reopen(self, target):
        target.put("keep/me", b"still here")
        target.close()
        target.open()
        assert target.get("keep/me") == b"still here"

    # -- put / get / stat -----------------------------------------------------------------------
    def test_put_get_stat(self, target):
        target.put("obj", b"hello world")
        assert target.get("obj") == b"hello world"
        info = target.stat("obj")
        assert isinstance(info, ObjectInfo)
        assert info.name == "obj" and info.size == 11
        assert target.exists("obj")

    def test_put_empty_object(self, target):
        target.put("empty", b"")
        assert target.get("empty") == b""
        assert target.stat("empty").size == 0
        assert list(target.list()) == ["empty"]

    def test_put_accepts_bytearray_and_memoryview(self, target):
        target.put("ba", bytearray(b"abc"))
        target.put("mv", memoryview(b"xyzw")[1:])
        assert target.get("ba") == b"abc"
        assert target.get("mv") == b"yzw"

    def test_put_replaces_existing_object(self, target):
        target.put("d/obj", b"first version, longer")
        target.put("d/obj", b"second")
        assert target.get("d/obj") == b"second"
        assert target.stat("d/obj").size == 6
        assert list(target.list("d")) == ["d/obj"]

    @pytest.mark.parametrize("offset,length,expect", [
        (0, None, slice(0, None)),
        (10, None, slice(10, None)),
        (0, 10, slice(0, 10)),
        (100, 200, slice(100, 300)),
        (1000, 100, slice(1000, 1024)),     # fewer bytes only at the end
        (1023, None, slice(1023, None)),
        (1024, None, slice(1024, None)),    # at the end: empty
        (5000, 10, slice(5000, 5010)),      # past the end: empty
        (7, 0, slice(7, 7)),
    ])
    def test_get_offset_and_length(self, target, offset, length, expect):
        data = bytes(range(256)) * 4
        target.put("ranged", data)
        assert target.get("ranged", offset, length) == data[expect]

    def test_names_with_every_allowed_character(self, target):
        names = ["A-b_c+d.e", "9", "x" * 200, "dir.with.dots/Obj-1+2_3.v0001", "n.tmp-notreally.x"]
        for i, n in enumerate(names):
            target.put(n, str(i).encode())
        for i, n in enumerate(names):
            assert target.get(n) == str(i).encode()

    # -- missing objects --------------------------------------------------------------------------
    def test_missing_object_is_not_found(self, target):
        with pytest.raises(NotFound):
            target.get("nope")
        with pytest.raises(NotFound):
            target.get("nope", 5, 10)
        with pytest.raises(NotFound):
            target.stat("nope")
        with pytest.raises(NotFound):
            target.get("no/such/dir/obj")
        assert not target.exists("nope")
        assert not target.exists("no/such/dir/obj")
        assert issubclass(NotFound, TargetUnavailable)

    def test_name_below_an_object_is_not_found(self, target):
        target.put("plain", b"x")
        with pytest.raises(NotFound):
            target.get("plain/child")
        with pytest.raises(NotFound):
            target.stat("plain/child")
        assert not target.exists("plain/child")

    # -- list / list_dirs -----------------------------------------------------------------------
    def test_list_and_list_dirs(self, target):
        for n in ("top", "d/x", "d/y", "d/sub/z", "e/deep/er/obj"):
            target.put(n, n.encode())
        assert sorted(target.list()) == ["top"]
        assert sorted(target.list("d")) == ["d/x", "d/y"]
        assert sorted(target.list("d/sub")) == ["d/sub/z"]
        assert sorted(target.list("e")) == []
        assert sorted(target.list_dirs()) == ["d", "e"]
        assert sorted(target.list_dirs("d")) == ["d/sub"]
        assert sorted(target.list_dirs("e")) == ["e/deep"]
        assert sorted(target.list_dirs("e/deep/er")) == []

    def test_list_missing_directory_is_empty(self, target):
        assert list(target.list("missing")) == []
        assert list(target.list("missing/deeper")) == []
        assert list(target.list_dirs("missing")) == []
        assert list(target.list_dirs("missing/deeper")) == []

    def test_list_empty_target(self, target):
        assert list(target.list()) == []
        assert list(target.list_dirs()) == []

    def test_list_includes_temporary_names(self, target):
        leftover = f"chains/c1/s1.v0001{TMP_MARK}deadbeef"
        target.put(leftover, b"partial")
        names = list(target.list("chains/c1"))
        assert names == [leftover]
        assert is_temporary(names[0])

    def test_list_many_objects(self, target):
        expect = [f"many/n{i:05d}" for i in range(self.many_objects)]
        for n in expect:
            target.create_exclusive(n, b"")
        assert sorted(target.list("many")) == expect

    # -- delete -------------------------------------------------------------------------------------
    def test_delete(self, target):
        target.put("d/gone", b"x")
        target.put("d/stays", b"y")
        target.delete("d/gone")
        assert not target.exists("d/gone")
        assert list(target.list("d")) == ["d/stays"]
        with pytest.raises(NotFound):
            target.get("d/gone")

    def test_delete_missing_is_not_an_error(self, target):
        target.delete("never-existed")
        target.delete("no/such/dir/obj")
        target.put("x", b"1")
        target.delete("x")
        target.delete("x")

    # -- writer atomicity ---------------------------------------------------------------------------
    def test_writer_commit_makes_object_visible(self, target):
        w = target.writer("d/w")
        w.write(b"abc")
        w.write(b"")
        w.write(bytearray(b"def"))
        assert w.size == 6
        assert not target.exists("d/w")
        with pytest.raises(NotFound):
            target.get("d/w")
        pending = list(target.list("d"))
        # a target may show its temporary while writing, but never the final name
        assert "d/w" not in pending
        assert all(is_temporary(n) and n.startswith("d/w" + TMP_MARK) for n in pending)
        w.commit()
        assert target.get("d/w") == b"abcdef"
        assert list(target.list("d")) == ["d/w"]        # no temporary left behind

    def test_writer_over_existing_keeps_old_until_commit(self, target):
        target.put("obj", b"old")
        w = target.writer("obj")
        w.write(b"new content")
        assert target.get("obj") == b"old"
        w.commit()
        assert target.get("obj") == b"new content"
        assert list(target.list()) == ["obj"]

    def test_writer_abort_leaves_nothing(self, target):
        w = target.writer("d/aborted")
        w.write(b"x" * 1000)
        w.abort()
        assert not target.exists("d/aborted")
        assert list(target.list("d")) == []

    def test_writer_abort_keeps_existing_object(self, target):
        target.put("obj", b"old")
        w = target.writer("obj")
        w.write(b"new")
        w.abort()
        assert target.get("obj") == b"old"
        assert list(target.list()) == ["obj"]

    def test_writer_context_manager(self, target):
        with target.writer("ok") as w:
            w.write(b"committed")
        assert target.get("ok") == b"committed"

        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            with target.writer("bad") as w:
                w.write(b"never")
                raise Boom()
        assert not target.exists("bad")
        assert list(target.list()) == ["ok"]

    def test_writer_commit_twice_is_harmless(self, target):
        w = target.writer("twice")
        w.write(b"1")
        w.commit()
        w.commit()
        assert target.get("twice") == b"1"

    def test_two_writers_same_name_last_commit_wins(self, target):
        w1 = target.writer("race")
        w2 = target.writer("race")
        w1.write(b"one")
        w2.write(b"two")
        w1.commit()
        assert target.get("race") == b"one"
        w2.commit()
        assert target.get("race") == b"two"
        assert list(target.list()) == ["race"]

    def test_empty_writer(self, target):
        with target.writer("e/nothing") as w:
            pass
        assert target.get("e/nothing") == b""
        assert w.size == 0

    # -- create_exclusive -----------------------------------------------------------------------------
    def test_create_exclusive(self, target):
        target.create_exclusive("locks/lock", b"mine")
        with pytest.raises(AlreadyExists):
            target.create_exclusive("locks/lock", b"theirs")
        assert target.get("locks/lock") == b"mine"
        target.delete("locks/lock")
        target.create_exclusive("locks/lock", b"again")
        assert target.get("locks/lock") == b"again"

    def test_create_exclusive_over_put_object(self, target):
        target.put("obj", b"put")
        with pytest.raises(AlreadyExists):
            target.create_exclusive("obj", b"excl")
        assert target.get("obj") == b"put"

    # -- names are validated before any I/O --------------------------------------------------------------
    @pytest.mark.parametrize("bad", BAD_NAMES + NOT_STRINGS, ids=repr)
    def test_invalid_names_rejected_before_io(self, target, bad):
        calls = [
            lambda: target.put(bad, b"x"),
            lambda: target.writer(bad),
            lambda: target.create_exclusive(bad, b"x"),
            lambda: target.get(bad),
            lambda: target.get(bad, 1, 2),
            lambda: target.stat(bad),
            lambda: target.exists(bad),
            lambda: target.delete(bad),
        ]
        if bad not in ("", None):      # both mean the root for listings
            calls += [lambda: list(target.list(bad)), lambda: list(target.list_dirs(bad))]
        for call in calls:
            with pytest.raises(ValueError):
                call()
        assert list(target.list()) == []
        assert list(target.list_dirs()) == []

    # -- a large object, streamed -------------------------------------------------------------------------
    def test_streamed_multi_megabyte_object(self, target):
        data = _pattern(self.stream_size, seed=1)
        step = (1 << 20) + 7                           # not aligned to anything
        with target.writer("big/volume.v0001") as w:
            for i in range(0, len(data), step):
                w.write(data[i:i + step])
        assert w.size == len(data)
        assert target.stat("big/volume.v0001").size == len(data)
        back = target.get("big/volume.v0001")
        assert len(back) == len(data)
        assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
        off = 5 * step - 100                           # a range across chunk boundaries
        assert target.get("big/volume.v0001", off, 3 * step) == data[off:off + 3 * step]
        tail = target.get("big/volume.v0001", len(data) - 10, 1000)
        assert tail == data[-10:]
        assert list(target.list("big")) == ["big/volume.v0001"]
