"""Issue 15, "get back the e-mail I deleted last week": find, reindex, ls, diff and restore by
message, through the real CLI on a store made of tests/data/awkward-mail/.

Backups do not write header indexes yet (the hook into the backup comes with the backup's
restructuring), so every test indexes with ``dmbackup reindex``, which is tested with them.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
from datetime import datetime, timezone

import pytest

from dmbackup.archive.headerindex import fold
from tests.engine.findworld import AWKWARD, BOXES, DATA, EXPECTED, FOLDERS, MailStore, awkward_store, restore_msgs, sha
from tests.world import World, tree


def utc(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


@pytest.fixture
def awk(tmp_path):
    """The awkward store, backed up once (the backup writes the header index; the reindex finds
    nothing to do); ``.mail`` is its model."""
    w = World(tmp_path)
    w.mail = awkward_store(w.store)
    w.write_config()
    w.ok("init", "local")
    w.ok("backup", "--target", "local")
    w.ok("reindex", "--target", "local")
    return w


def find(w, *args) -> dict:
    r = w.run("find", "--json", *args)
    assert r.code in (0, 1), f"find {args} exited {r.code}: {r.err}"
    return json.loads(r.out)


def got(res: dict) -> set[tuple[str, str, str]]:
    return {(m["mailbox"], m["folder"], m["sha256"]) for m in res["messages"]}


def expected(w, pred) -> set[tuple[str, str, str]]:
    return {w.mail.msgs[n].key for n in AWKWARD if EXPECTED[n] is not None and pred(EXPECTED[n])}


def snaps(w) -> list[str]:
    return [r["id"] for r in json.loads(w.ok("snapshots", "--json").out) if r["kind"] != "config"]


# --------------------------------------------------------------------------- find by each filter

def _has(field, text):
    return lambda e: fold(text) in fold(e.get(field, ""))


FILTERS = {
    "from rossi": (["--from", "rossi"], _has("from", "rossi")),
    "from accented": (["--from", "NICCOLÒ"], _has("from", "niccolo")),
    "to": (["--to", "Hotel-Lago"], lambda e: "hotel-lago" in fold(e["to"]) or "hotel-lago" in fold(e.get("cc", ""))),
    "to in cc, accented": (["--to", "andre@"], lambda e: "andre@" in fold(e["to"]) or "andre@" in fold(e.get("cc", ""))),
    "cc only": (["--to", "ccc@zzz"], lambda e: "ccc@zzz" in fold(e.get("cc", ""))),
    "subject folded": (["--subject", "caffe"], _has("subject", "caffe")),
    "subject sharp s": (["--subject", "STRASSE"], _has("subject", "strasse")),
    "subject cyrillic": (["--subject", "москвы"], _has("subject", "москвы")),
    "message-id": (["--message-id", "<dup-42@example.it>"], lambda e: e["message_id"] == "dup-42@example.it"),
    "message-id part": (["--message-id", "studio-rossi"], _has("message_id", "studio-rossi")),
    "since": (["--since", "2025-11-17"], lambda e: e["date"] is not None and utc(e["date"]) >= utc("2025-11-17T00:00:00Z")),
    "before": (["--before", "2002-01-01T00:00"], lambda e: e["date"] is not None and utc(e["date"]) < utc("2002-01-01T00:00:00Z")),
    "since and before": (["--since", "2025-11-17", "--before", "2025-11-18"],
                         lambda e: e["date"] is not None and "2025-11-17" <= e["date"][:10] < "2025-11-18"),
    "from and subject": (["--from", "davide", "--subject", "seconda"],
                         lambda e: "davide" in fold(e["from"]) and "seconda" in fold(e["subject"])),
}


@pytest.mark.parametrize("what", sorted(FILTERS))
def test_find_by_each_filter_returns_exactly_the_expected_set(awk, what):
    args, pred = FILTERS[what]
    want = expected(awk, pred)
    assert want, f"the filter {what!r} should match something in the corpus"
    res = find(awk, *args)
    assert got(res) == want
    assert res["not_indexed"] == [] and res["exit_code"] == 0


def test_find_hand_checked_sets(awk):
    """The same, against sets written by hand (not derived with the code's own folding)."""
    def files(res):
        by_key = {m.key: n for n, m in awk.mail.msgs.items()}
        return sorted(by_key[k] for k in got(res))

    assert files(find(awk, "--from", "rossi")) == ["crlf.eml", "multipart-mixed-attachment.eml",
                                                   "quoted-encoded-name.eml", "utf8-b-subject.eml"]
    assert files(find(awk, "--subject", "strasse")) == ["mixed-charsets.eml", "strasse.eml"]
    assert files(find(awk, "--subject", "CAFFÈ")) == ["iso-8859-1.eml", "raw-8bit-latin1.eml", "utf8-q-split.eml"]
    assert files(find(awk, "--message-id", "dup-42@example.it")) == ["dup-message-id-1.eml", "dup-message-id-2.eml"]
    assert files(find(awk, "--since", "2025-11-17", "--before", "2025-11-18")) == [
        "alternative-no-attachment.eml", "multipart-mixed-attachment.eml", "related-with-attachment.eml",
        "single-part-pdf.eml"]


def test_find_reports_what_each_message_is(awk):
    res = find(awk, "--message-id", "strasse-1@example.de")
    [m] = res["messages"]
    src = awk.mail.msgs["strasse.eml"]
    assert (m["mailbox"], m["folder"]) == (src.mailbox, src.folder)
    assert m["folder"] == "Posta inviàta"                   # decoded from .Posta invi&AOA-ta
    assert m["date"] == "2025-11-22T09:00:00Z" and m["subject"] == "Hauptstraße gesperrt"
    assert m["from"] == "Gemeinde <info@gemeinde.example.de>"
    assert m["maildir_flags"] == src.flags and m["new"] == (src.sub == "new")
    assert m["size"] == len(src.data) and m["name"] == src.name
    snap = snaps(awk)[0]
    assert m["first_seen"] == m["last_seen"] == snap and m["in_newest"] and m["snapshots"] == 1
    [m] = find(awk, "--message-id", "scan-0001@scanner")["messages"]
    src = awk.mail.msgs["single-part-pdf.eml"]
    assert (src.folder, src.flags, m["folder"]) == ("Archivio/2024", "RSa", "Archivio/2024")
    assert m["flags"] == ["\\Answered", "\\Seen"] and m["keywords"] == "a" and m["attachments"]


def test_find_scope_by_mailbox_and_folder(awk):
    every = got(find(awk, "--since", "1990-01-01"))
    res = find(awk, "--since", "1990-01-01", "--mailbox", "anna@example.it")
    assert got(res) == {k for k in every if k[0] == "anna@example.it"} and got(res)
    res = find(awk, "--since", "1990-01-01", "--mailbox", "luca@other.it", "--folder", "Posta inviàta")
    assert got(res) == {k for k in every if k[:2] == ("luca@other.it", "Posta inviàta")} and got(res)
    res = find(awk, "--since", "1990-01-01", "--folder", "INBOX")
    assert got(res) == {k for k in every if k[1] == "INBOX"}
    # no header filter: everything indexed in scope
    res = find(awk, "--mailbox", "mario@example.it")
    assert got(res) == {m.key for m in awk.mail.msgs.values()
                        if m.mailbox == "mario@example.it" and EXPECTED[m.tag] is not None}


def test_find_text_output_and_bad_options(awk):
    r = awk.ok("find", "--subject", "strasse")
    assert "Hauptstraße gesperrt" in r.out and "Posta inviàta" in r.out and "2 message(s)" in r.out
    assert awk.run("find", "--since", "yesterday").code == 2
    assert awk.run("find", "--mailbox", "nobody").code == 2
    assert awk.run("find", "--folder", "../x").code == 2
    assert awk.run("find", "--message-id", "<>").code == 2
    assert awk.run("find", "--subject", "  ").code == 2
    r = awk.ok("find", "--subject", "no such subject anywhere")
    assert "no message found" in r.out


def test_find_ls_and_diff_never_read_a_volume(awk):
    awk.mail.expunge("strasse.eml")
    awk.ok("backup", "--target", "local")
    awk.ok("reindex")
    full, inc = snaps(awk)
    vols = [p for p in awk.chain_files() if ".v0" in os.path.basename(p)]
    assert vols
    for v in vols:
        os.rename(v, v + "-away")          # not a name dmbackup reads any more
    [m] = find(awk, "--subject", "hauptstrasse")["messages"]
    assert (m["first_seen"], m["last_seen"]) == (full, full)
    assert json.loads(awk.ok("diff", full, inc, "--json").out)["totals"]["removed"] == 1
    awk.ok("ls", inc, "luca@other.it/Posta inviàta")
    r = restore_msgs(awk, "--target", "local", "--subject", "hauptstrasse", "--to", os.path.join(awk.tmp, "dry"),
                     "--dry-run", "--json")
    assert r.code == 0 and json.loads(r.out)["count"] == 1


# --------------------------------------------------------------------------- reindex, not indexed

def test_snapshots_before_reindex_are_reported_not_indexed(tmp_path):
    w = World(tmp_path)
    w.mail = awkward_store(w.store)
    w.write_config()
    w.ok("init", "local")
    w.ok("backup", "--target", "local")
    [snap] = snaps(w)
    res = find(w, "--from", "rossi")                 # the backup wrote the index
    assert len(res["messages"]) == 4 and res["not_indexed"] == []
    # a snapshot made before dmbackup wrote header indexes has none
    for p in w.chain_files(".hidx"):
        os.unlink(p)
    res = find(w, "--from", "rossi")
    assert res["messages"] == [] and res["not_indexed"] == [snap]
    assert "reindex" in w.run("find", "--from", "rossi").err
    out = json.loads(w.ok("reindex", "--json").out)
    assert [i["snapshot"] for i in out["indexed"]] == [snap]
    assert out["indexed"][0]["records"] == sum(1 for n in AWKWARD if EXPECTED[n] is not None)
    assert os.path.exists(os.path.join(w.repo_root, "chains", os.listdir(os.path.join(w.repo_root, "chains"))[0],
                                       f"{snap}.hidx"))
    res = find(w, "--from", "rossi")
    assert len(res["messages"]) == 4 and res["not_indexed"] == []
    again = json.loads(w.ok("reindex", "--json").out)
    assert again["indexed"] == [] and again["already_indexed"] == [snap]
    # one snapshot by name
    w.mail.add("later", "anna@example.it", "INBOX", b"Message-ID: <later@x>\nSubject: later\n\nbody\n")
    w.ok("backup", "--target", "local")
    inc = snaps(w)[1]
    assert find(w, "--subject", "later")["not_indexed"] == []
    [p] = [p for p in w.chain_files(".hidx") if inc in p]
    os.unlink(p)
    assert find(w, "--subject", "later")["not_indexed"] == [inc]
    out = json.loads(w.ok("reindex", inc[:20], "--json").out)
    assert [(i["snapshot"], i["records"]) for i in out["indexed"]] == [(inc, 1)]
    [m] = find(w, "--subject", "later")["messages"]
    assert m["first_seen"] == inc and m["message_id"] == "later@x"
    # the index is sealed: no header text in it
    hidx = min(w.chain_files(".hidx"))            # the full's
    blob = open(hidx, "rb").read()
    assert b"rossi" not in blob.lower() and b"strasse" not in blob.lower()


def test_backup_reports_what_the_header_index_could_not_read(tmp_path):
    """Malformed headers never fail a backup: what parses is indexed, the rest is counted."""
    w = World(tmp_path)
    w.mail = awkward_store(w.store)
    w.write_config()
    w.ok("init", "local")
    r = w.run("backup", "--target", "local", "--json")
    assert r.code == 0, r.err
    hi = json.loads(r.out)["header_index"]
    # empty.eml stores no content (no block), so it has nothing to index or count
    unparsed = sum(1 for n in AWKWARD if EXPECTED[n] is None and n != "empty.eml")
    assert hi["not_a_header"] == unparsed >= 1
    assert hi["messages"] + hi["not_a_header"] == len(w.mail.msgs) - 1 == len(AWKWARD) - 1
    assert hi["problems"].get("no-message-id", 0) >= 1 and hi["problems"].get("bad-date", 0) >= 1


def _flip(path: str, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x40]))


