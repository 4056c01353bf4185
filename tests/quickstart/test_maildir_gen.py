"""dmbackup.quickstart.maildir_gen, the Maildir writer shared by the sample store, the bench
corpus and the tests' mail simulator, and the seeded sample store built on it."""

from __future__ import annotations

import hashlib
import os
import re
import stat

import pytest

from dmbackup.quickstart import maildir_gen as mg
from dmbackup.quickstart.sample import generate

NAME_RE = re.compile(r"^\d+\.M\d+P\d+\.[a-z0-9.-]+,S=(\d+),W=\d+(:2,[A-Za-z]*)?$")


def test_message_names_are_dovecots():
    base = mg.message_base(1793000000, 123, 4567, "mail", 1000, 1020)
    assert base == "1793000000.M123P4567.mail,S=1000,W=1020"
    assert mg.message_base(1793000000, 1, 2, "mx", 10) == "1793000000.M1P2.mx,S=10"
    assert mg.message_name(base, "new", "S") == base                       # new/: no info
    assert mg.message_name(base, "cur", "SaRF") == base + ":2,FRSa"        # sorted, keywords last
    assert mg.message_name(base, "cur") == base + ":2,"
    assert mg.flags_sorted("SSRa") == "RSa"


def test_write_message(tmp_path):
    fdir = mg.make_folder(str(tmp_path / "Maildir"), "INBOX")
    p = mg.write_message(fdir, "cur", "1.M1P1.h,S=4", b"mail", flags="S", mtime=1700000000)
    assert p == os.path.join(fdir, "cur", "1.M1P1.h,S=4:2,S")
    st = os.stat(p)
    assert open(p, "rb").read() == b"mail" and st.st_mtime == 1700000000
    assert stat.S_IMODE(st.st_mode) == 0o600
    q = mg.write_message(fdir, "new", "2.M1P1.h,S=4", b"mail", flags="S", mode=0o644)
    assert os.path.basename(q) == "2.M1P1.h,S=4" and stat.S_IMODE(os.stat(q).st_mode) == 0o644 & ~_umask()


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


def test_folders_get_modified_utf7_maildirpp_names(tmp_path):
    md = mg.mailbox_dir(str(tmp_path), "anna@example.it")
    assert md == os.path.join(str(tmp_path), "example.it", "anna", "Maildir")
    assert mg.make_folder(md, "INBOX") == md
    posta = mg.make_folder(md, "Posta inviàta", marker=True, marker_mtime=1700000000)
    assert posta == os.path.join(md, ".Posta invi&AOA-ta")
    assert mg.folder_path(md, "Archivio/2024") == os.path.join(md, ".Archivio.2024")
    assert sorted(os.listdir(posta)) == ["cur", "maildirfolder", "new", "tmp"]
    assert os.stat(os.path.join(posta, "maildirfolder")).st_mtime == 1700000000
    assert not os.path.exists(os.path.join(md, "maildirfolder"))           # never in INBOX
    mg.make_folder(md, "Posta inviàta")                                    # again: no error


def test_uidlist_round_trip():
    entries = [(1, "1.M1P1.h,S=4"), (7, "2.M2P2.h,S=5")]
    data = mg.uidlist_bytes(1700000000, 8, "ab" * 16, entries)
    assert data == b"3 V1700000000 N8 G" + b"ab" * 16 + b"\n1 :1.M1P1.h,S=4\n7 :2.M2P2.h,S=5\n"
    header, back = mg.parse_uidlist(data)
    assert header == {"V": "1700000000", "N": "8", "G": "ab" * 16} and back == entries
    assert mg.uidlist_bytes(1, 1, None, []) == b"3 V1 N1\n"
    with pytest.raises(ValueError):
        mg.parse_uidlist(b"1 12345 2\n")                                    # version 1: not ours


