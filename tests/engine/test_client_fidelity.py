"""A restore judged by real IMAP clients that keep UID state (issue 12).

Mail programs cache what they have seen: mbsync (like Outlook or K-9) fetches only UIDs above
the highest one it has pulled and trusts that a UID it knows still names the same message;
Thunderbird with CONDSTORE asks only for changes above the HIGHESTMODSEQ it cached. So a
restore must not hand out again a UID or a mod-sequence that a client has already seen, and
must keep every UIDVALIDITY. These tests build a real store on a private Dovecot (three users,
non-ASCII folders such as `Città/Perù`, odd real-world messages, a busy INBOX whose
`dovecot-uidlist` Dovecot has appended a thousand records to since it last rewrote the header's
`N`), back it up while an IMAP client changes flags, moves, expunges and appends, let mbsync
mirror every user, lose the store, restore it (`restore --overwrite` into the empty live store,
and the README's recipe `restore --to DIR --uid-gap 1000`, move into place, `restore --resync`),
deliver 1,000 new messages with dovecot-lda and sync again. Every new message must reach its
client, with no UIDVALIDITY change, no re-download, nothing lost, nothing duplicated. The
CONDSTORE test checks that flag changes made after the backup (which the client cached, and
which the restore undid) and after the restore are all reported to a client that resumes from
its cached HIGHESTMODSEQ.
"""

from __future__ import annotations

import glob
import imaplib
import os
import random
import shutil
import threading
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.fixtures.imapstate import (capture_state, check, fetch_items, imap_utf7_encode,
                                      quote_mailbox)
from tests.fixtures.mailgen import populate
from tests.fixtures.mbsync import Fidelity, MbsyncClient, header_block, judge
from tests.world import World

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="Dovecot's vmail uid needs root")

USERS = ["mario@example.it", "anna@example.it", "luca@other.it"]
CITTA = "Città/Perù"
BUSY_USER, BUSY_FOLDER = USERS[0], "INBOX"     # gets the 1,000 new messages after the restore
ABOVE_N = ("INBOX", CITTA, "Archivio/2024")    # LDA mail after the last uidlist rewrite, per user
BULK_BEFORE_BACKUP = 1000                      # into the busy INBOX: Dovecot never rewrites its header
AFTER_BACKUP = 5                               # per ABOVE_N folder: seen by clients, not in the snapshot
NEW_AFTER_RESTORE = 1000
AFTER_RESTORE_EACH = 3                         # per ABOVE_N folder of every user
UID_GAP = 1000
DAY = datetime(2026, 11, 28, 9, 0, tzinfo=timezone.utc)


# --- messages -----------------------------------------------------------------------------

def plain_message(user: str, tag: str, n: int) -> tuple[str, bytes]:
    """A small LF-terminated message, as Postfix hands it to dovecot-lda."""
    slug = "".join(c if c.isascii() and c.isalnum() else "-" for c in tag)
    mid = f"<{slug}.{n}.{user.replace('@', '.')}@fidelity.test>"
    when = format_datetime(DAY + timedelta(minutes=n))
    text = (f"From: Ufficio Spedizioni <spedizioni@fornitore.it>\nTo: {user}\n"
            f"Subject: {tag} n. {n} – consegna prevista\nDate: {when}\nMessage-ID: {mid}\n"
            "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
            f"Content-Transfer-Encoding: 8bit\n\nBuongiorno,\nla spedizione {n} è partita.\n")
    return mid, text.encode()