def test_damaged_and_forged_indexes_are_reported_never_a_crash(tmp_path):
    w = World(tmp_path)
    w.mail = awkward_store(w.store)
    w.write_config()
    w.ok("init", "local")
    w.ok("backup", "--target", "local")
    w.mail.add("later", "anna@example.it", "INBOX", b"Message-ID: <later@x>\nSubject: later\n\nbody\n")
    w.ok("backup", "--target", "local")
    w.ok("reindex")
    full, inc = snaps(w)
    hf, hi = sorted(w.chain_files(".hidx"))
    assert full in hf and inc in hi
    # a flipped byte
    _flip(hf, 40)
    r = w.run("find", "--json", "--from", "rossi")
    assert r.code == 1, r.err
    res = json.loads(r.out)
    assert res["messages"] == [] and res["damaged_indexes"] == [full]
    assert any("damaged" in x and full in x for x in res["warnings"])
    assert "later@x" in {m["message_id"] for m in find(w, "--subject", "later")["messages"]}
    # reindex does not replace it: reported, exit 4
    r = w.run("reindex", "--json")
    assert r.code == 4 and json.loads(r.out)["damaged_indexes"] == [full]
    # forged: another snapshot's (valid) index copied over it
    shutil.copyfile(hi, hf)
    r = w.run("find", "--json", "--subject", "later")
    assert r.code == 1
    res = json.loads(r.out)
    assert res["damaged_indexes"] == [full]
    assert [m["message_id"] for m in res["messages"]] == ["later@x"]
    # truncated, empty, and garbage of the wrong size: still reported
    for data in (open(hi, "rb").read()[:30], b"", os.urandom(5000)):
        with open(hf, "wb") as f:
            f.write(data)
        r = w.run("find", "--json", "--from", "rossi")
        assert r.code == 1 and json.loads(r.out)["damaged_indexes"] == [full], r.err
    # once removed by hand, reindex builds it again
    os.unlink(hf)
    assert [i["snapshot"] for i in json.loads(w.ok("reindex", "--json").out)["indexed"]] == [full]
    assert len(find(w, "--from", "rossi")["messages"]) == 4