def test_keywords_and_subscriptions():
    assert mg.keywords_bytes(["$Label1", "Importante"]) == b"0 $Label1\n1 Importante\n"
    assert mg.subscriptions_bytes(["Sent", "Posta inviàta"]) == "Sent\nPosta inviàta\n".encode()
    assert mg.subscriptions_bytes(["Sent"], v2_header=True) == b"V\t2\n\nSent\n"


def test_replace_file(tmp_path):
    p = str(tmp_path / "dovecot-uidlist")
    mg.write_file(p, b"old")
    mg.replace_file(p, b"new")
    assert open(p, "rb").read() == b"new" and os.listdir(tmp_path) == ["dovecot-uidlist"]


# --- the sample store ----------------------------------------------------------------------------
def digest(root: str) -> str:
    """Names, contents and the mtimes the generator sets (messages'), of every file."""
    h = hashlib.sha256()
    for dp, dns, fns in sorted(os.walk(root)):
        dns.sort()
        for n in sorted(fns):
            p = os.path.join(dp, n)
            h.update(os.fsencode(os.path.relpath(p, root)) + b"\0")
            if os.path.islink(p):
                h.update(os.fsencode(os.readlink(p)))
                continue
            h.update(hashlib.sha256(open(p, "rb").read()).digest())
            if os.path.basename(dp) in ("cur", "new"):
                h.update(str(os.stat(p).st_mtime_ns).encode())
    return h.hexdigest()


def test_the_sample_is_seeded(tmp_path):
    a = generate(str(tmp_path / "a"), big_bytes=1000)
    b = generate(str(tmp_path / "b"), big_bytes=1000)
    c = generate(str(tmp_path / "c"), big_bytes=1000, seed=2)
    assert (a.messages, a.users, a.bytes) == (b.messages, b.users, b.bytes)
    assert digest(a.root) == digest(b.root) != digest(c.root)


def test_the_sample_has_the_awkward_cases(tmp_path):
    info = generate(str(tmp_path / "vmail"), domains=1, users_per_domain=1, messages_per_folder=4,
                    big_bytes=50_000)
    assert info.users == ["mario@example.it"] and info.messages == 7 * 4
    md = os.path.join(info.root, "example.it", "mario", "Maildir")
    names = set(os.listdir(md))
    assert {".Posta invi&AOA-ta", ".Archivio.2024", ".Empty folder", "subscriptions", "subscriptions.link",
            "dovecot.list.index.log", "note with spaces & àccents.txt"} <= names
    assert os.fsencode("raw-\udcff-name") in set(os.listdir(os.fsencode(md)))
    assert os.path.islink(os.path.join(md, "subscriptions.link"))
    assert os.path.getsize(os.path.join(md, "dovecot.list.index.log")) == 0
    assert open(os.path.join(md, "subscriptions"), "rb").read().startswith(b"V\t2\n\nSent\n")
    for folder in ("INBOX", "Sent", "Posta inviàta"):
        fdir = mg.folder_path(md, folder)
        header, entries = mg.parse_uidlist(open(os.path.join(fdir, "dovecot-uidlist"), "rb").read())
        on_disk = {n.split(":", 1)[0] for s in ("cur", "new") for n in os.listdir(os.path.join(fdir, s))}
        assert {b for _, b in entries} == on_disk and int(header["N"]) == 5
        assert len(os.listdir(os.path.join(fdir, "new"))) == 1
        for s in ("cur", "new"):
            for n in os.listdir(os.path.join(fdir, s)):
                m = NAME_RE.match(n)
                assert m and (m.group(2) is None) == (s == "new"), n
                assert int(m.group(1)) == os.path.getsize(os.path.join(fdir, s, n))
        assert os.path.exists(os.path.join(fdir, "dovecot-keywords"))      # message 0 and 3 carry keyword a
    inbox_sizes = [os.path.getsize(os.path.join(md, s, n)) for s in ("cur", "new")
                   for n in os.listdir(os.path.join(md, s))]
    assert max(inbox_sizes) > 50_000                                        # the big attachment
