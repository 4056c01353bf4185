"""A hostile medium must not exhaust memory or hang the machine (issue 13, item 5).

Each case edits the medium, runs the real CLI as a child process (with an address-space
limit as a safety net for the machine running the tests, and a guard that kills a hang) and
checks: exit 4 (or 5 for a lock, 6 for a key), one line, no traceback, and a peak RSS (from
wait4) far below what the attack asks for. Lengths are capped by what was recorded or by
fixed limits, only regular files are read, zstd is decompressed under a hard cap, and the
KDF cost is bounded at the largest cost dmbackup ever wrote.
"""

from __future__ import annotations

import json
import os
import struct

import pytest

from dmbackup.archive import crypto
from dmbackup.archive.layout import body_aad
from tests.security.conftest import child_line, repo_id, run_child

SMALL_RSS_KIB = 400 * 1024        # a dmbackup command on this tiny repository stays well below


@pytest.fixture
def backed_up(world):
    world.ok("init", "local")
    world.ok("backup", "--target", "local")
    return world


@pytest.fixture
def plain_backed_up(world):
    world.write_config(encryption='mode = "none"')
    world.ok("init", "local")
    world.ok("backup", "--target", "local")
    return world


def test_huge_scrypt_cost_in_the_key_file(backed_up):
    """n = 2^20, r = 8 asks for 1 GiB and seconds of CPU per attempt (the old range even
    allowed 16 GiB): beyond what dmbackup ever writes, so the key file is damaged."""
    w = backed_up
    p = os.path.join(w.repo_root, "keys", "master.json")
    doc = json.load(open(p))
    doc["n"], doc["r"] = 1 << 20, 8
    json.dump(doc, open(p, "w"))
    c = run_child(w, "verify", "--target", "local")
    line = child_line(c)
    assert c.code == 4 and "key file" in line, (c.code, line)
    assert c.maxrss_kib < SMALL_RSS_KIB, c.maxrss_kib


def test_multi_gigabyte_catalog_header_length(backed_up):
    w = backed_up
    cat = w.chain_files(".catalog")[-1]
    n = 0xF0000000
    with open(cat, "r+b") as f:
        f.seek(7)
        f.write(struct.pack("<I", n))
    os.truncate(cat, n + 4096)            # sparse: costs no disk
    c = run_child(w, "verify", "--target", "local", limit_as=3 << 30)
    line = child_line(c)
    assert c.code == 4 and "catalog" in line, (c.code, line)
    assert c.maxrss_kib < SMALL_RSS_KIB, c.maxrss_kib


@pytest.mark.parametrize("what", ["dev-zero", "fifo", "deep-json"])
def test_repo_json_that_is_not_a_small_regular_file(backed_up, what):
    w = backed_up
    p = os.path.join(w.repo_root, "repo.json")
    os.unlink(p)
    if what == "dev-zero":
        os.symlink("/dev/zero", p)
    elif what == "fifo":
        os.mkfifo(p)
    else:
        with open(p, "w") as f:
            f.write("[" * 200_000)
    c = run_child(w, "snapshots", "--target", "local", limit_as=2 << 30, guard=30)
    line = child_line(c)
    assert c.code == 4 and "repo.json" in line, (c.code, line)
    assert c.maxrss_kib < SMALL_RSS_KIB, c.maxrss_kib


def test_deeply_nested_lock_file(backed_up):
    w = backed_up
    os.makedirs(os.path.join(w.repo_root, "locks"), exist_ok=True)
    with open(os.path.join(w.repo_root, "locks", "lock"), "w") as f:
        f.write("[" * 200_000)
    c = run_child(w, "backup", "--target", "local", guard=60)
    line = child_line(c)
    assert c.code == 5 and "lock" in line, (c.code, line)


def _rewrite_body(w, payload: bytes) -> None:
    """Replace the newest catalog's body by ``payload``, sealed as an unencrypted repository
    seals it (anyone holding the disk can do this)."""
    cat = w.chain_files(".catalog")[-1]
    chain = os.path.basename(os.path.dirname(cat))
    snap = os.path.basename(cat)[: -len(".catalog")]
    data = open(cat, "rb").read()
    (n,) = struct.unpack_from("<I", data, 7)
    head = data[: 11 + n]
    sealed = crypto.PlainSealer().seal(payload, body_aad(repo_id(w), chain, snap))
    with open(cat, "wb") as f:
        f.write(head + sealed)


def _frame_declaring(size: int) -> bytes:
    """A zstd frame whose header declares ``size`` bytes of content (single segment)."""
    block = ((5 << 3) | 1).to_bytes(3, "little") + b"hello"      # one raw, last block
    return struct.pack("<I", 0xFD2FB528) + bytes([0xE0]) + struct.pack("<Q", size) + block


def _rle_bomb(blocks: int) -> bytes:
    """``blocks`` RLE blocks of 128 KiB each: 4 bytes in, 128 KiB out."""
    out = bytearray(struct.pack("<I", 0xFD2FB528) + bytes([0x00, 0x58]))    # no FCS, 8 MiB window
    for i in range(blocks):
        out += (((128 << 10) << 3) | (1 << 1) | (1 if i == blocks - 1 else 0)).to_bytes(3, "little") + b"["
    return bytes(out)


@pytest.mark.parametrize("payload", ["declares-1TiB", "inflates-1000MiB"])
def test_zstd_that_declares_or_inflates_to_a_huge_size(plain_backed_up, payload):
    w = plain_backed_up
    _rewrite_body(w, _frame_declaring(1 << 40) if payload == "declares-1TiB" else _rle_bomb(8000))
    c = run_child(w, "verify", "--target", "local", limit_as=3 << 30)
    line = child_line(c)
    assert c.code == 4, (c.code, line)
    assert c.maxrss_kib < SMALL_RSS_KIB, c.maxrss_kib
