"""Several appliances on one NAS share: each in dmbackup/<hostname>/, blind to the others."""

from __future__ import annotations

import json
import os

from tests.targets.test_smb_e2e import smb_world
from tests.world import diff_trees, tree


def _as_host(w, hostname: str) -> None:
    with open(w.config) as f:
        text = f.read().replace('hostname = "mx.test"', f'hostname = "{hostname}"')
    with open(w.config, "w") as f:
        f.write(text)


def test_two_appliances_on_one_share_do_not_see_or_lock_each_other(smbd, tmp_path):
    a = smb_world(tmp_path / "a", smbd)
    b = smb_world(tmp_path / "b", smbd)
    _as_host(a, "mx1.example.it")
    _as_host(b, "mx2.example.it")
    with open(os.path.join(b.store, "example.it", "only-on-mx2.txt"), "w") as f:
        f.write("mx2\n")
    made = {}
    for w in (a, b):
        assert w.sub("init", "nas").code == 0
        r = w.sub("backup", "--target", "nas", "--json")
        assert r.code == 0, r.err
        made[w] = {json.loads(r.out)["id"]}
    root = smbd.share_dir / "backups" / "appliances" / "dmbackup"
    assert sorted(os.listdir(root)) == ["mx1.example.it", "mx2.example.it"]
    # mx1 holds its lock (as a live run would): mx2 is not blocked by it
    lock = root / "mx1.example.it" / "locks" / "lock"
    lock.parent.mkdir(exist_ok=True)
    lock.write_text(json.dumps({"host": "other-machine", "pid": 1, "boot_id": "x", "time": "now"}))
    r = b.sub("backup", "--target", "nas", "--json")
    assert r.code == 0, r.err
    made[b].add(json.loads(r.out)["id"])
    assert a.sub("backup", "--target", "nas").code == 5          # mx1's own lock does block mx1
    lock.unlink()
    # each lists only its own snapshots (ids are times: two hosts may share one) and restores
    # only its own tree
    for w in (a, b):
        rows = json.loads(w.sub("snapshots", "--target", "nas", "--json").out)
        assert {s["id"] for s in rows if s["kind"] != "config"} == made[w]
    for w in (a, b):
        out = os.path.join(w.tmp, "restored")
        assert w.sub("restore", "--target", "nas", "--to", out).code == 0
        assert diff_trees(tree(w.store), tree(out)) == []
    assert not os.path.exists(os.path.join(a.tmp, "restored", "example.it", "only-on-mx2.txt"))


def test_prune_over_smb_deletes_whole_chains_and_their_directories(smbd, tmp_path):
    w = smb_world(tmp_path, smbd)
    assert w.sub("init", "nas").code == 0
    for args in (["--full"], [], ["--full"], []):
        assert w.sub("backup", "--target", "nas", *args).code == 0
    chains_dir = smbd.share_dir / "backups" / "appliances" / "dmbackup" / "mx.test" / "chains"
    before = sorted(os.listdir(chains_dir))
    assert len(before) == 2
    r = w.sub("prune", "--target", "nas", "--keep-chains", "1", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["deleted"] == [before[0]]
    assert sorted(os.listdir(chains_dir)) == [before[1]]       # the directory went too
    assert w.sub("verify", "--target", "nas", "--read-data").code == 0
    r = w.sub("prune", "--target", "nas", "--keep-chains", "1", "--json")
    assert json.loads(r.out)["deleted"] == []
    out = os.path.join(w.tmp, "restored")
    assert w.sub("restore", "--target", "nas", "--to", out).code == 0
    assert diff_trees(tree(w.store), tree(out)) == []
