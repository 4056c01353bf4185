"""Helpers shared by the fault and hostile-input suite (tests/faults).

``DMBACKUP_FAULT_SWEEP=full`` turns the sampled crash points and disk-full sizes into a
sweep over every point (run by hand; CI runs the sample). See docs/promises.md for what each
module checks.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

from tests.world import ROOT, Result, World

FULL_SWEEP = os.environ.get("DMBACKUP_FAULT_SWEEP", "") == "full"


class FaultWorld(World):
    """A World whose config also sets the volume size and may use another store."""

    def __init__(self, tmp, *, store: str | None = None, volume_size: str = "1M"):
        super().__init__(tmp)
        if store is not None:
            self.store = store
        self.volume_size = volume_size
        self.targets_text: str | None = None

    def write_config(self, extra: str = "", *, targets: str | None = None, encryption: str | None = None):
        self.extra = extra
        if targets is not None:
            self.targets_text = targets
        enc = encryption if encryption is not None else f'passphrase_file = "{self.passfile}"'
        tg = self.targets_text or f'[targets.local]\ntype = "dir"\npath = "{self.repo_dir}"\n'
        with open(self.config, "w") as f:
            f.write(f'hostname = "mx.test"\nstate_dir = "{self.state}"\nhooks_dir = "{self.tmp}/hooks"\n'
                    f'volume_size = "{self.volume_size}"\n'
                    f'[source]\nmail_store = "{self.store}"\nconfig_paths = ["{self.tmp}/etc"]\n'
                    f'[encryption]\n{enc}\n{tg}\n{extra}\n')

    def run(self, *args, env=None) -> Result:
        return super().run(*args, env=env)

    def killer(self, *args, kill: str | None = None, trace: str | None = None, timeout=300) -> Result:
        """dmbackup ARGS as a subprocess under tests.faults.killer (see there)."""
        e = dict(os.environ)
        e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
        e.pop("DMB_FAULT_KILL", None)
        e.pop("DMB_FAULT_TRACE", None)
        if kill:
            e["DMB_FAULT_KILL"] = kill
        if trace:
            e["DMB_FAULT_TRACE"] = trace
        p = subprocess.run([sys.executable, "-m", "tests.faults.killer", "--config", self.config, *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, text=True, timeout=timeout,
                           cwd=ROOT)
        return Result(p.returncode, p.stdout, p.stderr)


def no_traceback(r: Result) -> None:
    assert "Traceback" not in r.err and "Traceback" not in r.out, r.err


def one_line(r: Result) -> str:
    """The single human line of an expected failure (JSON log lines aside), no traceback."""
    no_traceback(r)
    lines = [ln for ln in r.err.strip().splitlines() if ln.strip() and not ln.startswith("{")]
    assert len(lines) == 1, r.err
    return lines[0]


def mail_snaps(w, *args) -> list[dict]:
    r = w.run("snapshots", *args, "--json")
    assert r.code == 0, r.err
    return [x for x in json.loads(r.out) if x["kind"] != "config"]


def copy_tree(src: str, dst: str) -> None:
    """cp -a (keeps owners, modes, mtimes)."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    subprocess.run(["cp", "-a", src, dst], check=True)


def repo_objects(repo_root: str) -> list[str]:
    out = []
    for dp, _, fns in os.walk(repo_root):
        for n in fns:
            out.append(os.path.relpath(os.path.join(dp, n), repo_root))
    return sorted(out)


def add_random_message(store: str, mailbox: str, size: int, seed: int, *, sub: str = "cur",
                       folder: str = "") -> str:
    """A message with an incompressible body, so it takes real room in a volume."""
    rng = random.Random(seed)
    dom, user = mailbox.split("/")
    d = os.path.join(store, dom, user, "Maildir", folder, sub)
    data = (f"From: r{seed}@example.net\r\nSubject: blob {seed}\r\n\r\n").encode() + rng.randbytes(size)
    t = 1794000000 + seed
    name = f"{t}.M{seed}P{seed}.mail,S={len(data)},W={len(data)}" + (":2,S" if sub == "cur" else "")
    p = os.path.join(d, name)
    with open(p, "wb") as f:
        f.write(data)
    os.utime(p, (t, t))
    if os.geteuid() == 0:
        os.chown(p, 5000, 5000)
        os.chmod(p, 0o600)
    append_uid(os.path.dirname(d), name.split(":", 1)[0])
    return p


def append_uid(folder_dir: str, base: str) -> None:
    """Give a delivered message a UID the way Dovecot's LDA does: a record appended to the
    folder's dovecot-uidlist, above the others, the header left as it is."""
    p = os.path.join(folder_dir, "dovecot-uidlist")
    if not os.path.exists(p):
        return
    with open(p, "rb") as f:
        lines = f.read().splitlines()
    top = max([int(ln.split()[0]) for ln in lines[1:] if ln[:1].isdigit()], default=0)
    n = int(lines[0].split(b" N")[1].split()[0]) if b" N" in lines[0] else 1
    with open(p, "ab") as f:
        f.write(f"{max(top + 1, n)} :{base}\n".encode())
