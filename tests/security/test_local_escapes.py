"""Terminal escape injection (issue 13, item 12): a file name carrying escape sequences must
never reach the administrator's terminal raw.

A Maildir is written by whoever sends mail or owns a mailbox; its file names are attacker
data. ``ESC ] 0 ; pwned BEL`` retitles an xterm, and other sequences can rewrite what is on
screen, fake a prompt or, on old terminals, answer back into the shell. The test plants such
names in a real store (a message file, a socket that the backup warns about, a folder), runs
the real CLI through a backup with warnings, a verify of a damaged volume and a restore of it,
and checks that stdout and stderr carry no C0/C1 control character except newline, while the
name is still shown, escaped, so the administrator can find the file.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket

from tests.world import World

EVIL = "\x1b]0;pwned\x07"
SHOWN = "\\x1b]0;pwned\\x07"          # how the name must appear on the terminal
CSI = "\x9b2J"                        # the 8-bit C1 form of "clear the screen"
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def evil_world(tmp_path) -> World:
    w = World(tmp_path)
    md = os.path.join(w.store, "example.it", "mario", "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(md, sub))
    with open(os.path.join(md, "cur", "1700000000.M1P1.mail,S=40:2,S"), "wb") as f:
        f.write(b"Subject: plain\r\n\r\nan ordinary message\r\n")
    with open(os.path.join(md, "cur", f"1700000001.M2P2.mail{EVIL}:2,S"), "wb") as f:
        f.write(b"Subject: evil\r\n\r\n" + os.urandom(200_000))
    os.makedirs(os.path.join(md, f".Folder{CSI}", "cur"))
    with open(os.path.join(md, f".Folder{CSI}", "cur", "1700000002.M3P3.mail:2,"), "wb") as f:
        f.write(b"Subject: in an odd folder\r\n\r\nx\r\n")
    w.write_config()
    return w


def assert_clean(r, *where: str) -> None:
    for stream, text in (("stdout", r.out), ("stderr", r.err)):
        bad = CONTROL.search(text)
        assert bad is None, f"raw control character {bad.group()!r} on {stream}: {text!r}"
    shown = r.out + r.err
    for needle in where:
        assert needle in shown, (needle, shown)


def test_names_with_escape_sequences_are_escaped_on_the_terminal(tmp_path):
    w = evil_world(tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    with contextlib.chdir(os.path.join(w.store, "example.it", "mario", "Maildir")):
        sock.bind(f"sock{EVIL}")          # relative: a socket path is limited to 107 bytes
    try:
        w.ok("init", "local")
        # a socket cannot be backed up: the warning names it
        r = w.run("backup", "--target", "local")
    finally:
        sock.close()
    assert r.code == 1, r.err
    assert_clean(r, f"sock{SHOWN}")

    # the listing of a snapshot's files ("ls" where it exists) and the verify lists
    [volume] = [p for p in w.chain_files() if re.search(r"\.v\d+$", p)]
    with open(volume, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        for off in range(64, size, 4096):          # damage every block: every file is named
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0x40]))
    r = w.run("verify", "--target", "local", "--read-data")
    assert r.code == 4, r.err
    assert_clean(r, SHOWN)

    # a restore of the damaged data fails: its error and warnings are escaped too
    r = w.run("restore", "--target", "local", "--to", os.path.join(w.tmp, "out"))
    assert r.code == 4, r.err
    assert_clean(r)


def test_one_line_error_with_a_hostile_path_is_escaped(tmp_path):
    """A restore destination named by the attacker (e.g. pasted from a mail) is echoed in the
    one-line error: escaped, and still one line."""
    w = evil_world(tmp_path)
    w.ok("init", "local")
    w.ok("backup", "--target", "local")
    dest = os.path.join(w.tmp, f"dest{EVIL}\nfake: all good")
    os.makedirs(dest)
    open(os.path.join(dest, "occupied"), "w").close()
    r = w.run("restore", "--target", "local", "--to", dest)
    assert r.code != 0
    assert_clean(r, f"dest{SHOWN}")
    assert len([ln for ln in r.err.splitlines() if ln.startswith("dmbackup:")]) == 1, r.err
