"""Start-up time of the commands an administrator types (issue 17): ``--help``, ``status``,
``snapshots`` of a local encrypted repository, each a fresh process, next to the bare
interpreter (``python -c pass``) and the key derivation alone (scrypt at the repository's
cost: never weakened, so reported apart).

    python3 -m bench.startup [--runs 11] [--snapshots 10] [--json OUT]

It builds a small sample store (dmbackup.quickstart.sample), an encrypted dir repository and
``--snapshots`` backups in a temporary directory, then runs the commands alternately
(medians and minima). The interpreter is started directly (``sys.executable``), not through a
shell shim such as pyenv's, which adds its own 50 ms. Timing belongs here, not in tests/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GOALS = {"help": 0.15, "status": 0.15, "snapshots": 0.15}     # snapshots and status: + the key derivation


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--snapshots", type=int, default=10)
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    from bench.bytecode import compile_package

    compile_package(ROOT)
    from dmbackup.archive import crypto
    from dmbackup.quickstart import sample

    sys.path.insert(0, ROOT)
    from bench import dmconfig

    with tempfile.TemporaryDirectory(prefix="dmb-startup-") as work:
        store, target, state = (os.path.join(work, d) for d in ("vmail", "target", "state"))
        os.makedirs(target)
        sample.generate(store)
        cfg = dmconfig.write_config(os.path.join(work, "dmbackup.toml"), store=store, target=target, state=state,
                                    target_name="t")
        env = dict(os.environ, DMBACKUP_PASSPHRASE="bench start-up passphrase", DMBACKUP_CONFIG=cfg)
        dm = [sys.executable, "-m", "dmbackup"]
        subprocess.run(dm + ["init", "t"], env=env, cwd=ROOT, check=True, capture_output=True)
        for _ in range(a.snapshots):
            subprocess.run(dm + ["backup", "--target", "t"], env=env, cwd=ROOT, check=True, capture_output=True)
        cmds = {"python -c pass": [sys.executable, "-c", "pass"], "help": dm + ["--help"],
                "status": dm + ["status"], "snapshots": dm + ["snapshots", "--target", "t"]}
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(a.runs):
            for name, cmd in cmds.items():
                t = time.perf_counter()
                p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True)
                times[name].append(time.perf_counter() - t)
                if p.returncode not in (0, 1):
                    raise SystemExit(f"{name} failed (exit {p.returncode}): {p.stderr.decode()[-500:]}")
        kdf = []
        for _ in range(5):
            t = time.perf_counter()
            crypto.derive_kek(b"x", b"0" * 16, crypto.SCRYPT_N, crypto.SCRYPT_R, crypto.SCRYPT_P)
            kdf.append(time.perf_counter() - t)
    out = {"runs": a.runs, "snapshots": a.snapshots, "load_average": os.getloadavg()[0],
           "key_derivation_seconds": round(statistics.median(kdf), 3), "commands": {}}
    for name, v in times.items():
        med = statistics.median(v)
        row = {"seconds_median": round(med, 3), "seconds_min": round(min(v), 3)}
        if name in GOALS:
            allowed = GOALS[name] + (out["key_derivation_seconds"] if name != "help" else 0)
            row["goal_seconds"] = round(allowed, 3)
            row["met"] = med <= allowed
        out["commands"][name] = row
        print(f"{name:<15} median {med:.3f} s  min {min(v):.3f} s" +
              (f"  goal {row['goal_seconds']:.3f} s: {'met' if row['met'] else 'missed'}" if "met" in row else ""))
    print(f"key derivation (scrypt) {out['key_derivation_seconds']:.3f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
