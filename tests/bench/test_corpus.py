"""The benchmark corpus generator and its "day of mail" mutator, on tiny stores.

What must hold for the benchmark to mean anything: the same seed gives the same bytes,
names and mtimes (whatever the number of worker processes); the layout is the one Dovecot
serves (checked against Dovecot's own imap binary when it is installed: it must keep our
UIDs, UIDVALIDITY, UIDNEXT, keywords and subscriptions); and the mutator does exactly
what its report says, nothing more.
"""

from __future__ import annotations

import email
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import zlib

import pytest

from bench import corpus, mutate

TINY = corpus.Params(seed=7, messages=160, users=3, domains=2, attach_rate=0.05)
NAME_RE = re.compile(r"^(\d+)\.M(\d+)P(\d+)\.([a-z0-9.-]+),S=(\d+),W=(\d+)(:2,([A-Za-z]*))?$")
IMAP = "/usr/lib/dovecot/imap"


def snapshot(root: str) -> dict[str, tuple[int, int, str]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, int(st.st_mtime),
                                             hashlib.sha1(open(p, "rb").read()).hexdigest())
    return out


def maildirs(root: str) -> list[str]:
    return sorted(os.path.join(root, d, u, "Maildir") for d in os.listdir(root)
                  for u in os.listdir(os.path.join(root, d)))


def folders(mdir: str) -> list[str]:
    return [mdir] + sorted(os.path.join(mdir, n) for n in os.listdir(mdir)
                           if n.startswith(".") and os.path.isdir(os.path.join(mdir, n)))


def messages(fdir: str) -> dict[str, str]:
    """base name -> path of every message in a folder."""
    out = {}
    for sub in ("new", "cur"):
        for n in os.listdir(os.path.join(fdir, sub)):
            out[n.split(":", 1)[0]] = os.path.join(fdir, sub, n)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("corpus") / "vmail")
    info = corpus.generate(root, TINY, jobs=2)
    return root, info


def test_same_seed_same_store_whatever_the_workers(store, tmp_path):
    root, info = store
    again = str(tmp_path / "again")
    corpus.generate(again, TINY, jobs=1)
    assert snapshot(again) == snapshot(root)
    assert info["messages"] == TINY.messages and info["users"] == TINY.users


def test_another_seed_another_store(store, tmp_path):
    other = str(tmp_path / "other")
    corpus.generate(other, corpus.Params(**{**TINY.__dict__, "seed": 8}), jobs=1)
    assert snapshot(other) != snapshot(store[0])


def test_layout_is_maildirpp_as_dovecot_writes_it(store):
    root, _ = store
    n_msgs = 0
    for mdir in maildirs(root):
        names = set(os.listdir(mdir))
        assert {"cur", "new", "tmp", "dovecot-uidlist", "subscriptions", "dovecot.list.index",
                "dovecot.list.index.log", "dovecot-uidvalidity"} <= names
        subs = open(os.path.join(mdir, "subscriptions")).read().split()
        assert {"Sent", "Drafts", "Trash", "Archivio.2024", "Posta&AOA-inviata"} <= set(subs)
        for fdir in folders(mdir):
            assert all(os.path.isdir(os.path.join(fdir, s)) for s in ("cur", "new", "tmp"))
            if fdir != mdir:
                assert os.path.isfile(os.path.join(fdir, "maildirfolder"))
            header, entries = corpus.parse_uidlist(open(os.path.join(fdir, "dovecot-uidlist"), "rb").read())
            uids = [u for u, _ in entries]
            assert uids == sorted(set(uids)) and (not uids or uids[-1] < int(header["N"]))
            assert int(header["V"]) > 0 and len(header["G"]) == 32
            msgs = messages(fdir)
            assert set(msgs) == {b for _, b in entries}, fdir
            kw = os.path.join(fdir, "dovecot-keywords")
            letters = set()
            if os.path.exists(kw):
                lines = open(kw).read().splitlines()
                assert all(re.fullmatch(r"\d+ \S+", line) for line in lines)
                letters = {chr(ord("a") + int(line.split()[0])) for line in lines}
            for base, path in msgs.items():
                n_msgs += 1
                name = os.path.basename(path)
                m = NAME_RE.match(name)
                assert m, name
                data = open(path, "rb").read()
                assert int(m.group(5)) == len(data)
                assert int(m.group(6)) == len(data) + data.count(b"\n")
                assert int(os.stat(path).st_mtime) == int(m.group(1))
                in_new = os.path.basename(os.path.dirname(path)) == "new"
                assert (m.group(7) is None) == in_new
                flags = m.group(8) or ""
                assert flags == "".join(sorted(flags))
                assert {c for c in flags if c.islower()} <= letters
    assert n_msgs == TINY.messages