def _odd_corpus() -> list[bytes]:
    """Odd but real-world shapes: CPython's e-mail test data when installed, and always a
    handful written here (encoded words in odd charsets, raw 8-bit headers, broken MIME,
    huge unfolded header, folded Message-ID, a headers-only message mbsync must skip)."""
    out = []
    for path in sorted(glob.glob("/usr/lib/python3*/test/test_email/data/msg_*.txt"))[:15]:
        with open(path, "rb") as f:
            out.append(f.read())
    out += [
        b"From: =?koi8-r?B?8NLP18XSy8E=?= <koi@example.ru>\nTo: =?iso-2022-jp?B?GyRCJUYlOSVIGyhC?= <x@example.jp>\n"
        b"Subject: =?iso-2022-jp?B?GyRCJEgkYiQ3JEkkZBsoQg==?= =?utf-8?q?caf=C3=A9?=\n\nnihongo\n",
        b"From: J\xf6rg M\xfcller <joerg@example.de>\nSubject: Gr\xfc\xdfe aus K\xf6ln (8-bit, kein MIME)\n\n"
        b"Sch\xf6ne Gr\xfc\xdfe\n",
        b"From: a@example.org\nSubject: broken multipart\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/mixed; boundary=\"XX\"\n\n--XX\nContent-Type: text/plain\n\npart one\n"
        b"--XX\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n!!notbase64!!\n",
        b"From: b@example.org\nSubject: long header\nX-Long: " + b"abcdefghij" * 300 + b"\n\nbody\n",
        b"From: c@example.org\nSubject: unknown charset\nContent-Type: text/plain; charset=\"unknown-8bit\"\n\n"
        b"\x80\x81\xfe\xff\nFrom the start of a line\n.\n",
        b"From: d@example.org\nSubject: duplicated\nSubject: headers\nX-Tab:\tfolded\n\tcontinued  \n\nx\n",
        b"From: headers-only@example.org\nSubject: no header/body separator\nX-Note: mbsync skips this\n",
    ]
    return out


def odd_messages(user: str) -> list[tuple[str, bytes, bool]]:
    """(Message-ID, bytes, syncable) for `user`. Each gets a unique Message-ID (a folded one
    for a few, to test both sides' parsing); an original one is kept under another name."""
    out = []
    for i, raw in enumerate(_odd_corpus()):
        raw = raw.replace(b"\r\n", b"\n")
        if raw.startswith(b"From "):               # an mbox separator line is not a header
            raw = raw.split(b"\n", 1)[1]
        lines = raw.split(b"\n")
        for j, line in enumerate(lines):
            if line == b"":
                break
            if line[:11].lower() == b"message-id:":
                lines[j] = b"X-Original-" + line
        raw = b"\n".join(lines)
        mid = f"<odd.{i}.{user.replace('@', '.')}@fidelity.test>"
        field = f"Message-ID:\n {mid}\n" if i % 3 == 0 else f"Message-ID: {mid}\n"
        data = field.encode() + raw
        out.append((mid, data, header_block(data) is not None))
    return out


# --- the store ----------------------------------------------------------------------------

def maildir_folder(server, user: str, folder: str) -> Path:
    """The Maildir++ directory of an IMAP folder (`Città/Perù` -> `.Citt&AOA-.Per&APk-`)."""
    md = server.maildir(user)
    return md if folder == "INBOX" else md / ("." + imap_utf7_encode(folder).replace("/", "."))


def uidlist_state(path: Path) -> tuple[int, int]:
    """(the header's next UID N, the highest UID among the records) of a dovecot-uidlist."""
    lines = (path / "dovecot-uidlist").read_text(errors="replace").splitlines()
    n = next(int(tok[1:]) for tok in lines[0].split()[1:] if tok.startswith("N"))
    uids = [int(line.split()[0]) for line in lines[1:] if line.split() and line.split()[0].isdigit()]
    return n, max(uids, default=0)


def above_n(path: Path) -> bool:
    """Whether Dovecot appended records at or above the header's N since its last rewrite."""
    n, top = uidlist_state(path)
    return top >= n


