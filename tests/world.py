"""Test helpers: a dmbackup "world" (store, targets, config, passphrase) and tree comparison.

``World.run`` runs the real CLI in-process with typer's CliRunner (exceptions are not
swallowed, so a traceback fails the test); ``World.spawn`` runs it as a subprocess for tests
that need signals.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from dataclasses import dataclass

from typer.testing import CliRunner

from dmbackup.cli.main import app as cli_app
from dmbackup.quickstart.sample import generate

PASSPHRASE = "correct horse battery staple"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Result:
    code: int
    out: str
    err: str


class World:
    def __init__(self, tmp):
        self.tmp = str(tmp)
        self.store = os.path.join(self.tmp, "vmail")
        self.repo_dir = os.path.join(self.tmp, "repo")
        self.state = os.path.join(self.tmp, "state")
        self.config = os.path.join(self.tmp, "dmbackup.toml")
        self.passfile = os.path.join(self.tmp, "passphrase")
        os.makedirs(self.repo_dir, exist_ok=True)
        os.makedirs(os.path.join(self.tmp, "etc", "postfix"), exist_ok=True)
        with open(os.path.join(self.tmp, "etc", "postfix", "main.cf"), "w") as f:
            f.write("myhostname = mx.test\nmydestination = example.it\n")
        with open(self.passfile, "w") as f:
            f.write(PASSPHRASE + "\n")
        os.chmod(self.passfile, 0o600)
        self.extra = ""

    def make_store(self, **kw):
        kw.setdefault("uid", 5000 if os.geteuid() == 0 else None)
        kw.setdefault("gid", 5000 if os.geteuid() == 0 else None)
        return generate(self.store, **kw)

    def write_config(self, extra: str = "", *, targets: str | None = None, encryption: str | None = None):
        self.extra = extra
        enc = encryption if encryption is not None else f'passphrase_file = "{self.passfile}"'
        tg = targets if targets is not None else f'[targets.local]\ntype = "dir"\npath = "{self.repo_dir}"\n'
        with open(self.config, "w") as f:
            f.write(f'hostname = "mx.test"\nstate_dir = "{self.state}"\nhooks_dir = "{self.tmp}/hooks"\n'
                    f'volume_size = "8M"\n'
                    f'[source]\nmail_store = "{self.store}"\nconfig_paths = ["{self.tmp}/etc"]\n'
                    f'[encryption]\n{enc}\n{tg}\n{extra}\n')

    def run(self, *args, env=None) -> Result:
        runner = CliRunner()
        res = runner.invoke(cli_app, ["--config", self.config, *args], env=env, catch_exceptions=False)
        return Result(res.exit_code, res.stdout, res.stderr)

    def ok(self, *args, **kw) -> Result:
        r = self.run(*args, **kw)
        assert r.code == 0, f"dmbackup {' '.join(args)} exited {r.code}\nstdout: {r.out}\nstderr: {r.err}"
        return r

    def spawn(self, *args, env=None, **kw) -> subprocess.Popen:
        e = dict(os.environ)
        e.update(env or {})
        e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
        return subprocess.Popen([sys.executable, "-m", "dmbackup", "--config", self.config, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, text=True, **kw)

    def sub(self, *args, env=None, timeout=300) -> Result:
        p = self.spawn(*args, env=env)
        out, err = p.communicate(timeout=timeout)
        return Result(p.returncode, out, err)

    @property
    def repo_root(self) -> str:
        return os.path.join(self.repo_dir, "dmbackup", "mx.test")

    def chain_files(self, suffix: str = "") -> list[str]:
        out = []
        for dp, _, fn in os.walk(os.path.join(self.repo_root, "chains")):
            out += [os.path.join(dp, n) for n in fn if n.endswith(suffix)]
        return sorted(out)


def base_config(tmp_path, *, target_path: str | None = None, hook_timeout: int | None = None) -> str:
    """The TOML every unattended-operation test starts from: one unencrypted ``dir`` target
    ``local`` under ``tmp_path`` (whose vmail/, etc/, target/ and hooks/ are created)."""
    for d in ("vmail", "etc", "target", "hooks"):
        os.makedirs(os.path.join(str(tmp_path), d), exist_ok=True)
    timeout = f"hook_timeout = {hook_timeout}\n" if hook_timeout is not None else ""
    return (f'hostname = "mail.test"\nstate_dir = "{tmp_path}/state"\nhooks_dir = "{tmp_path}/hooks"\n{timeout}'
            f'[source]\nmail_store = "{tmp_path}/vmail"\nconfig_paths = ["{tmp_path}/etc"]\n'
            f'[encryption]\nmode = "none"\n'
            f'[targets.local]\ntype = "dir"\npath = "{target_path or f"{tmp_path}/target"}"\n')


def tree(root: str, *, mtimes_of_dirs: bool = True) -> dict:
    """Everything a restore must reproduce: type, mode, owner, mtime, content or link."""
    out = {}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns + [""]:
            p = os.path.join(dp, n) if n else dp
            rel = os.path.relpath(p, root)
            if n == "" and dp != root:
                continue
            st = os.lstat(p)
            m = st.st_mode
            if stat.S_ISLNK(m):
                val = ("l", os.readlink(p))
            elif stat.S_ISDIR(m):
                val = ("d", None)
            else:
                with open(p, "rb") as f:
                    val = ("f", hashlib.sha256(f.read()).hexdigest())
            mt = st.st_mtime_ns if (not stat.S_ISDIR(m) or mtimes_of_dirs) else 0
            out[os.fsencode(rel)] = (val, stat.S_IMODE(m) if not stat.S_ISLNK(m) else 0, st.st_uid, st.st_gid, mt)
    return out


def diff_trees(a: dict, b: dict) -> list[str]:
    diffs = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            diffs.append(f"extra: {k!r}")
        elif k not in b:
            diffs.append(f"missing: {k!r}")
        elif a[k] != b[k]:
            diffs.append(f"differs: {k!r}: {a[k]} != {b[k]}")
    return diffs
