"""SIGKILL a real ``dmbackup backup`` (a subprocess) at many points of its run, on the dir
target and on the SMB target (a private smbd), and check what survives.

The process is killed from inside at a chosen *target operation* by tests/faults/killer.py
(a test-side wrapper that counts DirTarget/SmbTarget calls: no hook in the product). Points
are named by operation and object, e.g. ``commit|\\.v0002$|1:before`` (the second volume is
complete under its temporary name), ``write|\\.catalog$|1:mid`` (half the catalog written),
``delete|/chains/|3:after`` (prune has deleted three objects). CI runs a sample spread over
the run; ``DMBACKUP_FAULT_SWEEP=full`` kills at every operation of every scenario.

After every kill:
  * ``snapshots --json`` lists every earlier snapshot (except what a prune was deleting) and
    nothing else but, at most, the killed run's own snapshot if its catalog was committed;
  * ``verify --read-data`` passes: no listed snapshot is half written;
  * every earlier listed snapshot still restores to exactly its moment;
  * the next backup succeeds, removes the killed run's leftovers (no temporary names, no
    object of an uncommitted snapshot in chains/), and restores to exactly the source tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from tests.faults.conftest import (
    FULL_SWEEP,
    FaultWorld,
    add_random_message,
    copy_tree,
    mail_snaps,
    no_traceback,
    repo_objects,
)
from tests.fixtures.smbd import SmbServer
from tests.world import diff_trees, tree

MAILBOXES = ["example.it/mario", "example.it/anna", "dom1.example.it/mario", "dom1.example.it/anna"]
PRUNE_JOB = '[jobs.nightly]\nwhat = "mail"\ntarget = "{t}"\nfull_every = 0\nkeep_chains = 1\nprune_after = true\n'


class Template:
    """One store (S0 at the time of the earlier snapshots, S1 now) and two repositories:
    ``empty`` (just initialised) and ``chains`` (two chains, each one full backup of S0)."""

    def __init__(self, base: str):
        self.base = base
        w = FaultWorld(os.path.join(base, "t"))
        w.make_store()
        for i, mb in enumerate(MAILBOXES):
            add_random_message(w.store, mb, 300_000, seed=i)
        w.write_config()
        assert w.run("init", "local").code == 0
        self.store = w.store
        self.empty = os.path.join(base, "empty")
        copy_tree(w.repo_dir, self.empty)
        for _ in range(2):
            r = w.run("backup", "--target", "local", "--full")
            assert r.code == 0, r.err
        self.s0 = tree(w.store)
        self.earlier = mail_snaps(w)
        # a day of mail: two incompressible messages (two 1 MiB volumes), a flag change, an
        # expunge and a new folder
        add_random_message(w.store, "example.it/anna", 700_000, seed=10, sub="new")
        add_random_message(w.store, "dom1.example.it/mario", 700_000, seed=11, sub="new")
        cur = os.path.join(w.store, "example.it", "mario", "Maildir", "cur")
        names = sorted(os.listdir(cur))
        os.rename(os.path.join(cur, names[1]), os.path.join(cur, names[1].split(":")[0] + ":2,RS"))
        os.unlink(os.path.join(cur, names[2]))
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(w.store, "example.it", "anna", "Maildir", ".Nuova", sub))
        self.s1 = tree(w.store)
        self.chains = os.path.join(base, "chains")
        copy_tree(w.repo_dir, self.chains)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return Template(str(tmp_path_factory.mktemp("crash-template")))


# --- scenarios: which repository, which command ------------------------------------------------
SCENARIOS = {
    # the first backup ever (nothing earlier to keep)
    "first-full": ("empty", ["backup", "--target", "{t}"]),
    # an incremental on top of the newest chain
    "incremental": ("chains", ["backup", "--target", "{t}"]),
    # a new chain
    "new-full": ("chains", ["backup", "--target", "{t}", "--full"]),
    # a job: a new chain, then prune deletes the two older chains (keep_chains = 1)
    "job-prune": ("chains", ["backup", "nightly"]),
}

# CI's sample: named points spread over each run (DMBACKUP_FAULT_SWEEP=full adds every op)
POINTS = {
    "first-full": ["create_exclusive|locks/lock$|1:after", "commit|\\.v0001$|1:after",
                   "commit|\\.catalog$|1:before"],
    "incremental": [
        "create_exclusive|locks/lock$|1:after",     # holds the lock, nothing written
        "write|\\.v0001$|1:mid",                    # half a block frame in the first volume
        "commit|\\.v0001$|1:after",                 # after one object written
        "commit|\\.v0002$|1:before",                # a complete volume under its temporary name
        "commit|\\.pages$|1:after",                 # every volume and the pages written
        "commit|\\.index$|1:after",
        "commit|/config/.*\\.bundle$|1:after",      # between volumes and catalog
        "write|\\.catalog$|1:mid",                  # during the catalog write
        "commit|\\.catalog$|1:before",              # catalog complete, not yet renamed
        "commit|\\.catalog$|1:after",               # snapshot committed, lock still held
    ],
    "new-full": ["commit|\\.v0002$|1:after", "commit|\\.catalog$|1:before"],
    "job-prune": ["delete|/chains/.*\\.catalog$|1:after", "delete|/chains/.*\\.catalog$|2:after",
                  "delete|/chains/.*\\.v0001$|1:before", "delete|/config/|2:after"],
}
SMB_POINTS = {
    "incremental": ["write|\\.v0001$|1:mid", "commit|\\.v0002$|1:before", "commit|\\.pages$|1:after",
                    "write|\\.catalog$|1:mid", "commit|\\.catalog$|1:before", "commit|\\.catalog$|1:after"],
    "job-prune": ["delete|/chains/.*\\.catalog$|2:after", "delete|/chains/.*\\.v0001$|1:before"],
}
# an SMB point costs ~9 s (every check goes over the wire): CI runs four of them
SMB_CI = {"commit|\\.v0002$|1:before", "write|\\.catalog$|1:mid", "commit|\\.catalog$|1:after",
          "delete|/chains/.*\\.v0001$|1:before"}


class Target:
    """Where a point's repository lives: a directory, or a path inside the smbd share."""

    def __init__(self, kind: str, w: FaultWorld, srv: SmbServer | None = None, sub: str = ""):
        self.kind, self.w, self.srv, self.sub = kind, w, srv, sub
        self.name = "local" if kind == "dir" else "nas"

    @property
    def repo_root(self) -> str:
        if self.kind == "dir":
            return self.w.repo_root
        return os.path.join(str(self.srv.share_dir), self.sub, "dmbackup", "mx.test")

    def targets_text(self) -> str:
        if self.kind == "dir":
            return f'[targets.local]\ntype = "dir"\npath = "{self.w.repo_dir}"\n'
        s = self.srv
        return (f'[targets.nas]\ntype = "smb"\nserver = "{s.host}"\nport = {s.port}\nshare = "{s.share}"\n'
                f'path = "{self.sub}"\nusername = "{s.username}"\npassword_file = "{s.password_file}"\n'
                f'timeout = 20\n')


