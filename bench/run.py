"""Side-by-side benchmark: GNU tar --listed-incremental | zstd, restic, borg and dmbackup.

One run generates a corpus (``bench/corpus.py``), and on that same corpus, for every tool:

1. full backup into a fresh repository;
2. incremental with nothing changed;
3. ``bench/mutate.py`` applies one day of mail (once, shared by all tools), then an
   incremental after that day;
4. full restore of the latest state into an empty directory (checked against the corpus:
   same names, sizes and bytes, nothing extra -- deleted files must stay deleted);
5. restore of one user's Maildir (checked the same way);
6. verify with a full read of the stored data.

Each step is timed (wall clock, and user + system CPU) with its peak RSS taken by GNU time
(``/usr/bin/time -f '%M %U %S'``) around every process; for a pipeline (tar | zstd) the
stages' peaks are added up, since they run at the same time. Stored bytes are the repository's file sizes after each
backup. A bare ``os.scandir`` + ``lstat`` walk of the corpus is timed as the floor any
incremental pays. The whole sequence is repeated (``--repeat``, at least 2) on a corpus
regenerated from the same seed, and medians are reported with ratios to tar+zstd.

Peers run with encryption on, as dmbackup does by default: restic (always encrypted,
repository v2 with its default ``auto`` zstd compression), borg ``repokey`` (AES-CTR +
HMAC-SHA256; this CPU has SHA-NI) with ``--compression zstd,3``. tar + zstd is not
encrypted: it is the speed floor, not a like-for-like product. Passwords go through the
environment; caches (restic's, borg's files cache) live in the work directory and start
empty for every repetition, so an incremental measures what a nightly run pays.

This script installs nothing: it reports missing tools (``bench/install-peers.sh`` installs
them). If dmbackup's CLI is not usable yet, its rows say "not available" and why, and the
peers are still measured.

Results: ``bench/results/<UTC date>-<preset>.md`` and ``.json`` with the machine (nproc,
CPU model, RAM, kernel) and the load average seen during the run: the machine is shared.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench import corpus, dmconfig, mutate  # noqa: E402
else:
    from . import corpus, dmconfig, mutate

HERE = os.path.dirname(os.path.abspath(__file__))
GNU_TIME = "/usr/bin/time"
PASSWORD = "bench-passphrase-not-secret"
STEPS = ["full", "incr_nochange", "incr_day", "restore_full", "restore_user", "verify"]
STEP_TITLES = {
    "full": "full backup",
    "incr_nochange": "incremental, nothing changed",
    "incr_day": "incremental after one day of mail",
    "restore_full": "full restore (latest)",
    "restore_user": "restore one user's Maildir",
    "verify": "verify, reading all data",
}
TOOLS = ["tar", "restic", "borg", "dmbackup"]
TOOL_TITLES = {"tar": "tar+zstd", "restic": "restic", "borg": "borg", "dmbackup": "dmbackup"}


class StepFailed(Exception):
    pass


class NotAvailable(Exception):
    pass


# --------------------------------------------------------------------------- measuring

@dataclass
class Measure:
    seconds: float = 0.0
    cpu_s: float | None = None        # user + system CPU of every process in the step
    rss_kb: int | None = None
    stored_bytes: int | None = None
    check: str | None = None


def tree_bytes(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def settle(max_s: float = 90.0) -> None:
    """Flush, then wait for the disk to go quiet (Linux PSI ``some avg10`` of I/O under 1%, at
    most ``max_s``): after gigabytes are deleted on a file system mounted with `discard`, the
    trims go on for tens of seconds and slow whatever is measured next."""
    os.sync()
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        try:
            with open("/proc/pressure/io") as f:
                some = float(f.readline().split()[1].split("=")[1])
        except (OSError, IndexError, ValueError):
            return
        if some < 1.0:
            return
        time.sleep(1)


def walk_lstat(root: str) -> int:
    """The floor of any incremental: visit every entry and lstat it."""
    n = 0
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                e.stat(follow_symlinks=False)
                n += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return n


class Runner:
    """Runs commands for one step, timing them and collecting peak RSS via GNU time."""

    def __init__(self, logdir: str, have_time: bool):
        self.logdir = logdir
        self.have_time = have_time
        self.loads: list[float] = []

    def run(self, label: str, pipelines: list[list[list[str]]], env: dict, cwd: str | None = None,
            stdout_null: bool = False) -> Measure:
        """Each pipeline is a list of argv stages joined by ``|``; pipelines run one after another."""
        m = Measure()
        log = os.path.join(self.logdir, label + ".log")
        peak, cpu = 0, 0.0
        with open(log, "ab") as lf, tempfile.TemporaryDirectory(prefix="rss-") as tmp:
            for pi, stages in enumerate(pipelines):
                parts, rss_files = [], []
                for si, argv in enumerate(stages):
                    q = " ".join(shlex.quote(a) for a in argv)
                    if self.have_time:
                        rf = os.path.join(tmp, f"{pi}-{si}")
                        rss_files.append(rf)
                        q = f"{GNU_TIME} -f '%M %U %S' -o {shlex.quote(rf)} {q}"
                    parts.append(q)
                cmd = "set -o pipefail; " + " | ".join(parts) + (" >/dev/null" if stdout_null else "")
                lf.write(f"$ {cmd}\n".encode())
                lf.flush()
                self.loads.append(os.getloadavg()[0])
                t0 = time.perf_counter()
                p = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, stdout=lf, stderr=lf)
                m.seconds += time.perf_counter() - t0
                if p.returncode != 0:
                    lf.flush()
                    raise StepFailed(f"exit {p.returncode}: {tail(log)}")
                if self.have_time:
                    s = 0
                    for rf in rss_files:
                        try:
                            rss, user, system = open(rf).read().split()[-3:]
                            s += int(rss)
                            cpu += float(user) + float(system)
                        except (OSError, ValueError):
                            pass
                    peak = max(peak, s)
        m.rss_kb = peak if self.have_time else None
        m.cpu_s = cpu if self.have_time else None
        return m


def tail(path: str, n: int = 6) -> str:
    try:
        lines = open(path, "rb").read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(l.strip() for l in lines[-n:])[-600:]


# --------------------------------------------------------------------------- tree checks

def digest_tree(root: str) -> dict[str, tuple[int, str]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            h = hashlib.sha1()
            with open(p, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            out[os.path.relpath(p, root)] = (st.st_size, h.hexdigest())
        for d in dirs:
            p = os.path.join(dirpath, d)
            if not os.listdir(p):
                out[os.path.relpath(p, root) + "/"] = (0, "dir")
    return out


def find_subtree(dest: str, rel_probe: str) -> str | None:
    """The directory under ``dest`` that contains ``rel_probe`` (tools nest paths differently)."""
    for dirpath, dirs, _ in os.walk(dest):
        if os.path.exists(os.path.join(dirpath, rel_probe)):
            return dirpath
        if dirpath.count(os.sep) - dest.count(os.sep) > 12:
            dirs[:] = []
    return None


def compare(expected: dict, dest: str, probe: str, subpath: str = "") -> str:
    """Compare the restored tree that holds ``probe`` (then ``subpath`` below it) with ``expected``."""
    root = find_subtree(dest, probe)
    if root is None:
        return f"MISMATCH: {probe} not found in the restored tree"
    got = digest_tree(os.path.join(root, subpath))
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    differ = [k for k in expected if k in got and got[k] != expected[k]]
    if not (missing or extra or differ):
        return f"ok ({sum(1 for k in expected if not k.endswith('/'))} files identical)"
    return (f"MISMATCH: {len(missing)} missing, {len(extra)} extra, {len(differ)} differ"
            + (f" (e.g. extra {extra[0]})" if extra else "")
            + (f" (e.g. missing {missing[0]})" if missing else ""))


# --------------------------------------------------------------------------- tools

class Tool:
    name = ""

    def __init__(self, work: str, corpus_dir: str, runner: Runner):
        self.work, self.corpus, self.runner = work, corpus_dir, runner
        self.dir = os.path.join(work, self.name)

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RESTIC_", "BORG_", "DMBACKUP_"))}
        env["LC_ALL"] = "C.UTF-8"
        return env

    def reset(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)

    def stored(self) -> int:
        return tree_bytes(self.repo_path())

    def repo_path(self) -> str:
        return self.dir

    def version(self) -> str:
        return ""

    def check_available(self) -> None:
        pass

    def init(self) -> None:
        pass

    def run(self, label, pipelines, **kw) -> Measure:
        return self.runner.run(f"{self.name}-{label}", pipelines, self.env(), **kw)


class TarZstd(Tool):
    """GNU tar level-0 + level-1.. dumps chained by one snapshot file, each piped to zstd."""

    name = "tar"

    def check_available(self):
        for t in ("tar", "zstd"):
            if not shutil.which(t):
                raise NotAvailable(f"{t} missing (bench/install-peers.sh)")

    def version(self):
        return (first_line(["tar", "--version"]) + "; " + first_line(["zstd", "--version"])).strip()

    def repo_path(self):
        return self.dir

    def archives(self):
        return sorted(f for f in os.listdir(self.dir) if f.endswith(".tar.zst"))

    def backup(self, label):
        out = os.path.join(self.dir, f"{len(self.archives()):02d}-{label}.tar.zst")
        return self.run(label, [[["tar", "--create", "--file=-", "--listed-incremental="
                                  + os.path.join(self.dir, "snar"), "-C", self.corpus, "."],
                                 ["zstd", "-3", "-T2", "-q", "-o", out]]])

    def restore(self, label, dest, member=None):
        pipes = []
        for a in self.archives():
            cmd = ["tar", "--extract", "--file=-", "--listed-incremental=/dev/null", "-C", dest]
            if member:
                cmd.append("./" + member)
            pipes.append([["zstd", "-d", "-c", "-q", os.path.join(self.dir, a)], cmd])
        return self.run(label, pipes)

    def verify(self, label):
        return self.run(label, [[["zstd", "-d", "-c", "-q", os.path.join(self.dir, a)],
                                 ["tar", "--list", "--file=-", "--listed-incremental=/dev/null"]]
                                for a in self.archives()], stdout_null=True)


class Restic(Tool):
    name = "restic"

    def check_available(self):
        if not shutil.which("restic"):
            raise NotAvailable("restic missing (bench/install-peers.sh)")

    def version(self):
        return first_line(["restic", "version"])

    def env(self):
        env = super().env()
        env.update(RESTIC_REPOSITORY=os.path.join(self.dir, "repo"), RESTIC_PASSWORD=PASSWORD,
                   RESTIC_CACHE_DIR=os.path.join(self.dir, "cache"))
        return env

    def repo_path(self):
        return os.path.join(self.dir, "repo")

    def init(self):
        self.run("init", [[["restic", "init", "--repository-version", "2"]]])

    def backup(self, label):
        return self.run(label, [[["restic", "backup", "--quiet", "--host", "bench",
                                  "--tag", label, self.corpus]]])

    def restore(self, label, dest, member=None):
        cmd = ["restic", "restore", "latest", "--host", "bench", "--target", dest]
        if member:
            cmd += ["--include", os.path.join(self.corpus, member)]
        return self.run(label, [[cmd]])

    def verify(self, label):
        return self.run(label, [[["restic", "check", "--read-data"]]])


class Borg(Tool):
    name = "borg"

    def check_available(self):
        if not shutil.which("borg"):
            raise NotAvailable("borg missing (bench/install-peers.sh)")

    def version(self):
        return first_line(["borg", "--version"])

    def env(self):
        env = super().env()
        env.update(BORG_REPO=os.path.join(self.dir, "repo"), BORG_PASSPHRASE=PASSWORD,
                   BORG_BASE_DIR=os.path.join(self.dir, "home"),
                   BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
                   BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="no")
        return env

    def repo_path(self):
        return os.path.join(self.dir, "repo")

    def init(self):
        self.run("init", [[["borg", "init", "--encryption=repokey"]]])
        self.last = None

    def backup(self, label):
        self.last = label
        return self.run(label, [[["borg", "create", "--compression", "zstd,3", "::" + label,
                                  self.corpus]]])

    def restore(self, label, dest, member=None):
        cmd = ["borg", "extract", "::" + self.last]
        if member:
            cmd.append(os.path.join(self.corpus, member).lstrip("/"))
        return self.run(label, [[cmd]], cwd=dest)

    def verify(self, label):
        return self.run(label, [[["borg", "check", "--verify-data"]]])


class Dmbackup(Tool):
    """dmbackup through its CLI, as an administrator or a timer runs it."""

    name = "dmbackup"

    def exe(self) -> list[str]:
        # the entry point installed beside this interpreter, as /usr/bin/dmbackup on an appliance:
        # not a shell shim found first on PATH (pyenv's adds 50 ms to every run)
        beside = os.path.join(os.path.dirname(sys.executable), "dmbackup")
        if os.access(beside, os.X_OK):
            return [beside]
        found = shutil.which("dmbackup")
        return [found] if found else [sys.executable, "-m", "dmbackup.cli.main"]

    def config_file(self):
        return os.path.join(self.dir, "dmbackup.toml")

    def env(self):
        env = super().env()
        env["DMBACKUP_PASSPHRASE"] = PASSWORD
        env["DMBACKUP_CONFIG"] = self.config_file()
        env["DMBACKUP_STATE_DIR"] = os.path.join(self.dir, "state")
        env["XDG_STATE_HOME"] = os.path.join(self.dir, "state")
        return env

    def repo_path(self):
        return os.path.join(self.dir, "target")

    def check_available(self):
        try:
            p = subprocess.run(self.exe() + ["--help"], capture_output=True, text=True, timeout=60,
                               env=super().env(), cwd=os.path.dirname(HERE))
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NotAvailable(f"dmbackup CLI cannot run: {e}") from None
        text = p.stdout + p.stderr
        if p.returncode != 0 or not all(w in text for w in ("backup", "restore", "verify", "init")):
            last = (text.strip().splitlines() or ["no output"])[-1][:200]
            raise NotAvailable(f"dmbackup CLI not usable yet (`dmbackup --help` exit {p.returncode}: {last})")

    def version(self):
        src = os.path.dirname(HERE)
        ver = first_line([sys.executable, "-c", "import dmbackup; print(getattr(dmbackup, '__version__', '?'))"])
        commit = first_line(["git", "-C", src, "log", "-1", "--format=%h %cI"])
        dirty = first_line(["git", "-C", src, "status", "--porcelain", "--untracked-files=no", "--", "dmbackup"])
        return f"dmbackup {ver} at commit {commit}" + (" (with uncommitted changes)" if dirty else "")

    def reset(self):
        super().reset()
        os.makedirs(os.path.join(self.dir, "target"))
        # state_dir comes only from the config file (the environment variables in env() do not
        # set it): without it every bench run enrols its repositories in /var/lib/dmbackup
        state = os.path.join(self.dir, "state")
        os.makedirs(state, exist_ok=True)
        dmconfig.write_config(self.config_file(), store=self.corpus, target=self.repo_path(), state=state,
                              etc=os.path.join(self.dir, "etc"),
                              main_cf="myhostname = mx1.example.it\nvirtual_mailbox_base = /var/vmail\n")

    def cli(self, *args):
        return self.exe() + ["--config", self.config_file(), *args]

    def init(self):
        try:
            self.run("init", [[self.cli("init", "bench")]])
        except StepFailed as e:
            raise NotAvailable(f"`dmbackup init` failed: {e}") from None

    def backup(self, label):
        full = ["--full"] if label.startswith("full") else []
        return self.run(label, [[self.cli("backup", "--target", "bench", "--what", "mail", *full)]])

    def restore(self, label, dest, member=None):
        extra = []
        if member:
            dom, user = member.split("/")[:2]
            extra = ["--mailbox", f"{user}@{dom}"]
        return self.run(label, [[self.cli("restore", "--target", "bench", *extra, "--to", dest)]])

    def verify(self, label):
        return self.run(label, [[self.cli("verify", "--target", "bench", "--read-data")]])


TOOL_CLASSES = {"tar": TarZstd, "restic": Restic, "borg": Borg, "dmbackup": Dmbackup}


def first_line(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return ((p.stdout or p.stderr).strip().splitlines() or [""])[0]


# --------------------------------------------------------------------------- machine

def machine() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    fs = ""
    try:
        fs = subprocess.run(["df", "--output=fstype", HERE], capture_output=True,
                            text=True).stdout.split()[-1]
    except (OSError, IndexError):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(), "fs": fs,
            "hostname": platform.node()}


# --------------------------------------------------------------------------- the run

@dataclass
class Results:
    data: dict = field(default_factory=dict)      # tool -> step -> list[Measure]
    status: dict = field(default_factory=dict)    # tool -> "ok" | "not available: ..."
    failures: dict = field(default_factory=dict)  # tool -> step -> message

    def add(self, tool, step, m: Measure):
        self.data.setdefault(tool, {}).setdefault(step, []).append(m)


def run_bench(a) -> dict:
    work = os.path.abspath(a.work or os.path.join(HERE, "work", f"run-{a.preset}"))
    os.makedirs(work, exist_ok=True)
    logdir = os.path.join(work, "logs")
    shutil.rmtree(logdir, ignore_errors=True)
    os.makedirs(logdir)
    corpus_dir = os.path.join(work, "corpus")
    have_time = os.access(GNU_TIME, os.X_OK)
    runner = Runner(logdir, have_time)
    res = Results()
    missing = []
    if not have_time:
        missing.append("/usr/bin/time (GNU time: peak RSS will be missing)")

    tools: list[Tool] = []
    for name in a.tools:
        t = TOOL_CLASSES[name](work, corpus_dir, runner)
        try:
            t.check_available()
            res.status[name] = "ok"
            tools.append(t)
        except NotAvailable as e:
            res.status[name] = f"not available: {e}"
            if name != "dmbackup":
                missing.append(str(e))
    for m in missing:
        print(f"run.py: MISSING {m}", file=sys.stderr)
    versions = {t.name: t.version() for t in tools}

    p = corpus.params_for(a.preset, seed=a.seed)
    gen_runs, mut_runs, walks = [], [], []
    load_start = os.getloadavg()
    started = time.time()
    user_member = None
    for rep in range(a.repeat):
        print(f"[rep {rep + 1}/{a.repeat}] generating corpus ({a.preset})", file=sys.stderr)
        shutil.rmtree(corpus_dir, ignore_errors=True)
        info = corpus.generate(corpus_dir, p)
        settle()                # the old corpus's deletion, before the first tool's full backup
        mailboxes = info.pop("mailboxes")
        gen_runs.append(info)
        # One user's Maildir: the median-sized mailbox, so the figure is typical.
        if user_member is None:
            sizes = sorted((tree_bytes(os.path.join(corpus_dir, mb.split("@")[1], mb.split("@")[0])), mb)
                           for mb in mailboxes)
            size, mb = sizes[len(sizes) // 2]
            user, dom = mb.split("@")
            user_member = f"{dom}/{user}/Maildir"
            user_bytes = size
        t0 = time.perf_counter()
        nwalk = walk_lstat(corpus_dir)
        walks.append(time.perf_counter() - t0)

        active = []
        for t in tools:
            if res.status.get(t.name) != "ok":
                continue
            t.reset()
            try:
                t.init()
                active.append(t)
            except NotAvailable as e:
                res.status[t.name] = f"not available: {e}"
            except StepFailed as e:
                res.failures.setdefault(t.name, {})["init"] = str(e)

        def step(t: Tool, name: str, fn, *args, stored: bool = False, check=None):
            if name in res.failures.get(t.name, {}) or t not in active:
                return
            # every tool starts with no dirty pages: without this, the writeback of the tool before
            # (a 1.9 GB restore) is paid by the one after it, always the same one in TOOLS order
            os.sync()
            print(f"[rep {rep + 1}] {t.name}: {STEP_TITLES[name]}", file=sys.stderr)
            before = t.stored() if stored else 0
            try:
                m = fn(f"{name}-{rep + 1}", *args)
            except StepFailed as e:
                res.failures.setdefault(t.name, {})[name] = str(e)
                if name in ("full", "incr_nochange", "incr_day"):
                    active.remove(t)   # later steps would measure a broken chain
                return
            if stored:
                m.stored_bytes = t.stored() - before
            if check:
                m.check = check()
            res.add(t.name, name, m)

        for t in list(active):
            step(t, "full", t.backup, stored=True)
        for t in list(active):
            step(t, "incr_nochange", t.backup, stored=True)
        print(f"[rep {rep + 1}] mutating: one day of mail", file=sys.stderr)
        t0 = time.perf_counter()
        rep_mut = mutate.summary(mutate.mutate(corpus_dir, seed=a.seed, day=1))
        rep_mut["seconds"] = round(time.perf_counter() - t0, 2)
        mut_runs.append(rep_mut)
        t0 = time.perf_counter()
        walk_lstat(corpus_dir)
        walks.append(time.perf_counter() - t0)
        for t in list(active):
            step(t, "incr_day", t.backup, stored=True)

        expected_all = digest_tree(corpus_dir) if a.check else None
        expected_user = digest_tree(os.path.join(corpus_dir, user_member)) if a.check else None
        # each restore into a directory of its own, all deleted once the rep is measured: deleting
        # a 1.9 GB tree on a file system mounted with `discard` slows the disk for tens of seconds,
        # and the restore right after it (always the next tool's) paid for that
        dests = []
        # the tools restore in a rotated order each rep: on this kind of virtual disk a restore
        # costs more system time the more trees were restored before it in the rep (one tool's
        # restore took 31 s of CPU third in line and 15-17 s otherwise), and a fixed order
        # always charged that to the same tools
        k = rep % len(active) if active else 0
        for t in list(active[k:] + active[:k]):
            dest = os.path.join(work, f"restore-{t.name}")
            shutil.rmtree(dest, ignore_errors=True)
            os.makedirs(dest)
            probe = sorted(os.listdir(corpus_dir))[0]
            step(t, "restore_full", t.restore, dest,
                 check=(lambda d=dest, pr=probe: compare(expected_all, d, pr)) if a.check else None)
            dest_user = dest + "-user"
            shutil.rmtree(dest_user, ignore_errors=True)
            os.makedirs(dest_user)
            step(t, "restore_user", t.restore, dest_user, user_member,
                 check=(lambda d=dest_user: compare(expected_user, d, user_member, user_member))
                 if a.check else None)
            dests += [dest, dest_user]
        for t in list(active):
            step(t, "verify", t.verify)
        for d in dests:
            shutil.rmtree(d, ignore_errors=True)
        settle()

    finished = time.time()
    out = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "started_utc": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(finished - started, 1),
        "preset": a.preset, "seed": a.seed, "repeat": a.repeat,
        "machine": machine(),
        "load": {"at_start": [round(x, 2) for x in load_start],
                 "at_end": [round(x, 2) for x in os.getloadavg()],
                 "max_1min_seen": round(max(runner.loads or [0.0]), 2),
                 "median_1min_seen": round(statistics.median(runner.loads or [0.0]), 2)},
        "versions": versions,
        "status": res.status,
        "failures": res.failures,
        "missing": missing,
        "corpus": {k: v for k, v in gen_runs[0].items() if k != "root"} if gen_runs else {},
        "generator_seconds": [g["seconds"] for g in gen_runs],
        "generator_mb_per_s": [g["mb_per_s"] for g in gen_runs],
        "mutation": mut_runs[0] if mut_runs else {},
        "walk": {"entries": nwalk if gen_runs else 0, "seconds": [round(w, 3) for w in walks],
                 "median_s": round(statistics.median(walks), 3) if walks else None},
        "user_restored": {"path": user_member, "bytes": user_bytes if user_member else 0},
        "results": {},
    }
    for tool in a.tools:
        out["results"][tool] = {}
        for stp in STEPS:
            ms = res.data.get(tool, {}).get(stp, [])
            if not ms:
                continue
            secs = [m.seconds for m in ms]
            rss = [m.rss_kb for m in ms if m.rss_kb is not None]
            cpu = [m.cpu_s for m in ms if m.cpu_s is not None]
            stored = [m.stored_bytes for m in ms if m.stored_bytes is not None]
            out["results"][tool][stp] = {
                "seconds": [round(s, 3) for s in secs],
                "median_s": round(statistics.median(secs), 3),
                "cpu_s": [round(c, 2) for c in cpu],
                "median_cpu_s": round(statistics.median(cpu), 2) if cpu else None,
                "peak_rss_kib": rss, "median_rss_kib": int(statistics.median(rss)) if rss else None,
                "stored_bytes": stored,
                "median_stored_bytes": int(statistics.median(stored)) if stored else None,
                "checks": [m.check for m in ms if m.check],
            }
    return out


# --------------------------------------------------------------------------- report

def fmt_s(s: float) -> str:
    return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"


def fmt_b(b: int) -> str:
    if b >= 10**9:
        return f"{b / 10**9:.2f} GB"
    if b >= 10**6:
        return f"{b / 10**6:.1f} MB"
    if b >= 10**3:
        return f"{b / 10**3:.1f} kB"
    return f"{b} B"


def ratio(x, base) -> str:
    if x is None or not base:
        return ""
    return f" ({x / base:.2f}×)"


def markdown(r: dict) -> str:
    tools = list(r["results"])
    mach = r["machine"]
    c = r["corpus"]
    L = [f"# dmbackup benchmark — {r['date']}, preset `{r['preset']}`", ""]
    L.append(f"Machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['ram_gib']} GiB RAM, Linux "
             f"{mach['kernel']}, file system {mach['fs'] or '?'}, Python {mach['python']}.  ")
    ld = r["load"]
    L.append(f"Load average (1 min): {ld['at_start'][0]} at start, median {ld['median_1min_seen']} / "
             f"max {ld['max_1min_seen']} while measuring, {ld['at_end'][0]} at end. The machine is "
             f"shared with other engineers' test runs, so figures carry that noise.  ")
    L.append(f"Corpus: {c.get('files', 0):,} files, {fmt_b(c.get('bytes', 0))} "
             f"({c.get('messages', 0):,} messages, {c.get('attachments', 0):,} with attachments, "
             f"{c.get('users', 0)} users), seed {r['seed']}; generated in "
             f"{', '.join(fmt_s(s) for s in r['generator_seconds'])} "
             f"({', '.join(str(x) for x in r['generator_mb_per_s'])} MB/s).  ")
    mu = r["mutation"]
    if mu:
        L.append(f"One day of mail: +{mu['added']} messages ({fmt_b(mu['added_bytes'])}), "
                 f"{mu['renamed']} flag renames ({mu['new_to_cur']} new/→cur/), {mu['expunged']} "
                 f"expunged, {mu['moved']} moved between folders ({fmt_b(mu['moved_bytes'])}, new base "
                 f"names), {mu['rewritten']} control/index files rewritten.  ")
    L.append(f"Repetitions: {r['repeat']} (medians shown; every figure is in the JSON). Total run "
             f"{r['duration_s'] / 60:.1f} min. Page cache warm: the corpus fits in RAM; `sync` before every step, each restore into a directory of its own, deleted after the rep and the disk let settle: no tool pays for the writeback or trims of another; the tools restore in an order rotated by one each rep.  ")
    L.append(f"Bare `os.scandir`+`lstat` walk of the {r['walk']['entries']:,} entries: "
             f"{fmt_s(r['walk']['median_s'] or 0)} (median) — the floor for any incremental.")
    L.append("")
    for name, st in r["status"].items():
        if st != "ok":
            L.append(f"- **{TOOL_TITLES[name]}: {st}**")
    for note in r.get("notes", []):
        L.append(f"Note: {note}")
    for name, f in r["failures"].items():
        for stp, msg in f.items():
            L.append(f"- **{TOOL_TITLES[name]} {stp} failed**: `{msg[:300]}`")
    L.append("")

    def table(title, getter, fmt, base_tool="tar"):
        L.append(f"### {title}")
        L.append("")
        L.append("| step | " + " | ".join(TOOL_TITLES[t] for t in tools) + " |")
        L.append("|---|" + "---|" * len(tools))
        for stp in STEPS:
            base = getter(r["results"].get(base_tool, {}).get(stp))
            cells = []
            any_val = False
            for t in tools:
                if r["status"].get(t) != "ok":
                    cells.append("not available")
                    continue
                v = getter(r["results"][t].get(stp))
                if v is None:
                    cells.append("failed" if stp in r["failures"].get(t, {}) else "–")
                    continue
                any_val = True
                cells.append(fmt(v) + (ratio(v, base) if t != base_tool else ""))
            if any_val:
                L.append(f"| {STEP_TITLES[stp]} | " + " | ".join(cells) + " |")
        L.append("")

    table("Wall time (median; ratio to tar+zstd)", lambda d: d and d["median_s"], fmt_s)
    table("CPU time, user + system (median; less sensitive than wall time to a busy machine)",
          lambda d: d and d["median_cpu_s"], fmt_s)
    table("Peak RSS (median of per-run peaks; a pipeline's stages are added up)",
          lambda d: d and d["median_rss_kib"], lambda v: f"{v / 1024:.0f} MiB")
    L.append("### Stored bytes written by each backup")
    L.append("")
    L.append("| step | " + " | ".join(TOOL_TITLES[t] for t in tools) + " |")
    L.append("|---|" + "---|" * len(tools))
    for stp in ("full", "incr_nochange", "incr_day"):
        base = (r["results"].get("tar", {}).get(stp) or {}).get("median_stored_bytes")
        cells = []
        for t in tools:
            if r["status"].get(t) != "ok":
                cells.append("not available")
                continue
            v = (r["results"][t].get(stp) or {}).get("median_stored_bytes")
            cells.append("–" if v is None else fmt_b(v) + (ratio(v, base) if t != "tar" else ""))
        L.append(f"| {STEP_TITLES[stp]} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("### Restore checks (restored tree against the corpus: names, sizes, content)")
    L.append("")
    for t in tools:
        for stp in ("restore_full", "restore_user"):
            ch = (r["results"][t].get(stp) or {}).get("checks")
            if ch:
                L.append(f"- {TOOL_TITLES[t]}, {STEP_TITLES[stp]}: " + "; ".join(sorted(set(ch))))
    L.append(f"- one user = `{r['user_restored']['path']}` ({fmt_b(r['user_restored']['bytes'])}), "
             "the median-sized mailbox")
    L.append("")
    L.append("### Versions and settings")
    L.append("")
    for t, v in r["versions"].items():
        L.append(f"- {TOOL_TITLES[t]}: {v}")
    L.append("- tar: `tar --create --listed-incremental=snar -C CORPUS . | zstd -3 -T2`, restore and "
             "verify by `zstd -dc | tar --extract/--list --listed-incremental=/dev/null` over the chain; "
             "not encrypted (the speed floor).")
    L.append("- restic: repository v2, compression `auto`, encrypted (always); `restic check --read-data`.")
    L.append("- borg: `--encryption=repokey`, `--compression zstd,3`; `borg check --verify-data`.")
    L.append("- dmbackup: its CLI with a `dir` target, encryption on (`$DMBACKUP_PASSPHRASE`).")
    L.append("")
    L.append("Reproduce: `bash bench/install-peers.sh && python3 bench/run.py --preset "
             f"{r['preset']} --repeat {r['repeat']}`.")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark dmbackup against tar+zstd, restic and borg.")
    ap.add_argument("--preset", choices=sorted(corpus.PRESETS), default="small")
    ap.add_argument("--small", dest="preset", action="store_const", const="small")
    ap.add_argument("--repeat", type=int, default=2, help="repetitions (medians reported; at least 2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma list of " + ",".join(TOOLS))
    ap.add_argument("--work", help="scratch directory (default bench/work/run-<preset>)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="where the .md/.json go")
    ap.add_argument("--no-check", dest="check", action="store_false",
                    help="skip comparing restored trees with the corpus")
    ap.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    a = ap.parse_args(argv)
    a.tools = [t for t in a.tools.split(",") if t]
    bad = [t for t in a.tools if t not in TOOL_CLASSES]
    if bad:
        ap.error(f"unknown tool(s): {', '.join(bad)}")
    if a.repeat < 1:
        ap.error("--repeat must be at least 1")
    from bench.bytecode import compile_package

    compile_package(os.path.dirname(HERE))
    r = run_bench(a)
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"{r['date']}-{a.preset}")
    with open(stem + ".json", "w") as fh:
        json.dump(r, fh, indent=1)
        fh.write("\n")
    md = markdown(r)
    with open(stem + ".md", "w") as fh:
        fh.write(md)
    print(md)
    print(f"written {stem}.md and {stem}.json", file=sys.stderr)
    if not a.keep:
        work = os.path.abspath(a.work or os.path.join(HERE, "work", f"run-{a.preset}"))
        for sub in ("corpus", "restore", *TOOL_CLASSES, *(f"restore-{t}{u}" for t in TOOL_CLASSES for u in ("", "-user"))):
            shutil.rmtree(os.path.join(work, sub), ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
