"""Issue 12's soak: every snapshot taken of a busy live Dovecot store restores and is served right.

A real Dovecot serves a mailbox with big folders (3,000 messages in INBOX and 1,000 in
`.Archivio` for CI, 10,000 and 3,000 in the long run), written straight into `cur/` and
indexed by Dovecot, plus a quiet second mailbox built the usual way (`mailgen.populate`).
While `tests.fixtures.mailload.Load` changes flags at full speed from two IMAP clients,
moves, expunges and appends, runs `doveadm save`/`doveadm move` in a loop and delivers
with `dovecot-lda`, the real CLI (a subprocess, as the timer runs it) takes a series of
backups: a full, incrementals, another full midway, incrementals. IMAP state is captured
just before and just after each backup. Afterwards every snapshot is verified (quick) and
restored into an empty directory that a fresh Dovecot serves, and the test counts, over
all snapshots: base names stored twice in one Maildir folder (new/ and cur/ together),
UIDs whose Message-ID differs from the live server's, messages that existed (same UID)
before and after a backup but are missing from its restore, restore and verify failures,
and backup warnings that are not a message really gone (Dovecot's `.lock`/`.tmp` files
must never be named). It prints one summary line with the figures, then fails with the
data of every check that did not hold, so one run tells the whole story.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass

import pytest

from tests.fixtures.imapstate import capture_state, diff_states
from tests.fixtures.mailgen import populate
from tests.fixtures.mailload import Load, fill_maildir_folder
from tests.world import World

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="Dovecot's vmail uid needs root")

# Read at import: the autouse fixture in tests/conftest.py clears DMBACKUP_* for each test.
SOAK_MODE = os.environ.get("DMBACKUP_SOAK", "")

BUSY = "mario@example.it"
QUIET = "anna@example.it"
USERS = [BUSY, QUIET]
BIG_FOLDERS = ["INBOX", "Archivio"]


@dataclass(frozen=True)
class Plan:
    backups: int
    full_at: frozenset[int]       # backup numbers (from 0) taken with --full
    inbox: int
    archive: int


CI = Plan(backups=10, full_at=frozenset({0, 5}), inbox=3_000, archive=1_000)
LONG = Plan(backups=30, full_at=frozenset({0, 10, 20}), inbox=10_000, archive=3_000)

# A path naming one of Dovecot's transient files: lock files, *.tmp, Maildir tmp/.
_TRANSIENT = re.compile(r"\.lock$|\.tmp$|\.tmp\b|(^|/)tmp/")


def base_name(name: str) -> str:
    return name.split(":", 1)[0]


def _maildir_bases(folder_dir: str) -> set[str]:
    out = set()
    for sub in ("new", "cur"):
        try:
            out |= {base_name(n) for n in os.listdir(os.path.join(folder_dir, sub))}
        except FileNotFoundError:
            pass
    return out


def classify_warnings(warnings: list[str], store: str) -> dict[str, list[str]]:
    """Sort a backup's warnings right after it ran, while the live store still tells:
    'vanished' (a message file no longer in its folder: really expunged or moved away),
    'spurious' (said to have vanished, yet its base name is still in the folder),
    'transient' (names a Dovecot lock/tmp file) and 'other'."""
    out: dict[str, list[str]] = {"vanished": [], "spurious": [], "transient": [], "other": []}
    for w in warnings:
        path = w.rsplit(": ", 1)[1].strip() if ": " in w else ""
        parts = path.split("/")
        if path and _TRANSIENT.search(path):
            out["transient"].append(w)
        elif len(parts) >= 2 and parts[-2] in ("new", "cur"):
            folder = os.path.join(store, *parts[:-2])
            gone = base_name(parts[-1]) not in _maildir_bases(folder)
            out["vanished" if gone else "spurious"].append(w)
        else:
            out["other"].append(w)
    return out


def duplicate_base_names(root: str) -> list[str]:
    """Every (Maildir folder, base name) stored under more than one name, new/ and cur/ together."""
    dups = []
    for dp, dns, _ in os.walk(root):
        if "cur" in dns and "new" in dns:
            seen: dict[str, list[str]] = {}
            for sub in ("new", "cur"):
                for n in sorted(os.listdir(os.path.join(dp, sub))):
                    seen.setdefault(base_name(n), []).append(f"{sub}/{n}")
            rel = os.path.relpath(dp, root)
            dups += [f"{rel}: {' + '.join(names)}" for names in seen.values() if len(names) > 1]
    return dups


def unnumbered_files(root: str) -> list[str]:
    """Message files whose base name their folder's restored dovecot-uidlist does not list.

    Not a failure by itself (mail that arrived during a backup may legitimately be one),
    but a fresh Dovecot gives each the next free UID, which the live server may already have
    given to another message: this figure explains UID -> Message-ID mismatches."""
    out = []
    for dp, dns, _ in os.walk(root):
        if not ("cur" in dns and "new" in dns):
            continue
        try:
            with open(os.path.join(dp, "dovecot-uidlist"), encoding="utf-8", errors="surrogateescape") as f:
                listed = {line.split(" :", 1)[1].strip().split(":", 1)[0] for line in list(f)[1:] if " :" in line}
        except FileNotFoundError:
            listed = set()
        for sub in ("new", "cur"):
            out += [f"{os.path.relpath(dp, root)}/{sub}/{n}" for n in sorted(os.listdir(os.path.join(dp, sub)))
                    if base_name(n) not in listed]
    return out


def transient_files(root: str) -> list[str]:
    """Restored files that are Dovecot's transient ones (locks, *.tmp, anything in tmp/)."""
    out = []
    for dp, _, fns in os.walk(root):
        for n in fns:
            rel = os.path.relpath(os.path.join(dp, n), root)
            if _TRANSIENT.search(rel):
                out.append(rel)
    return out