# --------------------------------------------------------------------------- a week of mail

def week(tmp_path):
    """A 7-day chain: day 1 the awkward store, then each day deliveries, expunges, moves and
    flag changes, backed up every night; returns (world, snapshot ids, per-day expected counts)."""
    w = World(tmp_path)
    m = w.mail = awkward_store(w.store)
    w.write_config()
    w.ok("init", "local")
    w.ok("backup", "--target", "local")
    days: list[dict] = [{}]

    def count(mailbox, folder, kind):
        c = days[-1].setdefault((mailbox, folder), {"added": 0, "removed": 0, "moved_in": 0, "moved_out": 0,
                                                        "reflagged": 0})
        c[kind] += 1

    def deliver(tag, mailbox, folder="INBOX", sub="new", flags=""):
        subj = f"Consegna {tag} perché sì"
        data = (f"Message-ID: <{tag}@week.example.it>\nDate: Mon, 3 Nov 2025 09:00:00 +0100\n"
                f"From: Fornitore <fornitore@week.example.it>\nTo: {mailbox}\nSubject: {subj}\n\n"
                f"corpo {tag}\n").encode()
        m.add(tag, mailbox, folder, data, sub=sub, flags=flags)
        count(mailbox, folder, "added")

    def expunge(tag):
        x = m.expunge(tag)
        count(x.mailbox, x.folder, "removed")

    def move(tag, folder):
        old = m.msgs[tag].folder
        x = m.move(tag, folder)
        count(x.mailbox, old, "moved_out")
        count(x.mailbox, folder, "moved_in")

    def reflag(tag, flags):
        before = m.msgs[tag].flags
        x = m.reflag(tag, flags)
        if x.flags != before:                # new/ -> cur/ alone is no flag change
            count(x.mailbox, x.folder, "reflagged")

    script = {
        2: lambda: (deliver("d2a", "anna@example.it"), deliver("d2b", "luca@other.it", "Trash", "cur", "S"),
                    reflag("utf8-b-subject.eml", "S")),
        3: lambda: (expunge("strasse.eml"), expunge("koi8-r.eml"), move("folded.eml", "Trash"),
                    deliver("d3a", "mario@example.it", "Posta inviàta", "cur", "S")),
        4: lambda: (deliver("d4a", "anna@example.it"), deliver("d4b", "anna@example.it"), reflag("d2a", "S"),
                    move("crlf.eml", "Archivio/2024"), reflag("iso-date.eml", "FRS")),
        5: lambda: (expunge("d4b"), move("d2a", "Archivio/2024"), reflag("cpython-msg_01.eml", "")),
        6: lambda: (expunge("d4a"), deliver("d6a", "luca@other.it"), move("windows-1252.eml", "INBOX"),
                    reflag("windows-1252.eml", "FS")),
        7: lambda: (expunge("d2b"), expunge("no-date.eml"), reflag("d6a", "RS"), deliver("d7a", "mario@example.it")),
    }
    for day in range(2, 8):
        days.append({})
        script[day]()
        w.ok("backup", "--target", "local")
    ids = snaps(w)
    assert len(ids) == 7 and ids[0].endswith("-full")
    return w, ids, days