def build_store(live) -> set[str]:
    """Populate the live server; return the Message-IDs mbsync cannot take (no separator)."""
    populate(live, USERS, seed=12, n_messages=25, big_messages=1, lda_per_user=2)
    unsyncable = set()
    for ui, user in enumerate(USERS):
        conn = live.imap(user)
        try:
            check(conn.create(quote_mailbox(CITTA)), "CREATE")
            check(conn.subscribe(quote_mailbox(CITTA)), "SUBSCRIBE")
            for n in range(6):
                mid, data = plain_message(user, "viaggio", n)
                flags = "(\\Seen $Label1)" if n % 2 else "(\\Seen)"
                check(conn.append(quote_mailbox(CITTA), flags, None, data.replace(b"\n", b"\r\n")), "APPEND")
        finally:
            conn.logout()
        # Real-world odd mail arrives through Postfix, i.e. dovecot-lda.
        for mid, data, syncable in odd_messages(user):
            live.lda(user, data, folder=CITTA if ui != 1 else "INBOX")
            if not syncable:
                unsyncable.add(mid)
    # A busy INBOX: Dovecot appends each delivery to dovecot-uidlist without rewriting
    # the header, so its N falls far behind the UIDs really handed out.
    for n in range(BULK_BEFORE_BACKUP):
        live.lda(BUSY_USER, plain_message(BUSY_USER, "bulk", n)[1])
    # The last thing before the backup: a few deliveries into every ABOVE_N folder. Dovecot
    # rewrites a small folder's uidlist on every other delivery or so; deliver until the
    # last one was appended above the header's N.
    for user in USERS:
        for folder in ABOVE_N:
            path = maildir_folder(live, user, folder)
            for n in range(12):
                live.lda(user, plain_message(user, f"tardi-{folder}", n)[1], folder=folder)
                if n >= 2 and above_n(path):
                    break
            assert above_n(path), f"{user} {folder}: Dovecot rewrote dovecot-uidlist on each delivery"
    return unsyncable


class Load(threading.Thread):
    """An IMAP client busy while the backup runs: flags, moves, expunges, appends. It saves
    no message into an ABOVE_N folder: an IMAP session saving there makes Dovecot rewrite
    that folder's dovecot-uidlist, and the point is a snapshot taken before it did."""

    def __init__(self, live) -> None:
        super().__init__(daemon=True)
        self.live = live
        self.stop = threading.Event()
        self.first_round = threading.Event()
        self.ops = 0
        self.removed: set[tuple[str, str, int]] = set()   # (user, folder, uid) moved away or expunged
        self.errors: list[str] = []

    def run(self) -> None:
        rng = random.Random(99)
        n = 0
        while not self.stop.is_set():
            for user in USERS:
                try:
                    n += 1
                    self._round(rng, user, n)
                except (imaplib.IMAP4.error, OSError, RuntimeError) as e:
                    # The load is the weather, not the thing under test.
                    self.errors.append(repr(e))
                if self.stop.wait(0.02):
                    return
            self.first_round.set()

    def _round(self, rng: random.Random, user: str, n: int) -> None:
        conn = self.live.imap(user)
        try:
            check(conn.select("INBOX"), "SELECT")
            uids = check(conn.uid("SEARCH", "ALL"), "SEARCH")[0].split()
            for uid in rng.sample(uids, min(4, len(uids))):
                change = rng.choice([("+FLAGS", "(\\Seen)"), ("-FLAGS", "(\\Seen)"),
                                     ("+FLAGS", "(\\Flagged $Label2)"), ("-FLAGS", "(\\Flagged)")])
                check(conn.uid("STORE", uid.decode(), *change), "STORE")
                self.ops += 1
            if uids:
                uid = rng.choice(uids).decode()
                self.removed.add((user, "INBOX", int(uid)))
                check(conn.uid("MOVE", uid, quote_mailbox("Archivio/2023")), "MOVE")
                self.ops += 1
            check(conn.select(quote_mailbox("Archivio/2023")), "SELECT")
            old = check(conn.uid("SEARCH", "ALL"), "SEARCH")[0].split()
            if len(old) > 2:
                victim = rng.choice(old).decode()
                self.removed.add((user, "Archivio/2023", int(victim)))
                check(conn.uid("STORE", victim, "+FLAGS.SILENT", "(\\Deleted)"), "STORE")
                check(conn.uid("EXPUNGE", victim), "EXPUNGE")
                self.ops += 1
            check(conn.close(), "CLOSE")
            for folder in ("Sent", "Posta inviàta"):
                _, data = plain_message(user, "carico", n * 10 + len(folder))
                check(conn.append(quote_mailbox(folder), "(\\Seen)", None, data.replace(b"\n", b"\r\n")), "APPEND")
                self.ops += 1
        finally:
            conn.logout()


