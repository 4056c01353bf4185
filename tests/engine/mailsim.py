"""A small, realistic Maildir store and "days" of changes, done directly on the file system.

Message sizes are log-normal around 6 KB of mail-like text; some messages carry a base64
attachment (half of them random, i.e. incompressible). A day brings new mail, flag renames
(``:2,S`` -> ``:2,RS``), new/ -> cur/ moves, moves between folders (with a new base name, as
Dovecot does without hardlinks), expunges, and rewritten index/uidlist files. Layout, names
and control files come from dmbackup.quickstart.maildir_gen (shared with the sample store and
the benchmark corpus); what is here is the message sizes and the live changes.
"""

from __future__ import annotations

import base64
import os
import random
from dataclasses import dataclass, field

from dmbackup.quickstart import maildir_gen as mg

WORDS = ("the of and to in is you that it he was for on are as with his they at be this from have or "
         "by one had not but what all were when we there can an your which their said if do will each "
         "meeting invoice report mailbox backup server order delivery price thanks regards").split()
FOLDERS = ["INBOX", "Sent", "Archivio/2024", "Posta inviàta"]     # IMAP names


@dataclass
class Sim:
    root: str
    rng: random.Random
    counter: int = 0
    t: int = 1795000000
    users: list[str] = field(default_factory=list)

    def mailbox_dir(self, user: str) -> str:
        return mg.mailbox_dir(self.root, user)

    def message(self) -> bytes:
        self.counter += 1
        size = int(min(max(self.rng.lognormvariate(8.7, 0.7), 800), 60000))
        words = []
        n = 0
        while n < size:
            w = self.rng.choice(WORDS)
            words.append(w)
            n += len(w) + 1
        body = " ".join(words)
        msg = (f"From: a{self.counter}@example.net\nTo: b@example.it\nSubject: s{self.counter}\n"
               f"Message-ID: <{self.counter}.{self.rng.getrandbits(40)}@example.net>\n\n{body}\n").encode()
        if self.rng.random() < 0.05:
            blob = self.rng.randbytes(self.rng.randint(30_000, 200_000))
            if self.rng.random() < 0.5:
                blob = (b"attachment line " * (len(blob) // 16 + 1))[: len(blob)]
            msg += b"\n--att\n" + base64.encodebytes(blob)
        return msg

    def deliver(self, folder_dir: str, sub: str = "new") -> tuple[str, int]:
        data = self.message()
        self.t += 1
        base = mg.message_base(self.t, self.rng.randint(0, 999999), self.counter, "mx", len(data))
        flags = "" if sub == "new" else self.rng.choice(["", "S", "RS", "FS"])
        p = mg.write_message(folder_dir, sub, base, data, flags=flags, mtime=self.t, mode=0o666)
        return p, len(data)

    def folders(self, user: str) -> list[str]:
        md = self.mailbox_dir(user)
        return [mg.folder_path(md, f) for f in FOLDERS]

    def messages(self, sub: str | None = None) -> list[str]:
        out = []
        for u in self.users:
            for fd in self.folders(u):
                for s in ((sub,) if sub else ("new", "cur")):
                    d = os.path.join(fd, s)
                    out += [os.path.join(d, n) for n in sorted(os.listdir(d))]
        return out

    def rewrite_indexes(self) -> None:
        for u in self.users:
            for fd in self.folders(u):
                mg.write_file(os.path.join(fd, "dovecot.index.log"), self.rng.randbytes(1024), mode=0o666)
                names = sorted(n.split(":")[0] for s in ("cur", "new") for n in os.listdir(os.path.join(fd, s)))
                mg.write_file(os.path.join(fd, "dovecot-uidlist"),
                              mg.uidlist_bytes(1, len(names) + 1, None, list(enumerate(names, 1))), mode=0o666)


def build(root: str, *, seed: int = 7, users: int = 3, per_folder: int = 60) -> Sim:
    sim = Sim(root, random.Random(seed))
    for i in range(users):
        user = f"user{i}@{'example.it' if i % 2 == 0 else 'other.it'}"
        sim.users.append(user)
        for folder in FOLDERS:
            fd = mg.make_folder(sim.mailbox_dir(user), folder)
            for m in range(per_folder):
                sim.deliver(fd, "cur" if m < per_folder - 3 else "new")
        mg.write_file(os.path.join(sim.mailbox_dir(user), "subscriptions"),
                      mg.subscriptions_bytes(["Sent", "Archivio/2024"]), mode=0o666)
    sim.rewrite_indexes()
    return sim


def flag_renames(sim: Sim, fraction: float) -> int:
    """Rename a fraction of the messages (flag changes, new -> cur). Returns their bytes."""
    msgs = sim.messages()
    picked = sim.rng.sample(msgs, max(1, int(len(msgs) * fraction)))
    total = 0
    for p in picked:
        d, name = os.path.split(p)
        total += os.path.getsize(p)
        if os.path.basename(d) == "new":
            os.rename(p, os.path.join(os.path.dirname(d), "cur", name + ":2,S"))
        else:
            base, _, flags = name.partition(":2,")
            new_flags = "".join(sorted(set(flags) ^ {"R"})) or "S"
            os.rename(p, os.path.join(d, f"{base}:2,{new_flags}"))
    return total


def moves(sim: Sim, fraction: float) -> int:
    msgs = sim.messages("cur")
    picked = sim.rng.sample(msgs, max(1, int(len(msgs) * fraction)))
    total = 0
    for p in picked:
        user_md = p.split("/Maildir")[0] + "/Maildir"
        dest = os.path.join(mg.folder_path(user_md, sim.rng.choice(FOLDERS[1:])), "cur")
        sim.t += 1
        name = mg.message_name(mg.message_base(sim.t, 1, sim.counter, "mx", os.path.getsize(p)), "cur", "S")
        total += os.path.getsize(p)
        os.rename(p, os.path.join(dest, name))
    return total


def expunges(sim: Sim, fraction: float) -> None:
    msgs = sim.messages()
    for p in sim.rng.sample(msgs, max(1, int(len(msgs) * fraction))):
        os.unlink(p)



def new_mail(sim: Sim, fraction: float) -> list[bytes]:
    n = max(1, int(len(sim.messages()) * fraction))
    out = []
    for _ in range(n):
        user = sim.rng.choice(sim.users)
        p, _ = sim.deliver(sim.rng.choice(sim.folders(user)), "new")
        with open(p, "rb") as f:
            out.append(f.read())
    return out


def day(sim: Sim) -> None:
    new_mail(sim, 0.03)
    flag_renames(sim, 0.05)
    moves(sim, 0.01)
    expunges(sim, 0.01)
    sim.rewrite_indexes()
