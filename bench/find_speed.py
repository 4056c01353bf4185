"""How fast ``dmbackup find`` is over a 30-snapshot chain (issue 15: at most 2 s).

Builds a bench corpus (bench/corpus.py), backs it up once in full and then once a night
for 29 seeded days of mail (bench/mutate.py: deliveries, flag changes, expunges, moves),
checks with ``dmbackup reindex`` that every snapshot already has its header index (backups write it), and
times ``dmbackup find`` as an administrator runs it (a new process each time, key unlocked
at the production scrypt cost) for a few typical searches. Also reports what the header
indexes cost: their size next to what the snapshots stored.

    python3 -m bench.find_speed [--messages 20000] [--snapshots 30] [--preset small|default]
                                [--dir DIR] [--runs 3] [--keep] [--json OUT] [--restic]

Timing tests belong here, not in tests/: the machine is shared and its load varies.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench import corpus, dmconfig, mutate  # noqa: E402

PASSPHRASE = "bench find speed passphrase"


def sh(argv, env, what: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    if check and p.returncode not in (0, 1):
        raise SystemExit(f"{what} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=os.path.join(HERE, "work", "find-speed"))
    ap.add_argument("--preset", choices=sorted(corpus.PRESETS), default="small")
    ap.add_argument("--messages", type=int, default=20000, help="messages in the corpus (0: the preset's size)")
    ap.add_argument("--attach-rate", type=float, default=0.01)
    ap.add_argument("--snapshots", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3, help="runs of each search (the median is reported)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the corpus and repository")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--restic", action="store_true", help="also back every day up with restic and time "
                    "`restic find FILENAME` over the same snapshots (needs restic: bench/install-peers.sh)")
    a = ap.parse_args(argv)
    from bench.bytecode import compile_package

    compile_package(ROOT)

    work = os.path.abspath(a.dir)
    if os.path.exists(work):
        shutil.rmtree(work)
    store, target, state = (os.path.join(work, d) for d in ("vmail", "target", "state"))
    os.makedirs(target)
    cfg = dmconfig.write_config(os.path.join(work, "dmbackup.toml"), store=store, target=target, state=state,
                                etc=os.path.join(work, "etc"))
    env = dict(os.environ, DMBACKUP_PASSPHRASE=PASSPHRASE, PYTHONPATH=ROOT)
    exe = [sys.executable, "-m", "dmbackup", "--config", cfg, "--quiet"]
    out: dict = {"snapshots": a.snapshots}

    over = {"seed": a.seed, "attach_rate": a.attach_rate}
    if a.messages:
        over["messages"] = a.messages
    t = time.perf_counter()
    info = corpus.generate(store, corpus.params_for(a.preset, **over))
    out["corpus"] = {"files": info.get("files"), "messages": info.get("messages"), "bytes": info.get("bytes"),
                     "seconds": round(time.perf_counter() - t, 1)}
    print(f"corpus: {out['corpus']}", flush=True)

    sh(exe + ["init", "bench"], env, "init")
    rrepo = os.path.join(work, "restic")
    renv = dict(os.environ, RESTIC_PASSWORD=PASSPHRASE, RESTIC_REPOSITORY=rrepo, RESTIC_CACHE_DIR=os.path.join(work, "rcache"))
    restic_times = []

    def restic_backup() -> None:
        if a.restic:
            t0 = time.perf_counter()
            sh(["restic", "backup", "--quiet", store], renv, "restic backup")
            restic_times.append(time.perf_counter() - t0)

    if a.restic:
        sh(["restic", "init", "--quiet"], renv, "restic init")
    t = time.perf_counter()
    sh(exe + ["backup", "--target", "bench", "--full"], env, "full backup")
    out["full_backup_seconds"] = round(time.perf_counter() - t, 1)
    restic_backup()
    inc_times = []
    for day in range(1, a.snapshots):
        mutate.mutate(store, seed=a.seed, day=day)
        t = time.perf_counter()
        sh(exe + ["backup", "--target", "bench"], env, f"backup day {day}")
        inc_times.append(time.perf_counter() - t)
        restic_backup()
        print(f"  day {day}: incremental in {inc_times[-1]:.1f} s", flush=True)
    out["incremental_seconds_median"] = round(statistics.median(inc_times), 2) if inc_times else None
    snaps = json.loads(sh(exe + ["snapshots", "--target", "bench", "--json"], env, "snapshots").stdout)
    mail = [s for s in snaps if s["kind"] != "config"]
    out["chains"] = len({s["chain"] for s in mail})

    t = time.perf_counter()
    r = json.loads(sh(exe + ["reindex", "--target", "bench", "--json"], env, "reindex").stdout)
    out["reindex_seconds"] = round(time.perf_counter() - t, 1)
    out["indexed_messages"] = sum(i["records"] for i in r["indexed"])
    hidx = sorted(glob.glob(os.path.join(target, "dmbackup", "bench", "chains", "*", "*.hidx")))
    sizes = {os.path.basename(p).split(".")[0]: os.path.getsize(p) for p in hidx}
    full = mail[0]
    out["hidx_bytes_full"] = sizes.get(full["id"], 0)
    out["hidx_share_of_full_stored"] = round(sizes.get(full["id"], 0) / max(1, full["stored_bytes"]), 4)
    inc_share = [sizes.get(s["id"], 0) / max(1, s["stored_bytes"]) for s in mail[1:]]
    out["hidx_share_of_incremental_stored_median"] = round(statistics.median(inc_share), 4) if inc_share else None
    out["hidx_share_of_incremental_stored_max"] = round(max(inc_share), 4) if inc_share else None

    # a Message-ID that exists, from a message still in the store
    from dmbackup.archive.headerparse import extract

    mid = fname = None
    for dp, _, fns in os.walk(store):
        if os.path.basename(dp) == "cur" and fns:
            with open(os.path.join(dp, sorted(fns)[0]), "rb") as f:
                h = extract(f.read(65536))
            if h and h.message_id:
                mid, fname = h.message_id, sorted(fns)[0]
                break
    searches = {
        "from": ["--from", "rossi"],
        "subject": ["--subject", "fattura"],
        "message-id": ["--message-id", mid or "nothing"],
        "date range": ["--since", "2025-10-01", "--before", "2025-10-02"],
        "mailbox + subject": ["--mailbox", info["mailboxes"][0], "--subject", "riunione"],
    }
    out["find"] = {}
    for name, args in searches.items():
        times, cpus, count = [], [], None
        for _ in range(a.runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            p = sh(exe + ["find", "--target", "bench", "--json", *args], env, f"find {name}")
            times.append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            # CPU (user + system, with the forked child): steadier than wall time on a shared machine
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            count = json.loads(p.stdout)["count"]
        out["find"][name] = {"seconds_median": round(statistics.median(times), 3),
                             "seconds_min": round(min(times), 3), "cpu_seconds_median": round(statistics.median(cpus), 3),
                             "matches": count}
        print(f"find {name:<18} {statistics.median(times):6.2f} s, {statistics.median(cpus):6.2f} s CPU  "
              f"({count} matches)", flush=True)
    if a.restic and fname:
        # restic can only look for a file name: the same message, by the name of its file
        base = fname.split(":", 1)[0]
        times = []
        for _ in range(a.runs):
            t = time.perf_counter()
            sh(["restic", "find", "--json", f"{base}*"], renv, "restic find")
            times.append(time.perf_counter() - t)
        out["restic_find_filename_seconds_median"] = round(statistics.median(times), 3)
        out["restic_backup_seconds_total"] = round(sum(restic_times), 1)
        print(f"restic find {base}*  {statistics.median(times):6.2f} s", flush=True)
    # the process start and key unlock alone, for comparison
    times = []
    for _ in range(a.runs):
        t = time.perf_counter()
        sh(exe + ["ls", "--target", "bench", mail[0]["id"], "no/such/dir"], env, "ls", check=False)
        times.append(time.perf_counter() - t)
    out["cli_start_and_unlock_seconds"] = round(statistics.median(times), 3)

    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