def compare_snapshot(before: dict, after: dict, restored: dict) -> dict:
    """One snapshot's restore against the live captures around its backup.

    A UID present both before and after the backup existed all through it (UIDs are never
    reused within a UIDVALIDITY), so it must be in the restore with the same Message-ID."""
    res = {"stable": 0, "mismatch": [], "lost": [], "folder": [], "imap_dups": [], "quiet": []}
    for user in USERS:
        fb_all, fa_all = before[user]["folders"], after[user]["folders"]
        fr_all = restored.get(user, {}).get("folders", {})
        seen_live = _where(("before", fb_all), ("after", fa_all))
        seen_restored = _where(("restored", fr_all))
        for folder, fb in fb_all.items():
            fa = fa_all.get(folder)
            if fb.get("noselect") or not fa or fa.get("noselect") or fa["uidvalidity"] != fb["uidvalidity"]:
                continue
            mb = {m[0]: m[1] for m in fb["messages"]}
            ma = {m[0]: m[1] for m in fa["messages"]}
            live = mb | ma
            stable = mb.keys() & ma.keys()
            res["stable"] += len(stable)
            fr = fr_all.get(folder)
            if fr is None or fr.get("noselect") or fr["uidvalidity"] != fb["uidvalidity"]:
                res["folder"].append(f"{user} {folder!r}: restored as {fr and {k: fr.get(k) for k in ('uidvalidity', 'noselect')}}"
                                     f", live UIDVALIDITY {fb['uidvalidity']}")
                res["lost"] += [f"{user} {folder!r} uid {u} {live[u]}" for u in sorted(stable)]
                continue
            got = {m[0]: m[1] for m in fr["messages"]}
            res["mismatch"] += [f"{user} {folder!r} uid {u}: live {live[u]}, restored {mid} "
                                f"(that one live: {seen_live.get(mid, 'never seen')})"
                                for u, mid in sorted(got.items()) if u in live and live[u] != mid]
            res["lost"] += [f"{user} {folder!r} uid {u} {live[u]} (restore has it: "
                            f"{seen_restored.get(live[u], 'nowhere')})" for u in sorted(stable) if u not in got]
            # Dovecot's own view of a duplicate file: one Message-ID under two UIDs.
            live_twice = {mid for mid, n in Counter(mb.values()).items() if n > 1} | \
                         {mid for mid, n in Counter(ma.values()).items() if n > 1}
            res["imap_dups"] += [f"{user} {folder!r}: {mid} under {n} UIDs"
                                 for mid, n in Counter(got.values()).items()
                                 if n > 1 and mid is not None and mid not in live_twice]
        if before[user] == after[user]:
            # Nothing touched this mailbox during the backup: its restore is exact.
            if user not in restored:
                res["quiet"].append(f"{user}: not restored")
            else:
                res["quiet"] += [f"{user}: {d}" for d in diff_states({user: before[user]}, {user: restored[user]})]
    return res


