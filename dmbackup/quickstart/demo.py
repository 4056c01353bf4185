"""The quick start's first command: back up a sample Maildir to a local directory on an
embedded default config, verify it, restore it, and show that the restore is identical.

    python3 -m dmbackup.quickstart.demo [WORKDIR]

Everything happens under WORKDIR (default: a new directory in /tmp); nothing else on the
machine is touched. The passphrase is a random one kept in a mode-0600 file there.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import subprocess
import sys
import tempfile

CONFIG = """\
# dmbackup demo configuration (embedded default)
hostname = "demo.example.it"
state_dir = "{work}/state"
hooks_dir = "{work}/hooks"

[source]
mail_store = "{work}/vmail"
config_paths = ["{work}/etc"]

[encryption]
passphrase_file = "{work}/passphrase"

[targets.local]
type = "dir"
path = "{work}/backups"

[jobs.nightly]
what = "mail"
target = "local"
schedule = "daily at 02:30"
full_every = 6
keep_chains = 4
"""


def _tree(root: str) -> dict:
    out = {}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.join(dp, n)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    h = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                h = os.readlink(p)
            else:
                h = "dir"
            out[os.path.relpath(p, root)] = (h, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                             st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else 0)
    return out


def main(argv: list[str]) -> int:
    from dmbackup.quickstart.sample import generate

    work = os.path.abspath(argv[0]) if argv else tempfile.mkdtemp(prefix="dmbackup-demo-")
    os.makedirs(work, exist_ok=True)
    for d in ("backups", "etc", "state"):
        os.makedirs(os.path.join(work, d), exist_ok=True)
    with open(os.path.join(work, "etc", "main.cf"), "w") as f:
        f.write("myhostname = demo.example.it\n")
    pp = os.path.join(work, "passphrase")
    if not os.path.exists(pp):
        fd = os.open(pp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_urlsafe(24).encode() + b"\n")
        os.close(fd)
    cfg = os.path.join(work, "dmbackup.toml")
    with open(cfg, "w") as f:
        f.write(CONFIG.format(work=work))
    store = os.path.join(work, "vmail")
    if not os.path.exists(store):
        info = generate(store, uid=5000 if os.geteuid() == 0 else None, gid=5000 if os.geteuid() == 0 else None)
        print(f"sample store: {info.messages} messages of {len(info.users)} users in {store}")

    def dm(*args: str) -> None:
        cmd = [sys.executable, "-m", "dmbackup", "--quiet", "--config", cfg, *args]
        print("$ dmbackup " + " ".join(args), flush=True)
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            raise SystemExit(f"dmbackup {args[0]} failed with exit code {rc}")

    if not os.path.exists(os.path.join(work, "backups", "dmbackup")):
        dm("init", "local")
    dm("backup", "nightly")
    dm("snapshots")
    dm("verify", "--read-data")
    out = tempfile.mkdtemp(prefix="restored-", dir=work)
    os.rmdir(out)
    dm("restore", "--target", "local", "--to", out)
    same = _tree(store) == _tree(out)
    print(f"restored tree in {out} is {'IDENTICAL to' if same else 'DIFFERENT from'} the source "
          f"(bytes, names, modes, owners, mtimes)")
    print(f"config used: {cfg}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