def test_messages_are_rfc5322_and_sized_like_mail(tmp_path):
    root = str(tmp_path / "v")
    # Small attachments keep the test fast; their kind, not their size, is checked here.
    p = corpus.Params(seed=3, messages=400, users=2, domains=1, attach_rate=0.08,
                      attach_median=110 * corpus.KB, attach_max=150 * corpus.KB)
    corpus.generate(root, p, jobs=1)
    sizes, kinds, text = [], {"random": [], "text": []}, []
    for mdir in maildirs(root):
        for fdir in folders(mdir):
            for path in messages(fdir).values():
                data = open(path, "rb").read()
                if b"Content-Disposition: attachment" not in data:
                    sizes.append(len(data))
                    if len(text) < 60:
                        text.append(data)
                msg = email.message_from_bytes(data)
                for h in ("Message-ID", "Date", "From", "To", "Subject", "MIME-Version"):
                    assert msg[h], (h, path)
                for part in msg.walk():
                    if part.get_content_disposition() != "attachment":
                        continue
                    raw = part.get_payload(decode=False).encode()
                    assert 95 * corpus.KB <= len(raw) <= 160 * corpus.KB
                    kind = "text" if part.get_content_type().startswith(("text/", "application/xml")) else "random"
                    kinds[kind].append(len(zlib.compress(raw, 1)) / len(raw))
    assert 4_500 <= statistics.median(sizes) <= 8_000
    # Attachments that are already compressed (photos, zips): only base64's slack is left.
    assert kinds["random"] and min(kinds["random"]) > 0.72
    assert kinds["text"] and max(kinds["text"]) < 0.6
    whole = b"".join(text)
    assert 0.15 < len(zlib.compress(whole, 6)) / len(whole) < 0.5   # text compresses, not absurdly


def test_mutator_does_what_it_says(store, tmp_path):
    src, _ = store
    root = str(tmp_path / "m")
    shutil.copytree(src, root)
    before = snapshot(root)
    rep = mutate.mutate(root, seed=7, day=1)
    after = snapshot(root)
    n = rep["messages_before"]
    assert n == TINY.messages
    assert len(rep["added"]) == round(n * 0.01)
    assert len(rep["renamed"]) == round(n * 0.05)
    assert len(rep["expunged"]) == round(n * 0.005)
    assert len(rep["moved"]) <= round(n * 0.005)

    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    expected = set(rep["added"]) | set(rep["expunged"]) | set(rep["rewritten"])
    for old, new in rep["renamed"] + rep["moved"]:
        expected |= {old, new}
    assert changed == expected
    for path in rep["added"]:
        assert path not in before and path in after
    for path in rep["expunged"]:
        assert path in before and path not in after
    for old, new in rep["renamed"]:
        assert old.split(":")[0].replace("/new/", "/cur/") == new.split(":")[0].replace("/new/", "/cur/")
        assert after[new] == before[old]        # same bytes, same mtime: only the name changed
        assert old != new and "/cur/" in new
    for old, new in rep["moved"]:
        assert os.path.dirname(os.path.dirname(old)) != os.path.dirname(os.path.dirname(new))
        assert os.path.basename(old).split(":")[0] != os.path.basename(new).split(":")[0]
        assert after[new] == before[old]
    assert rep["added_bytes"] == sum(after[p][0] for p in rep["added"])
    # Every folder's uidlist still names exactly the messages present, with fresh UIDs for new ones.
    for mdir in maildirs(root):
        for fdir in folders(mdir):
            header, entries = corpus.parse_uidlist(open(os.path.join(fdir, "dovecot-uidlist"), "rb").read())
            assert set(messages(fdir)) == {b for _, b in entries}
            assert max([u for u, _ in entries] or [0]) < int(header["N"])