def _where(*phases: tuple[str, dict]) -> dict[str, str]:
    """Message-ID -> where a capture's folders hold it ("before: INBOX uid 553; after: ..."),
    so a failure says what happened to the message (moved, expunged, renumbered)."""
    out: dict[str, list[str]] = {}
    for phase, folders in phases:
        for folder, f in folders.items():
            for m in f.get("messages", []):
                out.setdefault(m[1], []).append(f"{phase} {folder} uid {m[0]}")
    return {mid: "; ".join(v) for mid, v in out.items()}


def _soak(dovecot_factory, tmp_path, plan: Plan) -> None:
    live = dovecot_factory(USERS)
    populate(live, [QUIET], seed=12, n_messages=30, big_messages=0)
    assert fill_maildir_folder(live, BUSY, "INBOX", plan.inbox, seed=12) == plan.inbox
    assert fill_maildir_folder(live, BUSY, "Archivio", plan.archive, seed=12) == plan.archive

    w = World(tmp_path)
    w.store = str(live.vmail_root)
    w.write_config()
    w.ok("init", "local")

    load = Load(live, BUSY, BIG_FOLDERS, seed=12).start()
    backups = []          # dicts: n, full, code, id, warnings(classified), before, after, ops
    failures: dict[str, list[str]] = {k: [] for k in (
        "backup failed", "backup exit 1 not explained by vanished messages", "transient-file warnings",
        "spurious vanished warnings", "other warnings", "no load during backup", "snapshot kinds",
        "verify failed", "restore failed", "duplicate base names", "transient files restored",
        "UID -> Message-ID mismatches", "stable messages lost", "folders not restored",
        "IMAP-visible duplicates", "quiet mailbox changed")}
    try:
        for n in range(plan.backups):
            full = n in plan.full_at
            before = capture_state(live, USERS)
            ops0 = load.snapshot()
            r = w.sub("backup", "--target", "local", "--what", "mail", *(["--full"] if full else []), "--json",
                      timeout=1800)
            ops1 = load.snapshot()
            info = {"n": n, "full": full, "code": r.code, "id": None, "before": before}
            if r.code in (0, 1):
                d = json.loads(r.out)
                info["id"] = d["id"]
                cls = classify_warnings(d.get("warnings", []), w.store)
                info["warnings"] = cls
                for text in d.get("warnings", []):
                    print(f"backup {n} warning: {text}")
                for key, label in (("transient", "transient-file warnings"), ("spurious", "spurious vanished warnings"),
                                   ("other", "other warnings")):
                    failures[label] += [f"backup {n} ({d['id']}): {x}" for x in cls[key]]
                if r.code == 1 and not cls["vanished"]:
                    failures["backup exit 1 not explained by vanished messages"].append(
                        f"backup {n} ({d['id']}) exit 1, warnings {d.get('warnings')}")
            else:
                failures["backup failed"].append(f"backup {n} exit {r.code}: {r.err.strip()[-2000:]}")
            info["after"] = capture_state(live, USERS)
            info["ops"] = {k: ops1.get(k, 0) - ops0.get(k, 0) for k in ops1}
            if info["ops"].get("imap-store", 0) == 0:
                failures["no load during backup"].append(f"backup {n}: {info['ops']}")
            print(f"backup {n} {'full' if full else 'incr'} exit {r.code} {info['id']}: "
                  f"ops during it {info['ops']}")
            backups.append(info)
    finally:
        load.stop()
    ops = load.snapshot()

    rows = {r["id"]: r for r in json.loads(w.ok("snapshots", "--json").out) if r["kind"] != "config"}
    for b in backups:
        if b["id"] is None:
            continue
        want = "full" if b["full"] else "incremental"
        got = rows.get(b["id"], {}).get("kind")
        if got != want:
            failures["snapshot kinds"].append(f"backup {b['n']} {b['id']}: {got}, wanted {want}")

    totals = Counter()
    for b in backups:
        snap = b["id"]
        if snap is None:
            continue
        v = w.run("verify", "--target", "local", snap)
        if v.code != 0:
            failures["verify failed"].append(f"{snap}: exit {v.code}: {(v.err or v.out).strip()[-2000:]}")
        out = dovecot_factory.tmpdir(f"soak{b['n']}-")
        try:
            rr = w.run("restore", "--target", "local", snap, "--to", str(out))
        except Exception as exc:          # a traceback is a restore failure too; keep counting
            rr = None
            failures["restore failed"].append(f"{snap}: {exc!r}")
        if rr is not None and rr.code != 0:
            failures["restore failed"].append(f"{snap}: exit {rr.code}: {rr.err.strip()[-2000:]}")
        if rr is None or rr.code != 0:
            shutil.rmtree(out, ignore_errors=True)
            continue
        dups = duplicate_base_names(str(out))
        failures["duplicate base names"] += [f"{snap}: {x}" for x in dups]
        failures["transient files restored"] += [f"{snap}: {x}" for x in transient_files(str(out))]
        unnumbered = unnumbered_files(str(out))
        totals["unnumbered"] += len(unnumbered)
        fresh = dovecot_factory(USERS, vmail_root=out)
        try:
            restored = capture_state(fresh, USERS)
        finally:
            fresh.close()
        shutil.rmtree(out, ignore_errors=True)
        c = compare_snapshot(b["before"], b["after"], restored)
        totals["snapshots"] += 1
        totals["stable"] += c["stable"]
        totals["duplicates"] += len(dups)
        for key, label in (("mismatch", "UID -> Message-ID mismatches"), ("lost", "stable messages lost"),
                           ("folder", "folders not restored"), ("imap_dups", "IMAP-visible duplicates"),
                           ("quiet", "quiet mailbox changed")):
            totals[key] += len(c[key])
            failures[label] += [f"{snap}: {x}" for x in c[key]]
        print(f"snapshot {snap} ({'full' if b['full'] else 'incr'}): stable {c['stable']}, "
              f"mismatches {len(c['mismatch'])}, lost {len(c['lost'])}, duplicates {len(dups)}, "
              f"files not in their dovecot-uidlist {len(unnumbered)} {unnumbered[:3]}")

    warn_counts = Counter()
    for b in backups:
        for k, v in (b.get("warnings") or {}).items():
            warn_counts[k] += len(v)
    print(f"SOAK SUMMARY: snapshots {totals['snapshots']}/{plan.backups} restored "
          f"({len(plan.full_at)} full), folders {plan.inbox}+{plan.archive} messages; "
          f"stable messages checked {totals['stable']}; mismatches {totals['mismatch']}; "
          f"lost {totals['lost']}; duplicates {totals['duplicates']} "
          f"(IMAP-visible {totals['imap_dups']}); restored files not in their dovecot-uidlist "
          f"{totals['unnumbered']}; restore failures {len(failures['restore failed'])}; "
          f"verify failures {len(failures['verify failed'])}; backups exit 1: "
          f"{sum(1 for b in backups if b['code'] == 1)}, exit other: {len(failures['backup failed'])}; "
          f"warnings {dict(warn_counts)}; mutator ops {dict(sorted(ops.items()))} "
          f"(total {sum(ops.values())}, errors {load.error_count})")
    for e in load.errors[:5]:
        print(f"mutator error: {e}")

    # The soak proves something only if the store was really busy and every restore was checked.
    for kind in ("imap-store", "imap-move", "imap-expunge", "imap-append", "doveadm-save", "doveadm-move", "lda"):
        assert ops.get(kind, 0) > 0, f"the {kind} mutator never succeeded: {ops}, errors {load.errors}"
    bad = {k: v for k, v in failures.items() if v}
    report = "\n".join(f"{k} ({len(v)}):\n  " + "\n  ".join(v[:15]) + (f"\n  ... {len(v) - 15} more" if len(v) > 15 else "")
                       for k, v in bad.items())
    assert not bad, report
    assert totals["snapshots"] == plan.backups
    assert totals["stable"] >= plan.backups * (plan.inbox + plan.archive) // 2


def test_every_snapshot_of_a_busy_store_restores(dovecot_factory, tmp_path):
    """CI size: 10 backups (2 full) of 3,000 + 1,000 messages under load; a few minutes."""
    _soak(dovecot_factory, tmp_path, CI)


@pytest.mark.skipif(SOAK_MODE != "long",
                    reason="long soak (30 backups, 10,000-message INBOX) runs only with DMBACKUP_SOAK=long")
def test_every_snapshot_of_a_busy_store_restores_long(dovecot_factory, tmp_path):
    _soak(dovecot_factory, tmp_path, LONG)