def make_point_world(template: Template, base: str, scenario: str, kind: str, srv=None, sub: str = ""):
    repo_kind, argv = SCENARIOS[scenario]
    w = FaultWorld(base, store=template.store)
    t = Target(kind, w, srv, sub)
    if kind == "dir":
        shutil.rmtree(w.repo_dir)
    copy_tree(template.empty if repo_kind == "empty" else template.chains,
              w.repo_dir if kind == "dir" else os.path.join(str(srv.share_dir), sub))
    w.write_config(PRUNE_JOB.format(t=t.name), targets=t.targets_text())
    r = w.run("init", t.name)                    # enrol the copied repository
    assert r.code == 0, r.err
    earlier = [] if repo_kind == "empty" else template.earlier
    return w, t, [a.format(t=t.name) for a in argv], earlier


def check_after_kill(template: Template, w: FaultWorld, t: Target, scenario: str, earlier: list[dict],
                     point: str, committed: bool = True) -> None:
    """``committed``: the kill came after the new snapshot's catalog was committed (a
    ``job-prune`` point: prune runs only then)."""
    now = mail_snaps(w, "--target", t.name)
    ids = [s["id"] for s in now]
    earlier_ids = [s["id"] for s in earlier]
    new = [s for s in now if s["id"] not in earlier_ids]
    assert len(new) <= 1, (point, ids)
    if scenario == "job-prune" and committed:
        # prune runs after the new chain is committed: that chain is complete
        assert len(new) == 1, (point, ids)
    else:
        # killed before a new snapshot was committed: none is listed, and nothing was pruned
        assert not (scenario == "job-prune" and new), (point, ids)
        assert [i for i in ids if i in earlier_ids] == earlier_ids, (point, ids)
    r = w.run("verify", "--target", t.name, "--read-data")
    assert r.code == 0, (point, r.err)
    # every earlier snapshot still listed restores to exactly its moment
    for s in now:
        if s["id"] == (earlier_ids or [None])[-1] or s in new:
            out = os.path.join(w.tmp, f"restore-{s['id']}")
            r = w.run("restore", "--target", t.name, s["id"], "--to", out)
            assert r.code == 0, (point, r.err)
            want = template.s1 if s in new else template.s0
            assert diff_trees(want, tree(out)) == [], (point, s["id"])
            shutil.rmtree(out)
    # the next backup succeeds and cleans up after the killed run
    r = w.run("backup", "--target", t.name)
    assert r.code == 0, (point, r.err)
    after = mail_snaps(w, "--target", t.name)
    listed = {s["id"] for s in after}
    objs = repo_objects(t.repo_root)
    assert not [o for o in objs if ".tmp-" in o], (point, objs)
    orphans = [o for o in objs if o.startswith("chains/") and os.path.basename(o).split(".")[0] not in listed]
    assert orphans == [], (point, orphans)
    out = os.path.join(w.tmp, "restore-next")
    r = w.run("restore", "--target", t.name, "--to", out)
    assert r.code == 0, (point, r.err)
    assert diff_trees(template.s1, tree(out)) == [], point
    shutil.rmtree(out)