def test_mutator_is_deterministic(store, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    shutil.copytree(store[0], a)
    shutil.copytree(store[0], b)
    ra, rb = mutate.mutate(a, seed=7), mutate.mutate(b, seed=7)
    assert mutate.summary(ra) == {**mutate.summary(rb), "root": ra["root"]}
    assert snapshot(a) == snapshot(b)
    rc = mutate.mutate(a, seed=7, day=2)          # the next day changes other messages
    assert set(rc["expunged"]) != set(ra["expunged"])


def _imap(home: str, user: str, script: str) -> str:
    conf = os.path.join(os.path.dirname(home), "dovecot.conf")
    with open(conf, "w") as fh:
        fh.write(f"base_dir = {os.path.dirname(home)}/run\nstate_dir = {os.path.dirname(home)}/state\n"
                 "log_path = /dev/stderr\nssl = no\nprotocols =\nmail_location = maildir:~/Maildir\n")
    env = {"USER": user, "HOME": home, "PATH": "/usr/bin:/bin"}
    p = subprocess.run([IMAP, "-c", conf, "-o", "mail_uid=65534", "-o", "mail_gid=65534"],
                       input=script, env=env, capture_output=True, text=True, timeout=60)
    return p.stdout + p.stderr


@pytest.mark.skipif(not os.access(IMAP, os.X_OK) or os.geteuid() != 0,
                    reason="needs Dovecot's imap binary and root (to hand the store to nobody)")
def test_dovecot_serves_the_store_and_keeps_our_uids(store):
    base = tempfile.mkdtemp(prefix="dmb-bench-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        root = os.path.join(base, "vmail")
        shutil.copytree(store[0], root)
        mutate.mutate(root, seed=7)                  # a mutated store must be as acceptable
        subprocess.run(["chown", "-R", "65534:65534", base], check=True)
        for mdir in maildirs(root):
            home = os.path.dirname(mdir)
            user = f"{os.path.basename(home)}@{os.path.basename(os.path.dirname(home))}"
            for fdir in folders(mdir):
                name = "INBOX" if fdir == mdir else os.path.basename(fdir)[1:]
                header, entries = corpus.parse_uidlist(open(os.path.join(fdir, "dovecot-uidlist"), "rb").read())
                out = _imap(home, user, f'a SELECT "{name}"\nb UID FETCH 1:* (FLAGS)\nc LOGOUT\n')
                errors = [line for line in out.splitlines() if "Error:" in line or "Warning:" in line]
                # Our index files are size-realistic stand-ins: Dovecot rebuilds them, as it may.
                assert all("Corrupted index file" in e for e in errors), errors
                assert "a OK" in out, out
                assert f"[UIDVALIDITY {header['V']}]" in out and f"[UIDNEXT {header['N']}]" in out, (name, out)
                got = sorted(int(u) for u in re.findall(r"FETCH \(UID (\d+)", out))
                assert got == [u for u, _ in entries], name
            out = _imap(home, user, 'l LSUB "" "*"\nz LOGOUT\n')
            subs = open(os.path.join(mdir, "subscriptions")).read().split()
            assert sorted(re.findall(r'\* LSUB \([^)]*\) "\." (\S+)', out)) == sorted(subs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