def world_for(tmp_path, live) -> World:
    w = World(tmp_path / "dmb")
    w.store = str(live.vmail_root)
    w.write_config()
    with open(w.config) as f:
        text = f.read().replace("[source]\n", f'[source]\ndovecot_config = "{live.config_file}"\n', 1)
    with open(w.config, "w") as f:
        f.write(text)
    w.ok("init", "local")
    return w


def wipe(root: Path) -> None:
    """The disk died: an empty store where the old one was (the mount point stays)."""
    for name in os.listdir(root):
        p = root / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def disaster_restore(mode: str, live, w: World, factory) -> None:
    """Lose the store and bring the newest snapshot back, as the README tells the admin."""
    wipe(live.vmail_root)
    if mode == "overwrite":
        w.ok("restore", "--target", "local", "--overwrite")
        return
    out = factory.tmpdir("restored-")
    w.ok("restore", "--target", "local", "--to", str(out), "--uid-gap", str(UID_GAP))
    live.stop()
    os.rmdir(live.vmail_root)
    os.rename(out, live.vmail_root)
    live.start()
    w.ok("restore", "--resync")


# --- mbsync clients across a disaster restore ------------------------------------------------

@pytest.mark.parametrize("mode", ["overwrite", "to-recipe"])
def test_mbsync_clients_get_every_new_message_after_a_restore(mode, dovecot_factory, tmp_path):
    live = dovecot_factory(USERS)
    unsyncable = build_store(live)
    w = world_for(tmp_path, live)

    load = Load(live)
    load.start()
    try:
        assert load.first_round.wait(60), f"the IMAP load never got going: {load.errors[:3]}"
        ops_before = load.ops
        r = w.run("backup", "--target", "local", "--json")
        ops_during = load.ops - ops_before
    finally:
        load.stop.set()
        load.join(timeout=60)
    assert r.code in (0, 1), r.err              # 1: a message vanished during the scan

    # The scenario the old code failed on must really be there: in the busy INBOX the
    # records run more than the gap of 1,000 above the header's N (the IMAP load may have
    # made Dovecot rewrite some small folder's uidlist meanwhile; reported below).
    n, top = uidlist_state(maildir_folder(live, BUSY_USER, BUSY_FOLDER))
    assert top + 1 > n + UID_GAP, f"busy INBOX: N{n}, highest UID {top}"
    still_above = sum(above_n(maildir_folder(live, u, f)) for u in USERS for f in ABOVE_N)

    # Mail that arrived after the snapshot: the clients see it, the backup does not have it.
    for user in USERS:
        for folder in ABOVE_N:
            for k in range(AFTER_BACKUP):
                live.lda(user, plain_message(user, f"dopo-backup-{folder}", k)[1], folder=folder)
    clients = {u: MbsyncClient(live, u, tmp_path / "clients" / u.replace("@", "_")) for u in USERS}
    for c in clients.values():
        c.sync()
    before = {u: c.view() for u, c in clients.items()}
    had = sum(v.total() for v in before.values())

    disaster_restore(mode, live, w, dovecot_factory)

    new_ids: dict[str, dict[str, set[str]]] = {u: {} for u in USERS}
    for k in range(NEW_AFTER_RESTORE):
        mid, data = plain_message(BUSY_USER, "nuova", k)
        live.lda(BUSY_USER, data, folder=BUSY_FOLDER)
        new_ids[BUSY_USER].setdefault(BUSY_FOLDER, set()).add(mid)
    for user in USERS:
        for folder in ABOVE_N:
            for k in range(AFTER_RESTORE_EACH):
                mid, data = plain_message(user, f"dopo-restore-{folder}", k)
                live.lda(user, data, folder=folder)
                new_ids[user].setdefault(folder, set()).add(mid)
    expected_new = sum(len(ids) for f in new_ids.values() for ids in f.values())

    runs = {u: c.sync(check=False) for u, c in clients.items()}
    server = capture_state(live, USERS)
    verdict = Fidelity()
    for u, c in clients.items():
        verdict.merge(judge(u, before[u], c.view(), server[u], new_ids=new_ids[u], unsyncable=unsyncable))

    print(f"[{mode}] IMAP load ops during the backup: {ops_during} (errors {len(load.errors)}); "
          f"folders with uidlist records above N at the backup: {still_above}/{len(USERS) * len(ABOVE_N)}; "
          f"clients held {had} messages before the restore; verdict {verdict.counts()}\n"
          f"  hidden (restored below a client's UID watermark): {verdict.hidden}\n"
          f"  unsyncable (mbsync skips them): {verdict.unsyncable}")
    assert verdict.failures() == {}, (
        f"[{mode}] what the clients noticed: {verdict.counts()}\n"
        + "\n".join(f"{k}: {v[:8]}" for k, v in verdict.failures().items()))
    # Only what the IMAP load moved away or expunged during the backup may come back
    # below a client's watermark (an older state restored; the client saw it go).
    assert verdict.hidden_uids <= load.removed, sorted(verdict.hidden_uids - load.removed)
    assert {u: r.returncode for u, r in runs.items()} == {u: 0 for u in USERS}, (
        "\n".join(f"{u}: {r.output[-1500:]}" for u, r in runs.items() if r.returncode))
    assert verdict.new_received == expected_new == NEW_AFTER_RESTORE + len(USERS) * len(ABOVE_N) * AFTER_RESTORE_EACH