def test_a_message_deleted_on_day_3_is_last_seen_on_day_2(tmp_path):
    w, ids, _ = week(tmp_path)
    out = json.loads(w.ok("reindex", "--json").out)
    assert out["indexed"] == [] and out["already_indexed"] == ids     # every backup indexed itself
    res = find(w, "--message-id", "strasse-1@example.de")
    [m] = res["messages"]
    assert (m["first_seen"], m["last_seen"], m["snapshots"], m["in_newest"]) == (ids[0], ids[1], 2, False)
    assert res["not_indexed"] == []
    # delivered on day 4 and expunged on day 5 (and deleted content is still found)
    [m] = find(w, "--message-id", "d4b@week")["messages"]
    assert (m["first_seen"], m["last_seen"], m["folder"]) == (ids[3], ids[3], "INBOX")
    # moved on day 3: two rows, the old folder up to day 2, Trash from day 3 on
    rows = sorted((m["folder"], m["first_seen"], m["last_seen"]) for m in find(w, "--message-id", "folded.2025")["messages"])
    src = next(f for n, f in zip(AWKWARD, FOLDERS * 20) if n == "folded.eml")
    assert rows == sorted([(src, ids[0], ids[1]), ("Trash", ids[2], ids[6])])
    # flags as in the last snapshot that has it
    [m] = find(w, "--message-id", "q-split-7")["messages"]
    [m2] = [x for x in find(w, "--message-id", "utf8b.001")["messages"]]
    assert m2["maildir_flags"] == "S"
    # the newest snapshot that has a message, for restore: d2a moved on day 5
    rows = {m["folder"]: (m["first_seen"], m["last_seen"]) for m in find(w, "--message-id", "d2a@week")["messages"]}
    assert rows == {"INBOX": (ids[1], ids[3]), "Archivio/2024": (ids[4], ids[6])}


def test_diff_counts_per_folder_are_exactly_the_script(tmp_path):
    w, ids, days = week(tmp_path)
    for day in range(2, 8):
        res = json.loads(w.ok("diff", ids[day - 2], ids[day - 1], "--json").out)
        assert (res["a"], res["b"]) == (ids[day - 2], ids[day - 1])
        gotc = {(f["mailbox"], f["folder"]): {k: f[k] for k in ("added", "removed", "moved_in", "moved_out", "reflagged")}
                for f in res["folders"] if any(f[k] for k in ("added", "removed", "moved_in", "moved_out", "reflagged"))}
        assert gotc == days[day - 1], f"day {day}"
    # over the whole week, one mailbox, with the messages listed (indexes read when present)
    w.ok("reindex")
    res = json.loads(w.ok("diff", ids[0], ids[6], "--mailbox", "anna@example.it", "--long", "--json").out)
    assert {f["mailbox"] for f in res["folders"]} == {"anna@example.it"}
    added = [x for f in res["folders"] for x in f["messages"]["added"]]
    assert added == [] or all(x["subject"].startswith("Consegna") for x in added)
    moved = {(f["folder"], x["subject"]) for f in res["folders"] for x in f["messages"]["moved_in"]}
    assert ("Archivio/2024", None) not in moved
    text = w.ok("diff", ids[0], ids[6], "--long").out
    assert "re-flagged" in text and "moved in" in text
    # the same snapshot twice: nothing
    assert json.loads(w.ok("diff", ids[3], ids[3], "--json").out)["totals"] == {
        "added": 0, "removed": 0, "moved_in": 0, "moved_out": 0, "reflagged": 0}


# --------------------------------------------------------------------------- ls

def test_ls_mailboxes_folders_messages_and_raw_directories(awk):
    [snap] = snaps(awk)
    res = json.loads(awk.ok("ls", snap, "--json").out)
    assert res["level"] == "mailboxes"
    by = {i["mailbox"]: i for i in res["items"]}
    assert set(by) == set(BOXES)
    for b in BOXES:
        mine = [m for m in awk.mail.msgs.values() if m.mailbox == b]
        assert by[b]["messages"] == len(mine) and by[b]["bytes"] == sum(len(m.data) for m in mine)
        assert by[b]["folders"] == len(FOLDERS)
    res = json.loads(awk.ok("ls", "latest", "anna@example.it", "--json").out)
    assert [i["folder"] for i in res["items"]][0] == "INBOX"
    assert {i["folder"] for i in res["items"]} == set(FOLDERS)
    for i in res["items"]:
        mine = [m for m in awk.mail.msgs.values() if m.mailbox == "anna@example.it" and m.folder == i["folder"]]
        assert i["messages"] == len(mine) and i["bytes"] == sum(len(m.data) for m in mine)
    res = json.loads(awk.ok("ls", "latest", "luca@other.it/Posta inviàta", "--json").out)
    mine = {m.name: m for m in awk.mail.msgs.values() if (m.mailbox, m.folder) == ("luca@other.it", "Posta inviàta")}
    assert {i["name"] for i in res["items"]} == set(mine)
    strasse = next(i for i in res["items"] if i["message_id"] == "strasse-1@example.de")
    assert strasse["subject"] == "Hauptstraße gesperrt" and strasse["maildir_flags"] == awk.mail.msgs["strasse.eml"].flags
    res = json.loads(awk.ok("ls", "latest", "example.it/anna/Maildir", "--json").out)
    names = {i["name"] for i in res["items"]}
    assert {".Posta invi&AOA-ta", "cur", "new", "tmp"} <= names
    assert "Posta inviàta" in awk.ok("ls", "latest", "anna@example.it").out
    assert awk.run("ls", "latest", "nobody@example.it").code == 2
    assert awk.run("ls", "latest", "no/such/dir").code == 2


# --------------------------------------------------------------------------- restore by message