def kill_and_check(template, base, scenario, point, kind, srv=None, sub="", committed=True):
    w, t, argv, earlier = make_point_world(template, base, scenario, kind, srv, sub)
    r = w.killer(*argv, kill=point)
    no_traceback(r)
    assert r.code == -9, f"{point}: the kill point was never reached (exit {r.code})\n{r.err}"
    check_after_kill(template, w, t, scenario, earlier, point, committed)


def _trace(template, base, scenario, kind, srv=None, sub="") -> list[dict]:
    w, t, argv, _ = make_point_world(template, base, scenario, kind, srv, sub)
    path = os.path.join(w.tmp, "trace.jsonl")
    r = w.killer(*argv, trace=path)
    assert r.code == 0, r.err
    with open(path) as f:
        return [json.loads(line) for line in f]


def _sweep_points(template, tmp_path, scenario, kind, srv=None) -> list[tuple[str, bool]]:
    """Every operation of the traced run, before, in the middle of (writes) and after it; and
    whether that comes after the run's first catalog commit (the new snapshot made visible)."""
    events = _trace(template, str(tmp_path / "trace"), scenario, kind, srv, "trace")
    commit = next((e["i"] for e in events if e["op"] == "commit" and re.search(r"\.catalog$", e["name"])), None)
    pts = []
    for e in events:
        for when in (("before", "mid", "after") if e["op"] == "write" else ("before", "after")):
            committed = commit is not None and (e["i"] > commit or (e["i"] == commit and when == "after"))
            pts.append((f"#{e['i']}:{when}", committed))
    return pts