# --- a CONDSTORE client (Thunderbird) across a disaster restore ------------------------------

def _flags(fields) -> frozenset[str]:
    return frozenset(str(f) for f in fields.get("FLAGS") or [] if str(f).lower() != "\\recent")


class CondstoreClient:
    """What Thunderbird does with CONDSTORE: one full flag fetch, then per folder it keeps
    UIDVALIDITY, HIGHESTMODSEQ and every message's flags, and later asks only for
    `CHANGEDSINCE <cached HIGHESTMODSEQ>` (plus the UID list, to notice expunges)."""

    def __init__(self, server, user: str) -> None:
        self.server, self.user = server, user
        self.cache: dict[str, dict] = {}

    def _select(self, conn: imaplib.IMAP4, folder: str) -> tuple[int, int]:
        conn.untagged_responses = {}
        check(conn._simple_command("SELECT", quote_mailbox(folder), "(CONDSTORE)"), f"SELECT {folder}")
        conn.state = "SELECTED"
        return (int(conn.untagged_responses["UIDVALIDITY"][-1]),
                int(conn.untagged_responses["HIGHESTMODSEQ"][-1]))

    def _connect(self) -> imaplib.IMAP4:
        conn = self.server.imap(self.user)
        check(conn.enable("CONDSTORE"), "ENABLE CONDSTORE")
        return conn

    def full_sync(self, folders) -> None:
        conn = self._connect()
        try:
            for folder in folders:
                uv, hms = self._select(conn, folder)
                flags = {int(f["UID"]): _flags(f) for f in fetch_items(conn, "1:*", "(FLAGS)")}
                self.cache[folder] = {"uidvalidity": uv, "highestmodseq": hms, "flags": flags}
        finally:
            conn.logout()

    def resync(self, folders) -> dict[str, dict]:
        """Resume from the cache; returns per folder what the server said."""
        report = {}
        conn = self._connect()
        try:
            for folder in folders:
                cached = self.cache[folder]
                uv, hms = self._select(conn, folder)
                changed = {int(f["UID"]): _flags(f) for f in
                           fetch_items(conn, "1:*", f"(FLAGS) (CHANGEDSINCE {cached['highestmodseq']})")}
                present = {int(u) for u in check(conn.uid("SEARCH", "ALL"), "SEARCH")[0].split()}
                report[folder] = {"uidvalidity": uv, "highestmodseq": hms, "changed": set(changed),
                                  "old_uidvalidity": cached["uidvalidity"],
                                  "old_highestmodseq": cached["highestmodseq"]}
                flags = {u: f for u, f in cached["flags"].items() if u in present}
                flags.update(changed)
                self.cache[folder] = {"uidvalidity": uv, "highestmodseq": hms, "flags": flags}
        finally:
            conn.logout()
        return report


