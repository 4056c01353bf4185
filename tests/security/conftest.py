"""Helpers for the hostile-medium tests (tests/security/test_medium_*.py).

The attacker holds the backup medium: a USB disk left in a drawer, a share on a NAS that
someone else administers. Each test lets dmbackup write a real repository through the CLI,
edits the medium on disk the way such a person could (a text editor on ``repo.json``, a
planted file, an older copy put back, a symbolic link, a FIFO), then runs the real CLI again
and checks what reached the machine: exit code, one line on stderr, and the files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import time

import pytest
import zstandard

from dmbackup.archive import bundle

from dmbackup.source import appliance
from tests.world import PASSPHRASE, ROOT, Result, World

JOB = """
[jobs.nightly]
what = "mail"
target = "local"
keep_chains = 1
full_every = 0
"""


def no_traceback(r: Result) -> None:
    assert "Traceback" not in r.err and "Traceback" not in r.out, r.err[-3000:]


def one_line(r: Result) -> str:
    """The single human line of an expected failure (JSON log lines aside), no traceback."""
    no_traceback(r)
    lines = [ln for ln in r.err.strip().splitlines() if ln.strip() and not ln.startswith("{")]
    assert len(lines) == 1, r.err[-3000:]
    return lines[0]


def all_files(root: str) -> list[str]:
    out = []
    for dp, _, fns in os.walk(root):
        out += [os.path.join(dp, n) for n in fns]
    return sorted(out)


def files_containing(root: str, needle: bytes) -> list[str]:
    hits = []
    for p in all_files(root):
        with open(p, "rb") as f:
            if needle in f.read():
                hits.append(p)
    return hits


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def write_json(path: str, doc) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def repo_id(w: World) -> str:
    return read_json(os.path.join(w.repo_root, "repo.json"))["id"]


def craft_bundle(files: list[dict], *, sealer, context: bytes, hostname: str = "mx.test") -> bytes:
    """A config bundle, correctly sealed by ``sealer`` for ``context``, holding ``files``:
    dicts with path, data, mode, uid, gid (what an attacker with that sealer can make)."""
    bid = os.urandom(16)
    header = bundle._make_header(
        bundle.PROT_KEY if getattr(sealer, "encrypted", True) else bundle.PROT_NONE, sealer, bid,
        int(time.time()))
    records, members = [], []
    for f in files:
        data = f["data"]
        records.append({"path": f["path"], "type": "file", "mode": f.get("mode", 0o644),
                        "uid": f.get("uid", 0), "gid": f.get("gid", 0), "mtime_ns": 0,
                        "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "target": None})
        ti = tarfile.TarInfo(f["path"][1:])
        ti.size, ti.mode, ti.uid, ti.gid = len(data), f.get("mode", 0o644), f.get("uid", 0), f.get("gid", 0)
        members.append((ti, data))
    manifest = {"format": appliance.MANIFEST_FORMAT, "version": appliance.MANIFEST_VERSION,
                "id": bid.hex(), "hostname": hostname, "time": "2099-01-01T00:00:00Z",
                "files": records, "warnings": []}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        m = json.dumps(manifest).encode()
        ti = tarfile.TarInfo(bundle.MANIFEST_NAME)
        ti.size = len(m)
        tf.addfile(ti, io.BytesIO(m))
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data))
    out = io.BytesIO()
    out.write(header)
    sink = bundle._ChunkSealer(out, sealer, hashlib.sha256(header).digest(), context, 1 << bundle.CHUNK_EXP)
    sink.write(zstandard.ZstdCompressor().compress(buf.getvalue()))
    sink.finish()
    return out.getvalue()


class Child:
    """dmbackup run as a child process with an address-space limit (so a memory attack that
    is not stopped ends in MemoryError instead of taking the machine down), its peak RSS read
    from wait4(), and a guard against hangs (a hang is killed and reported, not waited out)."""

    def __init__(self, code: int | None, out: str, err: str, maxrss_kib: int, hung: bool):
        self.code, self.out, self.err, self.maxrss_kib, self.hung = code, out, err, maxrss_kib, hung


def run_child(w: World, *args, limit_as: int = 3 << 30, umask: int | None = None,
              env: dict | None = None, guard: float = 120.0) -> Child:
    e = dict(os.environ)
    e.update(env or {})
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")

    def pre():
        resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))
        if umask is not None:
            os.umask(umask)

    outp, errp = os.path.join(w.tmp, ".child.out"), os.path.join(w.tmp, ".child.err")
    with open(outp, "wb") as fo, open(errp, "wb") as fe:
        p = subprocess.Popen([sys.executable, "-m", "dmbackup", "--config", w.config, *args],
                             stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=e, preexec_fn=pre)
        deadline = time.monotonic() + guard
        hung = False
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                hung = True
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    with open(outp, "rb") as fo, open(errp, "rb") as fe:
        out, err = fo.read().decode(errors="replace"), fe.read().decode(errors="replace")
    return Child(None if hung else p.returncode, out, err, ru.ru_maxrss, hung)


def child_line(c: Child) -> str:
    assert not c.hung, "dmbackup hung (killed by the test's guard)"
    assert "Traceback" not in c.err, c.err[-3000:]
    lines = [ln for ln in c.err.strip().splitlines() if ln.strip() and not ln.startswith("{")]
    assert len(lines) == 1, c.err[-3000:]
    return lines[0]


@pytest.fixture
def job_world(world):
    """An encrypted world with a ``nightly`` job (keep one chain, every run a full) and a
    secret file among the config paths, initialised and with one backup done."""
    sec = os.path.join(world.tmp, "etc", "dmbackup")
    os.makedirs(sec, exist_ok=True)
    with open(os.path.join(sec, "nas.pw"), "w") as f:
        f.write("nas-Secret-42\n")
    os.chmod(os.path.join(sec, "nas.pw"), 0o600)
    # the passphrase file lives among the config paths, as on a real appliance (/etc/dmbackup)
    world.passfile = os.path.join(sec, "passphrase")
    with open(world.passfile, "w") as f:
        f.write(PASSPHRASE + "\n")
    os.chmod(world.passfile, 0o600)
    world.write_config(JOB)
    world.ok("init", "local")
    r = world.run("backup", "nightly")
    assert r.code == 0, r.err
    return world


__all__ = ["PASSPHRASE", "JOB", "no_traceback", "one_line", "all_files", "files_containing", "read_json",
           "write_json", "repo_id", "craft_bundle", "run_child", "child_line", "Child"]