# --- the dir target ------------------------------------------------------------------------------
DIR_CASES = [(sc, p) for sc, ps in POINTS.items() for p in ps]


@pytest.mark.parametrize("scenario,point", DIR_CASES, ids=[f"{s}-{p}" for s, p in DIR_CASES])
def test_killed_backup_on_dir_target(template, tmp_path, scenario, point):
    kill_and_check(template, str(tmp_path / "w"), scenario, point, "dir")


@pytest.mark.skipif(not FULL_SWEEP, reason="the sweep over every operation runs with DMBACKUP_FAULT_SWEEP=full")
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sweep_every_operation_on_dir_target(template, tmp_path, scenario):
    for n, (point, committed) in enumerate(_sweep_points(template, tmp_path, scenario, "dir")):
        kill_and_check(template, str(tmp_path / f"w{n}"), scenario, point, "dir", committed=committed)


def test_trace_covers_the_named_points(template, tmp_path):
    """The sampled points are spread over the whole run: lock, volumes, pages, index, bundle,
    catalog, unlock (guards the sample against a change in the write order)."""
    events = _trace(template, str(tmp_path / "w"), "incremental", "dir")
    names = [(e["op"], e["name"]) for e in events]
    order = []
    for rx in (r"create_exclusive .*locks/lock$", r"commit .*\.v0001$", r"commit .*\.v0002$",
               r"commit .*\.pages$", r"commit .*\.index$", r"commit .*/config/.*\.bundle$",
               r"commit .*\.catalog$", r"delete .*locks/lock$"):
        hits = [i for i, (op, n) in enumerate(names) if re.search(rx, f"{op} {n}")]
        assert hits, (rx, names)
        order.append(hits[0])
    assert order == sorted(order), names


# --- the SMB target (one private smbd for the module; it is never killed) -------------------------
@pytest.fixture(scope="module")
def smb_server():
    srv = SmbServer()
    try:
        yield srv.start()
    finally:
        srv.cleanup()


SMB_CASES = [(sc, p) for sc, ps in SMB_POINTS.items() for p in ps if FULL_SWEEP or p in SMB_CI]


@pytest.mark.parametrize("scenario,point", SMB_CASES, ids=[f"{s}-{p}" for s, p in SMB_CASES])
def test_killed_backup_on_smb_target(template, smb_server, tmp_path, scenario, point):
    sub = f"k{abs(hash((scenario, point))) % 10**8}"
    kill_and_check(template, str(tmp_path / "w"), scenario, point, "smb", smb_server, sub)


@pytest.mark.skipif(not FULL_SWEEP, reason="the sweep over every operation runs with DMBACKUP_FAULT_SWEEP=full")
@pytest.mark.parametrize("scenario", ["incremental", "job-prune"])
def test_sweep_every_operation_on_smb_target(template, smb_server, tmp_path, scenario):
    for n, (point, committed) in enumerate(_sweep_points(template, tmp_path, scenario, "smb", smb_server)):
        kill_and_check(template, str(tmp_path / f"w{n}"), scenario, point, "smb", smb_server, f"s-{scenario}-{n}",
                       committed=committed)


def test_killed_run_leaves_no_orphan_config_bundle(template, tmp_path):
    """The bundle a mail snapshot carries is committed just before its catalog: a run killed
    in between leaves config/<snap>.bundle, and the next run removes it with the rest."""
    w, t, argv, earlier = make_point_world(template, str(tmp_path / "w"), "incremental", "dir")
    r = w.killer(*argv, kill="commit|/config/.*\\.bundle$|1:after")
    assert r.code == -9, r.err
    assert w.run("backup", "--target", "local").code == 0
    listed = {s["id"] for s in mail_snaps(w)}
    bundles = [o for o in repo_objects(t.repo_root) if o.startswith("config/")]
    orphans = [b for b in bundles if os.path.basename(b)[: -len(".bundle")] not in listed
               and not b.endswith("-config.bundle")]
    assert orphans == []
