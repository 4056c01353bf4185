"""A seeded "day of mail" applied to a corpus made by ``bench/corpus.py``.

What one day does, as fractions of the messages present before it:

- +1% new messages: 85% delivered to INBOX ``new/`` (no ``:2,`` suffix, as an LDA leaves
  them), 10% saved by the user in ``.Sent/cur/`` with ``:2,S``, 5% filed to ``.Junk/new/``;
- 5% flag changes, i.e. renames inside the folder: ``:2,S`` -> ``:2,RS``, ``:2,`` ->
  ``:2,S``, F toggled, a keyword letter added; a message still in ``new/`` is moved to
  ``cur/`` and gets its ``:2,<flags>`` suffix (what Dovecot does when a client SELECTs);
- 0.5% expunges (the file is unlinked and its ``dovecot-uidlist`` line dropped);
- 0.5% moves to another folder of the same user (INBOX -> ``.Archivio.2024`` or
  ``.Trash``, anything else -> ``.Trash``). The destination file gets a NEW base name
  (``<move time>.M<usec>P<pid>.<host>,S=,W=``) and a new UID, with byte-identical
  content and the original mtime (INTERNALDATE): that is how Dovecot's IMAP MOVE behaves
  when it copies the file instead of hard-linking it. Content-addressed tools must store
  nothing for these; a name-based tool stores them again.

Control files of every touched folder are rewritten the way Dovecot rewrites them (a temp
name, then rename(); never in place, so a hard-linked copy of the corpus is never changed
behind its back): ``dovecot-uidlist`` (new lines, dropped lines, new ``N`` next-UID),
``dovecot.index`` (rebuilt), ``dovecot.index.log`` and ``dovecot.index.cache`` (grown), and
each touched user's ``dovecot.list.index.log``.

Deterministic: the choice depends only on the seed, the day number and the tree itself
(the day's clock is the newest delivery time found in the file names plus up to 24 h).
``mutate()`` returns what it did, with the relative paths involved, so tests and the
benchmark can check it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass, field

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench import corpus  # noqa: E402
else:
    from . import corpus


@dataclass
class Folder:
    path: str                 # absolute folder directory (holds cur/ new/ tmp/)
    maildir: str              # the user's Maildir root
    imap: str                 # "INBOX", "Sent", "Archivio.2024", ...
    owner: str                # user@domain
    files: list[tuple[str, str]] = field(default_factory=list)   # (sub, name), sorted


def base_of(name: str) -> str:
    return name.split(":", 1)[0]


def time_of(name: str) -> int:
    head = name.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def scan(root: str) -> list[Folder]:
    folders: list[Folder] = []
    for domain in sorted(os.listdir(root)):
        ddir = os.path.join(root, domain)
        if not os.path.isdir(ddir):
            continue
        for user in sorted(os.listdir(ddir)):
            mdir = os.path.join(ddir, user, "Maildir")
            if not os.path.isdir(mdir):
                continue
            names = [("", "INBOX")] + [(n, n[1:]) for n in sorted(os.listdir(mdir))
                                       if n.startswith(".") and os.path.isdir(os.path.join(mdir, n, "cur"))]
            for dname, imap in names:
                fdir = os.path.join(mdir, dname) if dname else mdir
                f = Folder(fdir, mdir, imap, f"{user}@{domain}")
                for sub in ("new", "cur"):
                    f.files += [(sub, n) for n in sorted(os.listdir(os.path.join(fdir, sub)))]
                folders.append(f)
    return folders


class FolderState:
    """A folder's ``dovecot-uidlist``, loaded on first touch and written back at the end."""

    def __init__(self, folder: Folder):
        self.folder = folder
        path = os.path.join(folder.path, "dovecot-uidlist")
        with open(path, "rb") as fh:
            self.header, entries = corpus.parse_uidlist(fh.read())
        self.entries: dict[str, int] = {base: uid for uid, base in entries}
        self.next_uid = int(self.header.get("N", "1"))

    def add(self, base: str) -> int:
        uid = self.next_uid
        self.entries[base] = uid
        self.next_uid += 1
        return uid

    def drop(self, base: str) -> None:
        self.entries.pop(base, None)


