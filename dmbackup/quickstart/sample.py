"""A small, seeded sample Maildir store: the quick start's data and the tests' fixture.

It has what makes a real Dovecot store awkward: several domains and users, Maildir++
folders with modified-UTF-7 names (``.Posta invi&AOA-ta``), messages in new/ and cur/ with
flags, ``dovecot-uidlist`` (v3) and ``dovecot-keywords``, ``subscriptions``, index files, an
empty file, a multi-MB attachment, a symlink, and odd file names. Messages are written the
way Dovecot names them: ``<time>.M<usec>P<pid>.<host>,S=<size>,W=<vsize>:2,<flags>``.
Layout, names and control-file formats come from dmbackup.quickstart.maildir_gen, shared
with the benchmark corpus and the tests' mail simulator; what is here is the content and the
awkward cases.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from dmbackup.quickstart import maildir_gen as mg

WORDS = ("backup mail server dovecot postfix invoice meeting report fattura riunione "
         "domani progetto cliente ufficio consegna ordine prezzo grazie saluti").split()
# IMAP names; on disk ".Sent", ..., ".Archivio.2024", ".Posta invi&AOA-ta"
FOLDERS = ["INBOX", "Sent", "Drafts", "Trash", "Archivio", "Archivio/2024", "Posta inviàta"]
KEYWORDS = ["$Label1", "Importante"]
MODE = 0o666       # files as open() makes them (less the umask); ``uid`` makes them 0600


@dataclass
class SampleInfo:
    root: str
    users: list[str]
    messages: int
    bytes: int


def _message(rng: random.Random, i: int, big: int = 0) -> bytes:
    body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 600)))
    msg = (f"Return-Path: <sender{i}@example.net>\r\n"
           f"From: Sender {i} <sender{i}@example.net>\r\n"
           f"To: user@example.it\r\nSubject: {rng.choice(WORDS)} {i}\r\n"
           f"Message-ID: <{rng.getrandbits(64):016x}.{i}@example.net>\r\n"
           f"Date: Mon, 2 Nov 2026 10:{i % 60:02d}:00 +0000\r\n\r\n{body}\r\n").encode()
    if big:
        msg += rng.randbytes(big)
    return msg


def generate(root: str, *, seed: int = 1, domains: int = 2, users_per_domain: int = 2,
             messages_per_folder: int = 6, big_bytes: int = 3 << 20, uid: int | None = None,
             gid: int | None = None) -> SampleInfo:
    """Create the store under ``root`` (which may exist and must be empty)."""
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    users, total, nmsg = [], 0, 0
    t0 = 1793000000
    for d in range(domains):
        dom = f"dom{d}.example.it" if d else "example.it"
        for u in range(users_per_domain):
            user = ["mario", "anna", "luca", "giulia"][u % 4] + (str(u // 4) if u >= 4 else "")
            users.append(f"{user}@{dom}")
            md = mg.mailbox_dir(root, f"{user}@{dom}")
            for fi, folder in enumerate(FOLDERS):
                fdir = mg.make_folder(md, folder)
                entries = []
                kw_used = False
                for m in range(messages_per_folder):
                    n = nmsg
                    nmsg += 1
                    big = big_bytes if (d == 0 and u == 0 and fi == 0 and m == 0) else 0
                    data = _message(rng, n, big)
                    t = t0 + n
                    base = mg.message_base(t, rng.randint(0, 999999), 1000 + n, "mail", len(data),
                                           len(data) + 40)
                    if m == messages_per_folder - 1:
                        flags, sub = "", "new"
                    else:
                        flags = "".join(rng.sample("FRS", rng.randint(0, 3)))
                        if m % 3 == 0:
                            flags += "a"   # keyword 0 ($Label1 / custom)
                            kw_used = True
                        sub = "cur"
                    mg.write_message(fdir, sub, base, data, flags=flags, mtime=t, mode=MODE)
                    total += len(data)
                    entries.append((m + 1, base))     # Dovecot's LDA gives new/ mail a UID too
                mg.write_file(os.path.join(fdir, "dovecot-uidlist"),
                              mg.uidlist_bytes(1700000000 + fi, messages_per_folder + 1,
                                               f"{rng.getrandbits(128):032x}", entries), mode=MODE)
                if kw_used:
                    mg.write_file(os.path.join(fdir, "dovecot-keywords"), mg.keywords_bytes(KEYWORDS),
                                  mode=MODE)
                mg.write_file(os.path.join(fdir, "dovecot.index.log"), rng.randbytes(2048), mode=MODE)
            mg.write_file(os.path.join(md, "subscriptions"),
                          mg.subscriptions_bytes(FOLDERS[1:], v2_header=True), mode=MODE)
            mg.write_file(os.path.join(md, "dovecot.list.index.log"), b"", mode=MODE)     # empty file
            # odd names and a symlink, as an administrator's leftovers might be
            with open(os.path.join(md, "note with spaces & àccents.txt"), "w") as f:
                f.write("kept by hand\n")
            with open(os.path.join(md, b"raw-\xff-name".decode("utf-8", "surrogateescape")), "wb") as f:
                f.write(b"latin-1 name\n")
            os.symlink("subscriptions", os.path.join(md, "subscriptions.link"))
            os.makedirs(os.path.join(md, ".Empty folder", "cur"), exist_ok=True)
    if uid is not None:
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                os.lchown(os.path.join(dirpath, n), uid, gid if gid is not None else uid)
            os.chmod(dirpath, 0o700)
            for n in filenames:
                p = os.path.join(dirpath, n)
                if not os.path.islink(p):
                    os.chmod(p, 0o600)
        os.lchown(root, uid, gid if gid is not None else uid)
    return SampleInfo(root, users, nmsg, total)
