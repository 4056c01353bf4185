"""dmbackup.source.maildir_names: IMAP folder names <-> Maildir++ directory names.

Modified UTF-7 (RFC 3501 5.1.3) must round-trip every name a client can create, produce only
what a Maildir++ directory name can hold, and agree with the RFC's own example and with the
names Dovecot writes (tests/engine/test_dovecot.py checks against a real Dovecot).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dmbackup.source.maildir_names import dir_folder, folder_dir, mutf7_decode, mutf7_encode

# one folder level: any text without the separators ("/" in IMAP, "." on disk)
LEVEL = st.text(min_size=1, max_size=20).filter(lambda s: "/" not in s and "." not in s)


@pytest.mark.parametrize("name, encoded", [
    ("INBOX", "INBOX"),
    ("&", "&-"),
    ("Rossi & Figli", "Rossi &- Figli"),
    ("Posta inviàta", "Posta invi&AOA-ta"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),       # RFC 3501's example
    ("😀", "&2D3eAA-"),                                                   # outside the BMP: a surrogate pair
    ("a\x7fb", "a&AH8-b"),                                               # DEL is not printable ASCII
])
def test_known_encodings(name, encoded):
    assert mutf7_encode(name) == encoded
    assert mutf7_decode(encoded) == name


@given(st.text(max_size=60))
@example("&-&")
@example("\U0010ffff\x00")
@settings(max_examples=500, deadline=None)
def test_mutf7_round_trips_any_name(name):
    enc = mutf7_encode(name)
    assert mutf7_decode(enc) == name
    assert all(0x20 <= ord(c) <= 0x7E for c in enc)      # printable ASCII only
    # every "&" starts a shift that ends in "-"; the base64 alphabet is modified ("," for "/")
    assert re.fullmatch(r"(?:[ -%'-~]|&-|&[A-Za-z0-9+,]+-)*", enc), enc


@given(st.text(max_size=30))
@settings(max_examples=300, deadline=None)
def test_decoding_arbitrary_text_is_text_or_valueerror(text):
    """A directory name on disk is not always ours: decoding it fails only with ValueError."""
    try:
        assert isinstance(mutf7_decode(text), str)
    except ValueError:
        pass


@given(st.lists(LEVEL, min_size=1, max_size=4))
@settings(max_examples=300, deadline=None)
def test_folder_dir_round_trips(levels):
    folder = "/".join(levels)
    if folder.upper() == "INBOX":
        assert folder_dir(folder) == ""
        return
    d = folder_dir(folder)
    assert d.startswith(".") and "/" not in d and d.count(".") == len(levels)
    assert dir_folder(d) == folder


@given(st.lists(LEVEL, min_size=1, max_size=3))
@settings(max_examples=100, deadline=None)
def test_another_separator(levels):
    folder = "\\".join(levels)
    if "\\" in "".join(levels) or folder.upper() == "INBOX":
        return
    assert dir_folder(folder_dir(folder, "\\"), "\\") == folder


def test_maildirpp_layout():
    assert folder_dir("INBOX") == folder_dir("inbox") == ""
    assert folder_dir("Archivio/2024") == ".Archivio.2024"
    assert folder_dir("Clienti/Rossi & Figli") == ".Clienti.Rossi &- Figli"
    assert folder_dir("/Sent//") == ".Sent"                  # empty levels are dropped
    assert dir_folder("") == dir_folder(".") == "INBOX"
    assert dir_folder(".Posta invi&AOA-ta") == "Posta inviàta"


@pytest.mark.parametrize("bad", ["", "/", "..", "a/../b", "./x", "a/."])
def test_names_that_would_leave_the_maildir_are_refused(bad):
    with pytest.raises(ValueError):
        folder_dir(bad)