def test_eml_export_parses_identical_to_the_original(awk):
    out = os.path.join(awk.tmp, "eml")
    r = restore_msgs(awk, "--target", "local", "--since", "1990-01-01", "--to", out, "--format", "eml", "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    files = sorted(os.listdir(out))
    originals = {sha(m.data): m.data for m in awk.mail.msgs.values() if EXPECTED[m.tag] is not None
                 and EXPECTED[m.tag]["date"] is not None}
    assert len(files) == len(originals) == res["count"]
    for name in files:
        data = open(os.path.join(out, name), "rb").read()
        orig = originals[sha(data)]
        assert data == orig
        assert name.endswith(f"-{sha(data)[:12]}.eml") and name[:4].isdigit()
        a = email.message_from_bytes(data, policy=email.policy.default)
        b = email.message_from_bytes(orig, policy=email.policy.default)
        assert a.as_bytes() == b.as_bytes() and a.items() == b.items()
        assert oct(os.stat(os.path.join(out, name)).st_mode & 0o777) == "0o600"
    assert any("hauptstrasse-gesperrt" in f for f in files)
    # a message held in two folders is written once; a non-empty destination is refused
    r = restore_msgs(awk, "--target", "local", "--subject", "strasse", "--to", out, "--format", "eml")
    assert r.code == 3 and "not empty" in r.err


def test_restore_to_a_directory_is_a_maildir_tree(awk):
    out = os.path.join(awk.tmp, "tree")
    r = restore_msgs(awk, "--target", "local", "--message-id", "dup-42@example.it", "--to", out, "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["count"] == 2 and res["format"] == "maildir"
    for n in ("dup-message-id-1.eml", "dup-message-id-2.eml"):
        m = awk.mail.msgs[n]
        p = os.path.join(out, os.path.relpath(awk.mail.path(m), awk.store))
        assert open(p, "rb").read() == m.data
        assert os.stat(p).st_mtime == m.mtime
        d = os.path.dirname(os.path.dirname(p))
        assert all(os.path.isdir(os.path.join(d, s)) for s in ("cur", "new", "tmp"))
        assert open(os.path.join(d, "dovecot-keywords")).read() == "0 $Label1\n"
    # only those two messages and their folders' keyword files
    dups = [awk.mail.msgs[n] for n in ("dup-message-id-1.eml", "dup-message-id-2.eml")]
    files = sorted(os.path.relpath(os.path.join(dp, f), out) for dp, _, fns in os.walk(out) for f in fns)
    want = {os.path.relpath(awk.mail.path(m), awk.store) for m in dups}
    want |= {os.path.join(os.path.dirname(os.path.dirname(p)), "dovecot-keywords") for p in want}
    assert files == sorted(want)


def test_dry_run_lists_and_writes_nothing(awk):
    out = os.path.join(awk.tmp, "nothing")
    before = tree(awk.store)
    r = restore_msgs(awk, "--target", "local", "--subject", "caffe", "--to", out, "--dry-run", "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["dry_run"] and res["count"] == 3 and res["files"] == 0
    assert not os.path.exists(out)
    r = restore_msgs(awk, "--target", "local", "--subject", "caffe", "--mailbox", "anna@example.it", "--dry-run")
    assert r.code in (0, 1) and "nothing written" in r.out
    assert tree(awk.store) == before
    # usage errors: no message filter, eml without --to, live without --mailbox
    assert restore_msgs(awk, "--target", "local", "--to", out, "--format", "eml", "--mailbox", "anna@example.it").code == 2
    assert restore_msgs(awk, "--target", "local", "--subject", "x", "--format", "eml").code == 2
    assert restore_msgs(awk, "--target", "local", "--subject", "x").code == 2
    assert not os.path.exists(out)


def test_restore_at_a_time_takes_that_snapshot(tmp_path):
    w, ids, _ = week(tmp_path)
    w.ok("reindex")
    out = os.path.join(w.tmp, "at")
    # windows-1252.eml moved to INBOX and re-flagged FS on day 6; at day 5 it was where it started
    r = restore_msgs(w, "--target", "local", ids[4], "--message-id", "cp1252-offer", "--to", out, "--json")
    assert r.code == 0, r.err
    [m] = json.loads(r.out)["messages"]
    assert m["snapshot"] == ids[4] and m["folder"] != "INBOX"
    out2 = os.path.join(w.tmp, "newest")
    [m] = json.loads(restore_msgs(w, "--target", "local", "--message-id", "cp1252-offer", "--to", out2,
                                  "--json").out)["messages"]
    assert m["snapshot"] == ids[6] and m["folder"] == "INBOX" and m["maildir_flags"] == "FS"
    # deleted on day 3: restored from day 2, the newest that has it
    out3 = os.path.join(w.tmp, "deleted")
    [m] = json.loads(restore_msgs(w, "--target", "local", "--message-id", "strasse-1", "--to", out3,
                                  "--json").out)["messages"]
    assert m["snapshot"] == ids[1]


@pytest.mark.skipif(os.geteuid() != 0, reason="Dovecot's vmail uid needs root")
def test_restore_by_message_id_into_live_dovecot(dovecot_factory, tmp_path):
    from tests.fixtures.imapstate import capture_state

    users = ["anna@example.it", "mario@example.it"]
    live = dovecot_factory(users)
    mail = MailStore(str(live.vmail_root), uid=5000)
    for u in users:
        for f in ("INBOX", "Archivio/2024", "Posta inviàta"):
            mail.folder_dir(u, f)
    kw = os.path.join(mail.folder_dir("anna@example.it", "Posta inviàta"), "dovecot-keywords")
    with open(kw, "w") as f:
        f.write("0 $Label1\n1 Importante\n")
    os.chown(kw, 5000, 5000)
    for i, n in enumerate(AWKWARD[:24]):
        if EXPECTED[n] is None:
            continue
        folder = ["INBOX", "Archivio/2024", "Posta inviàta"][i % 3]
        mail.add(n, users[i % 2], folder, (DATA / n).read_bytes(), flags=["S", "FS", "RS"][i % 3])
    mail.add("target", "anna@example.it", "Posta inviàta",
             b"Message-ID: <deleted-last-week@example.it>\nDate: Mon, 24 Nov 2025 10:00:00 +0100\n"
             b"From: Capo <capo@example.it>\nSubject: Contratto firmato\n\nIl contratto.\n", flags="FSb")
    w = World(tmp_path)
    w.store = str(live.vmail_root)
    w.write_config()
    with open(w.config) as f:
        text = f.read().replace("[source]\n", f'[source]\ndovecot_config = "{live.config_file}"\n')
    with open(w.config, "w") as f:
        f.write(text)
    at_backup = capture_state(live, users)
    w.ok("init", "local")
    w.ok("backup", "--target", "local")
    w.ok("reindex")
    # the user deletes it (and empties the trash)
    c = live.imap("anna@example.it")
    c.select('"Posta invi&AOA-ta"')
    typ, data = c.search(None, "HEADER", "Message-ID", "deleted-last-week")
    assert typ == "OK" and data[0]
    c.store(data[0].decode().replace(" ", ","), "+FLAGS", "\\Deleted")
    c.expunge()
    c.logout()
    before = capture_state(live, users)
    r = restore_msgs(w, "--target", "local", "--mailbox", "anna@example.it", "--message-id",
                     "<deleted-last-week@example.it>", "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["count"] == 1 and "Restored-" in res["destination"]
    after = capture_state(live, users)
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    for user in users:
        for folder, st in before[user]["folders"].items():
            assert after[user]["folders"][folder] == st, (user, folder)
    extra = set(after["anna@example.it"]["folders"]) - set(before["anna@example.it"]["folders"])
    assert extra == {f"Restored-{day}", f"Restored-{day}/Posta inviàta"} or extra == {f"Restored-{day}/Posta inviàta"}
    assert set(after["mario@example.it"]["folders"]) == set(before["mario@example.it"]["folders"])
    msgs = after["anna@example.it"]["folders"][f"Restored-{day}/Posta inviàta"]["messages"]
    [(_, mid, flags, kws)] = msgs
    assert mid == "<deleted-last-week@example.it>"
    orig = next(x for x in at_backup["anna@example.it"]["folders"]["Posta inviàta"]["messages"]
                if x[1] == "<deleted-last-week@example.it>")
    assert (flags, kws) == (orig[2], orig[3]) == (("\\Flagged", "\\Seen"), ("Importante",))
    assert f"Restored-{day}/Posta inviàta" in after["anna@example.it"]["subscriptions"]
    for dp, dns, fns in os.walk(os.path.join(str(live.vmail_root), "example.it", "anna", "Maildir")):
        for n in dns + fns:
            st = os.lstat(os.path.join(dp, n))
            assert (st.st_uid, st.st_gid) == (5000, 5000), os.path.join(dp, n)


def test_find_across_chains(awk):
    awk.ok("backup", "--target", "local", "--full")          # a second chain stores everything again
    awk.mail.expunge("strasse.eml")
    awk.ok("backup", "--target", "local")
    ids = snaps(awk)
    assert len(ids) == 3 and ids[1].endswith("-full")
    res = find(awk, "--message-id", "strasse-1")
    assert res["not_indexed"] == []                  # every backup writes its header index
    awk.ok("reindex")                                  # nothing to do
    [m] = find(awk, "--message-id", "strasse-1")["messages"]
    assert (m["first_seen"], m["last_seen"], m["snapshots"], m["in_newest"]) == (ids[0], ids[1], 2, False)
    out = os.path.join(awk.tmp, "eml")
    [r] = json.loads(restore_msgs(awk, "--target", "local", "--message-id", "strasse-1", "--to", out, "--format",
                                  "eml", "--json").out)["messages"]
    assert r["snapshot"] == ids[1]
    assert open(os.path.join(out, r["path"]), "rb").read() == (DATA / "strasse.eml").read_bytes()


# --------------------------------------------------------------------------- the local page-key cache

def _cache_files(w) -> dict[str, bytes]:
    root = os.path.join(w.state, "pagekeys")
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(root) for f in fs}


WEEK_QUERIES = [["--message-id", "strasse-1@example.de"], ["--message-id", "d2a@week"], ["--subject", "consegna"],
                ["--from", "rossi"], ["--subject", "caffe"], ["--since", "2025-11-17"], ["--to", "andre@"],
                ["--mailbox", "anna@example.it", "--subject", "consegna"]]


def test_find_answers_the_same_with_the_page_key_cache_warm_cold_or_damaged(tmp_path):
    """dmbackup.engine.pagekeys: the backups leave in state_dir which contents each message
    page they stored lists; find skips the pages that list none of what it looks for. The
    answers are the same with the cache as the backups left it, with no cache (find rebuilds
    it), and with every cache file damaged (ignored, rebuilt)."""
    w, ids, _ = week(tmp_path)
    left = _cache_files(w)
    owners = {os.path.basename(p) for p in left}
    assert ids[0] in owners and owners <= set(ids)          # the full backup stored every folder's page
    warm = [find(w, *q) for q in WEEK_QUERIES]
    assert all(r["exit_code"] == 0 for r in warm) and sum(r["count"] for r in warm) > 10
    shutil.rmtree(os.path.join(w.state, "pagekeys"))
    assert [find(w, *q) for q in WEEK_QUERIES] == warm
    rebuilt = _cache_files(w)
    assert rebuilt and {os.path.basename(p) for p in rebuilt} <= set(ids)
    for rel, data in rebuilt.items():               # one key prefix flipped in every file
        bad = bytearray(data)
        bad[len(data) // 2] ^= 0x10
        with open(os.path.join(w.state, "pagekeys", rel), "wb") as f:
            f.write(bytes(bad))
    assert [find(w, *q) for q in WEEK_QUERIES] == warm
    assert _cache_files(w) == rebuilt                 # ignored and written again as it was


def test_the_page_keys_of_pruned_snapshots_are_forgotten(awk):
    awk.ok("backup", "--target", "local", "--full")          # a second chain
    chains = {p.split(os.sep)[1] for p in _cache_files(awk)}
    assert len(chains) == 2
    awk.ok("prune", "--target", "local", "--keep-chains", "1")
    find(awk, "--subject", "caffe")
    assert len({p.split(os.sep)[1] for p in _cache_files(awk)}) == 1


def test_find_answers_the_same_on_one_or_two_processors(tmp_path, monkeypatch):
    """dmbackup.engine.forkpair: find resolves half of the rows in a forked child. Every
    answer, the page counts, the page keys the child learned (kept by the parent) and the
    warnings about a damaged page are those of a search in one process."""
    from dmbackup.engine import find as find_mod, forkpair

    from tests.engine.test_forkpair import count_forks

    w, ids, _ = week(tmp_path)
    forks = count_forks(monkeypatch)
    logged = []
    real_search = find_mod.search

    def search(*a, **k):
        s = real_search(*a, **k)
        logged.append((s.pages_read, s.pages_skipped))
        return s

    monkeypatch.setattr(find_mod, "search", search)

    real_in_two = forkpair.in_two

    def whole(work, first, second, **_):            # one process, one pass over every row
        if isinstance(first, str):                  # (the catalogs and the header indexes)
            return work(first), work(second)
        return work(first + second), ({}, {}, 0, 0, [])     # (each half page by page)

    def answers(two: bool):
        monkeypatch.setattr(forkpair, "MIN_ITEMS", 1)
        monkeypatch.setattr(forkpair, "in_two", real_in_two if two else whole)
        shutil.rmtree(os.path.join(w.state, "pagekeys"), ignore_errors=True)
        logged.clear()
        out = []
        for q in WEEK_QUERIES:
            r = w.run("find", "--json", *q)
            out.append((r.code, json.loads(r.out), r.err.splitlines()[1:]))    # (not the log line)
        return out, list(logged), _cache_files(w)

    one = answers(False)
    assert not forks
    two = answers(True)
    assert len(forks) > len(WEEK_QUERIES), forks    # (catalogs beside indexes, and rows to resolve)
    assert two == one
    assert all(c == 0 for c, _, _ in one[0]) and sum(r["count"] for _, r, _ in one[0]) > 10
    assert sum(p for p, _ in one[1]) > 0
    # a damaged page: the same warning and exit code from the child's half as from one process
    pages = os.path.join(w.repo_dir, "dmbackup", "mx.test", "chains")
    victim = sorted(os.path.join(d, f) for d, _, fs in os.walk(pages) for f in fs if f.endswith(".pages"))[0]
    data = bytearray(open(victim, "rb").read())
    for i in range(len(data) // 2, len(data), 256):     # the pages of the second half of the full
        data[i] ^= 0x01
    with open(victim, "wb") as f:
        f.write(bytes(data))
    bad_one, bad_two = answers(False)[0], answers(True)[0]
    assert bad_two == bad_one and any(c == 4 for c, _, _ in bad_one), [(c, e) for c, _, e in bad_one]
    assert any("cannot be read" in x for _, r, _ in bad_one for x in r["warnings"])
    # and a damaged header index, searched by the child while the parent reads the catalogs
    hidx = sorted(os.path.join(d, f) for d, _, fs in os.walk(pages) for f in fs if f.endswith(".hidx"))[0]
    data = bytearray(open(hidx, "rb").read())
    data[-5] ^= 0x01
    with open(hidx, "wb") as f:
        f.write(bytes(data))
    bad_one, bad_two = answers(False)[0], answers(True)[0]
    assert bad_two == bad_one
    assert all(r["damaged_indexes"] for _, r, _ in bad_one)


def test_rows_of_one_base_page_are_merged_as_row_by_row(tmp_path, monkeypatch):
    """find merges the entries of a stored base page that no row's delta touches once for all
    the rows (nights) that use the page (``_merge_base``). On the scripted week (deliveries,
    expunges, moves, flag renames, each night a delta on the full's pages), for every query and
    for one that matches every message, what is found is exactly what merging every entry of
    every row one by one (``MessageWalker.entries``, ``_merge``) finds."""
    from dmbackup.engine import find as find_mod

    w, _, _ = week(tmp_path)
    real_resolve, real_base = find_mod._resolve, find_mod._merge_base
    shared = []

    def merge_base(found, md, base, rows):
        if len(rows) > 1 and any(n in r[4] for r in rows for n in base):
            shared.append(md)               # several nights, and a delta that touches the page
        return real_base(found, md, base, rows)

    def resolve(walker, glist, app, *, allowed):
        got = real_resolve(walker, glist, app, allowed=allowed)
        want: dict = {}
        for gi, (chain, row, md, idxs) in enumerate(glist):
            mask = sum(1 << i for i in idxs)
            for e in walker.entries(chain, row).values():
                find_mod._merge(want, (md.mailbox, md.folder_dir, e.hash[:32]),
                                [idxs[0], idxs[-1], mask, e, md, gi, md.sub == "cur"])
        assert got[0] == want and not got[1]
        checked.append(len(want))
        return got

    checked: list[int] = []
    monkeypatch.setattr(find_mod, "_resolve", resolve)
    monkeypatch.setattr(find_mod, "_merge_base", merge_base)
    for q in WEEK_QUERIES + [["--since", "1970-01-01"]]:
        r = w.run("find", "--json", *q)
        assert r.code == 0, r.err
    assert len(checked) == len(WEEK_QUERIES) + 1 and checked[-1] > 20, checked
    assert shared, "no base page was shared by nights whose deltas touch it"


def test_a_search_lets_go_of_each_page_after_its_last_row(tmp_path, monkeypatch):
    """What a search holds grows with the messages it finds, not with the pages it reads: the
    rows are resolved page by page, and the walker forgets a page's entries once its last row
    is merged (one page in its cache at a time), with every answer unchanged (the tests above)."""
    from dmbackup.engine import find as find_mod, forkpair
    from dmbackup.engine.msgscan import MessageWalker

    w, _, _ = week(tmp_path)
    monkeypatch.setattr(forkpair, "usable", lambda allowed, items: False)      # (the spy sees one process)
    cached, slim = [], []
    real_base = MessageWalker._reduced_base

    def spy(self, chain, row):
        got = real_base(self, chain, row)
        cached.append(len(self._base))
        slim.extend(e.extents is None for e in got.values())
        return got

    monkeypatch.setattr(MessageWalker, "_reduced_base", spy)
    for q in WEEK_QUERIES + [["--since", "1970-01-01"]]:
        r = w.run("find", "--json", *q)
        assert r.code == 0, r.err
    assert cached and max(cached) == 1, cached
    assert slim and all(slim)               # find keeps no extents (it reads no volume)
    assert find_mod.MessageWalker is MessageWalker


def test_a_search_without_header_filter_reads_the_records_of_what_it_finds(tmp_path, monkeypatch):
    """Without a header filter (``--mailbox``/``--folder`` alone, or nothing) every indexed
    message matches: the indexes give their keys only, and the records are read for the
    messages found, not for the whole store. The answers (messages, warnings, damaged indexes,
    exit codes) are those of the search that reads every record, also with a damaged index."""
    from dmbackup.engine import find as find_mod

    w, _, _ = week(tmp_path)
    loaded = []
    real_load = find_mod.load_records

    def load(*a, **k):
        got = real_load(*a, **k)
        loaded.append(len(got[0]))
        return got

    monkeypatch.setattr(find_mod, "load_records", load)
    queries = [["--mailbox", "anna@example.it"], ["--folder", "Trash"], [],
               ["--mailbox", "luca@other.it", "--folder", "INBOX"], ["--mailbox", "nobody@example.it"]]

    def answers(keys_first: bool):
        monkeypatch.setattr(find_mod, "KEYS_FIRST", keys_first)
        out = []
        for q in queries:
            loaded.clear()
            r = w.run("find", "--json", *q)
            out.append((r.code, json.loads(r.out), r.err.splitlines()[1:], list(loaded)))
        return out

    every, first = answers(False), answers(True)
    assert [o[:3] for o in first] == [o[:3] for o in every]
    whole = every[2][3][0]
    assert whole > 20 and all(o[3] == [whole] for o in every)
    for (_, res, _, n), q in zip(first, queries):
        # the records read: those of the messages found (a message in two folders: one record)
        assert n == ([len({m["sha256"] for m in res["messages"]})] if res["messages"] else []), (q, n)
    assert first[0][3][0] < whole and first[2][3][0] == len({m["sha256"] for m in first[2][1]["messages"]})
    # a damaged index: reported the same way, its messages not found, either way
    hidx = sorted(w.chain_files(".hidx"))[0]
    _flip(hidx, 40)
    every, first = answers(False), answers(True)
    assert [o[:3] for o in first] == [o[:3] for o in every]
    assert all(c == 1 and res["damaged_indexes"] for c, res, _, _ in first)


def test_an_index_whose_record_fails_only_when_read_is_reported_damaged(tmp_path, monkeypatch):
    """A header index that opens (sealed with the repository's key) but holds a text that is
    not UTF-8: the keys alone do not show it; when a search without a header filter then reads
    the record of a message it found, the index is reported damaged and its messages are not
    found, as by the search that reads every record. (A bad text in a record no search needs
    is not noticed, as ``ls`` and ``diff``, which read records by key, do not notice it.)"""
    from dmbackup.archive.hidx import read_hidx, seal_hidx
    from dmbackup.engine import find as find_mod

    from tests.engine.forge import open_repo

    w, ids, _ = week(tmp_path)
    repo = open_repo(w)
    day2 = next(s for s in repo.snapshots() if s.id == ids[1])
    plain = read_hidx(repo, day2)
    i = plain.find("Consegna d2a".encode())
    assert i > 0
    [path] = [p for p in w.chain_files(".hidx") if ids[1] in os.path.basename(p)]
    with open(path, "wb") as f:
        f.write(seal_hidx(plain[:i] + b"\xff" + plain[i + 1:], repo.keys.catalog, repo.id, day2.chain, day2.id))
    for q in (["--mailbox", "anna@example.it"], ["--folder", "Trash"]):
        out = []
        for keys_first in (False, True):
            monkeypatch.setattr(find_mod, "KEYS_FIRST", keys_first)
            r = w.run("find", "--json", *q)
            out.append((r.code, json.loads(r.out)))
        assert out[0] == out[1], q
        code, res = out[1]
        assert code == 1 and res["damaged_indexes"] == [ids[1]] and "UTF-8" in " ".join(res["warnings"])
        assert not {"d2a@week.example.it", "d2b@week.example.it"} & {m["message_id"] for m in res["messages"]}
        assert res["messages"]


def test_dates_are_written_as_datetime_writes_them():
    """``iso_date`` (``time.gmtime``) says what ``utctime.iso`` of a ``datetime`` says, and
    None where a ``datetime`` cannot hold the time (a Date header can say anything)."""
    import random

    from dmbackup import utctime
    from dmbackup.engine.find import iso_date

    def by_datetime(epoch):
        try:
            return utctime.iso(datetime.fromtimestamp(epoch, tz=timezone.utc))
        except (OverflowError, OSError, ValueError):
            return None

    rnd = random.Random(15)
    edges = [-62135596801, -62135596800, 253402300799, 253402300800, -1, 0, 1 << 31, 1 << 63, -(1 << 63), 1 << 80]
    for epoch in edges + [rnd.randint(-(1 << 40), 1 << 40) for _ in range(20_000)]:
        assert iso_date(epoch) == by_datetime(epoch), epoch
    assert iso_date(None) is None and iso_date(1764556200) == "2025-12-01T02:30:00Z"