def server_flags(server, user: str, folders) -> dict[str, dict[int, frozenset]]:
    conn = server.imap(user)
    try:
        out = {}
        for folder in folders:
            check(conn.select(quote_mailbox(folder), readonly=True), f"EXAMINE {folder}")
            out[folder] = {int(f["UID"]): _flags(f) for f in fetch_items(conn, "1:*", "(FLAGS)")}
        return out
    finally:
        conn.logout()


def change_flags(server, user: str, folders, rng: random.Random, per_folder: int) -> dict[str, set[int]]:
    """Another device of the user really changes flags on a few messages per folder."""
    conn = server.imap(user)
    changed: dict[str, set[int]] = {}
    try:
        for folder in folders:
            check(conn.select(quote_mailbox(folder)), f"SELECT {folder}")
            msgs = fetch_items(conn, "1:*", "(FLAGS)")
            for f in rng.sample(msgs, min(per_folder, len(msgs))):
                uid, flags = str(f["UID"]), _flags(f)
                if "\\Flagged" in flags:
                    check(conn.uid("STORE", uid, "-FLAGS", "(\\Flagged)"), "STORE")
                else:
                    check(conn.uid("STORE", uid, "+FLAGS", "(\\Flagged Fatturato)"), "STORE")
                changed.setdefault(folder, set()).add(int(uid))
        check(conn.close(), "CLOSE")
    finally:
        conn.logout()
    return changed


@pytest.mark.parametrize("mode", ["overwrite", "to-recipe"])
def test_condstore_client_is_told_every_flag_change_after_a_restore(mode, dovecot_factory, tmp_path):
    user = USERS[1]
    folders = ["INBOX", CITTA, "Archivio/2024"]
    live = dovecot_factory(USERS)
    populate(live, USERS, seed=31, n_messages=20, big_messages=0, lda_per_user=2)
    conn = live.imap(user)
    try:
        check(conn.create(quote_mailbox(CITTA)), "CREATE")
        for n in range(8):
            check(conn.append(quote_mailbox(CITTA), "(\\Seen)", None,
                              plain_message(user, "viaggio", n)[1].replace(b"\n", b"\r\n")), "APPEND")
    finally:
        conn.logout()
    w = world_for(tmp_path, live)
    w.ok("backup", "--target", "local")

    rng = random.Random(5)
    after_backup = change_flags(live, user, folders, rng, 4)
    tb = CondstoreClient(live, user)
    tb.full_sync(folders)                       # the client caches those changes and HIGHESTMODSEQ

    disaster_restore(mode, live, w, dovecot_factory)
    after_restore = change_flags(live, user, folders, rng, 3)

    report = tb.resync(folders)
    truth = server_flags(live, user, folders)
    problems = []
    for folder in folders:
        rep = report[folder]
        if rep["uidvalidity"] != rep["old_uidvalidity"]:
            problems.append(f"{folder}: UIDVALIDITY changed from {rep['old_uidvalidity']} to {rep['uidvalidity']}")
        if rep["highestmodseq"] <= rep["old_highestmodseq"]:
            problems.append(f"{folder}: HIGHESTMODSEQ went from {rep['old_highestmodseq']} to {rep['highestmodseq']}")
        missed = (after_backup.get(folder, set()) | after_restore.get(folder, set())) - rep["changed"]
        if missed:
            problems.append(f"{folder}: flag changes never reported for UIDs {sorted(missed)}")
        wrong = {u: (sorted(tb.cache[folder]["flags"].get(u, ())), sorted(f))
                 for u, f in truth[folder].items() if tb.cache[folder]["flags"].get(u) != f}
        if wrong:
            problems.append(f"{folder}: client shows wrong flags (client, server): {dict(list(wrong.items())[:6])}")
    print(f"[{mode}] " + "; ".join(f"{f}: HIGHESTMODSEQ {r['old_highestmodseq']} -> {r['highestmodseq']}, "
                                   f"{len(r['changed'])} reported" for f, r in report.items()))
    assert sum(map(len, after_backup.values())) and sum(map(len, after_restore.values()))
    assert problems == [], f"[{mode}] the CONDSTORE client after the restore:\n" + "\n".join(problems)