def _new_flags(rng: random.Random, flags: str) -> str:
    if "S" not in flags:
        out = flags + "S"
    elif "R" not in flags and rng.random() < 0.6:
        out = flags + "R"
    elif rng.random() < 0.5:
        out = flags.replace("F", "") if "F" in flags else flags + "F"
    else:
        out = flags.replace("a", "") if "a" in flags else flags + "a"   # $Forwarded
    return corpus.flags_sorted(out)


def mutate(root: str, seed: int = 1, day: int = 1, *, new_rate: float = 0.01,
           flag_rate: float = 0.05, expunge_rate: float = 0.005, move_rate: float = 0.005,
           host: str = "mx1.example.it") -> dict:
    root = os.path.abspath(root)
    folders = scan(root)
    if not folders:
        raise SystemExit(f"mutate: no Maildir found under {root}")
    everything = [(fi, sub, name) for fi, f in enumerate(folders) for sub, name in f.files]
    n = len(everything)
    tmax = max(time_of(name) for _, _, name in everything) if everything else corpus.EPOCH_NOW
    rng = random.Random(f"mutate:{seed}:{day}:{tmax}")
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731

    states: dict[int, FolderState] = {}

    def state(fi: int) -> FolderState:
        if fi not in states:
            states[fi] = FolderState(folders[fi])
        return states[fi]

    by_user: dict[str, dict[str, int]] = {}
    for fi, f in enumerate(folders):
        by_user.setdefault(f.maildir, {})[f.imap] = fi

    k_flag, k_exp, k_move = round(n * flag_rate), round(n * expunge_rate), round(n * move_rate)
    picked = rng.sample(range(n), min(n, k_flag + k_exp + k_move))
    flag_idx, exp_idx, move_idx = (picked[:k_flag], picked[k_flag:k_flag + k_exp],
                                   picked[k_flag + k_exp:])
    report: dict = {"root": root, "seed": seed, "day": day, "messages_before": n,
                    "added": [], "added_bytes": 0, "renamed": [], "new_to_cur": 0,
                    "expunged": [], "expunged_bytes": 0, "moved": [], "moved_bytes": 0,
                    "rewritten": []}

    keyword_folders: set[int] = set()
    for i in sorted(flag_idx):
        fi, sub, name = everything[i]
        f = folders[fi]
        old = os.path.join(f.path, sub, name)
        base = base_of(name)
        if sub == "new":
            new = os.path.join(f.path, "cur", base + ":2," + ("S" if rng.random() < 0.7 else ""))
            report["new_to_cur"] += 1
        else:
            flags = name.split(":2,", 1)[1] if ":2," in name else ""
            new_flags = _new_flags(rng, flags)
            if "a" in new_flags:
                keyword_folders.add(fi)   # the letter needs this folder's dovecot-keywords
            new = os.path.join(f.path, "cur", base + ":2," + new_flags)
        os.rename(old, new)
        report["renamed"].append((rel(old), rel(new)))
        state(fi)   # Dovecot syncs the folder: its uidlist is rewritten with latest names

    for i in sorted(exp_idx):
        fi, sub, name = everything[i]
        path = os.path.join(folders[fi].path, sub, name)
        report["expunged_bytes"] += os.path.getsize(path)
        os.unlink(path)
        state(fi).drop(base_of(name))
        report["expunged"].append(rel(path))

    move_t = tmax + 1
    for i in sorted(move_idx):
        fi, sub, name = everything[i]
        f = folders[fi]
        siblings = by_user[f.maildir]
        if f.imap == "INBOX":
            choices = [x for x in ("Archivio.2024", "Trash") if x in siblings]
        else:
            choices = [x for x in ("Trash", "INBOX") if x in siblings and x != f.imap]
        if not choices:
            continue
        di = siblings[rng.choice(choices)]
        src = os.path.join(f.path, sub, name)
        st = os.stat(src)
        with open(src, "rb") as fh:
            data = fh.read()
        base = base_of(name)
        extra = base[base.index(","):] if "," in base else ""
        move_t += rng.randint(1, 40)
        flags = name.split(":2,", 1)[1] if ":2," in name else ""
        new_base = f"{move_t}.M{rng.randint(0, 999999)}P{rng.randint(1000, 40000)}.{host}{extra}"
        dst = os.path.join(folders[di].path, "cur", new_base + ":2," + corpus.flags_sorted(flags + "S"))
        corpus.write_file(dst, data, mtime=int(st.st_mtime))
        os.unlink(src)
        state(fi).drop(base)
        state(di).add(new_base)
        report["moved"].append((rel(src), rel(dst)))
        report["moved_bytes"] += len(data)

    # New mail: users in proportion to their mailbox size (pick a random existing message).
    k_new = round(n * new_rate)
    pl = corpus.pools(seed)
    p = corpus.Params(seed=seed, host=host)
    factories: dict[str, corpus.MessageFactory] = {}
    times = sorted(tmax + rng.randint(1, 86_400) for _ in range(k_new))
    for t in times:
        fi0 = everything[rng.randrange(n)][0] if n else 0
        siblings = by_user[folders[fi0].maildir]
        r = rng.random()
        if r < 0.85 or ("Sent" not in siblings and "Junk" not in siblings):
            target, sub, outgoing = "INBOX", "new", False
        elif r < 0.95 and "Sent" in siblings:
            target, sub, outgoing = "Sent", "cur", True
        else:
            target, sub, outgoing = ("Junk" if "Junk" in siblings else "INBOX"), "new", False
        di = siblings[target]
        f = folders[di]
        fac = factories.get(f.maildir)
        if fac is None:
            user = f.owner.split("@")[0]
            name = " ".join(x.capitalize() for x in user.split(".") if x)
            fac = factories[f.maildir] = corpus.MessageFactory(p, pl, rng, f.owner, name or user)
        data = fac.message(t, outgoing, rng.random() < p.attach_rate)
        vsize = len(data) + data.count(b"\n")
        base = corpus.base_name(t, rng.randint(0, 999999), rng.randint(1000, 40000), host, len(data), vsize)
        path = os.path.join(f.path, sub, base + (":2,S" if sub == "cur" else ""))
        corpus.write_file(path, data, mtime=t)
        state(di).add(base)
        report["added"].append(rel(path))
        report["added_bytes"] += len(data)

    # Control files, as Dovecot rewrites them after syncing each touched folder.
    day_end = (times[-1] if times else tmax) + 60
    touched_users = set()
    for fi in sorted(states):
        stt, f = states[fi], folders[fi]
        touched_users.add(f.maildir)
        entries = sorted(((uid, b) for b, uid in stt.entries.items()))
        hdr = stt.header
        data = corpus.uidlist_bytes(int(hdr.get("V", "1")), stt.next_uid, hdr.get("G", "0" * 32), entries)
        _replace(os.path.join(f.path, "dovecot-uidlist"), data, day_end, report, rel)
        uids = [u for u, _ in entries]
        _replace(os.path.join(f.path, "dovecot.index"), corpus.index_file(rng, uids, "index"),
                 day_end, report, rel)
        for name, grow in (("dovecot.index.log", rng.randbytes(rng.randint(200, 4_000))),
                           ("dovecot.index.cache", corpus.index_file(rng, uids[-20:], "cache")[256:])):
            path = os.path.join(f.path, name)
            old = open(path, "rb").read() if os.path.exists(path) else b""
            _replace(path, old + grow, day_end, report, rel)
        if fi in keyword_folders and not os.path.exists(os.path.join(f.path, "dovecot-keywords")):
            _replace(os.path.join(f.path, "dovecot-keywords"),
                     "".join(f"{i} {k}\n" for i, k in enumerate(corpus.KEYWORDS)).encode(),
                     day_end, report, rel)
    for mdir in sorted(touched_users):
        path = os.path.join(mdir, "dovecot.list.index.log")
        old = open(path, "rb").read() if os.path.exists(path) else b""
        _replace(path, old + rng.randbytes(rng.randint(100, 1_000)), day_end, report, rel)
    report["folders_touched"] = len(states)
    report["users_touched"] = len(touched_users)
    return report


def _replace(path: str, data: bytes, mtime: int, report: dict, rel) -> None:
    corpus.replace_file(path, data)
    os.utime(path, (mtime, mtime))
    report["rewritten"].append(rel(path))


def summary(report: dict) -> dict:
    """The report without the per-file lists: counts and bytes only."""
    out = {}
    for k, v in report.items():
        out[k] = len(v) if isinstance(v, list) else v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Apply one seeded day of mail to a bench corpus.")
    ap.add_argument("root")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--day", type=int, default=1, help="day number (changes the choices)")
    ap.add_argument("--list", action="store_true", help="print every path changed, not only counts")
    a = ap.parse_args(argv)
    rep = mutate(a.root, seed=a.seed, day=a.day)
    json.dump(rep if a.list else summary(rep), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
