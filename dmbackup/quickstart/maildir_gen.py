"""Writing a Dovecot Maildir++ store file by file: the part every generator shares.

Three generators write stores the way Dovecot would have: the seeded sample store of the
quick start and the tests (dmbackup/quickstart/sample.py: the awkward cases), the benchmark
corpus (bench/corpus.py: realistic sizes and volumes) and the tests' file-system mail
simulator (tests/engine/mailsim.py: days of live changes). They differ in what they write;
how it is laid out and named is here, once:

* a user's mailbox is ``<root>/<domain>/<local part>/Maildir`` (``mailbox_dir``);
* INBOX is the Maildir itself; folder ``Archivio/2024`` is ``.Archivio.2024`` and non-ASCII
  names are in modified UTF-7 (``Posta inviàta`` -> ``.Posta invi&AOA-ta``), as
  dmbackup.source.maildir_names maps them; every folder has ``cur/ new/ tmp/``, and
  Dovecot puts a ``maildirfolder`` marker in the ones below INBOX (``make_folder``);
* a message file is named as Dovecot's LDA/LMTP names it,
  ``<time>.M<usec>P<pid>.<host>,S=<size>[,W=<vsize>]`` (``message_base``), plus
  ``:2,<flags>`` in ``cur/`` (flags sorted; lower-case letters are keywords, ``a`` being
  line 0 of ``dovecot-keywords``) and nothing in ``new/``; its mtime is the delivery time,
  which IMAP reports as INTERNALDATE (``write_message``);
* ``dovecot-uidlist`` version 3: ``3 V<uidvalidity> N<nextuid> [G<guid>]`` then one
  ``<uid> :<base name>`` line per message (``uidlist_bytes``, ``parse_uidlist``);
  ``dovecot-keywords``: ``<n> <keyword>`` lines (``keywords_bytes``); ``subscriptions``: one
  folder name a line, optionally after Dovecot's ``V\\t2`` header (``subscriptions_bytes``).

Nothing here draws random numbers: the generators keep their seeded ``random.Random``
sequences, so what they write stays byte-for-byte what it was.
"""

from __future__ import annotations

import os

from dmbackup.source.maildir_names import folder_dir

SUBDIRS = ("cur", "new", "tmp")


def mailbox_dir(root: str, address: str) -> str:
    """``user@example.it`` -> ``<root>/example.it/user/Maildir``."""
    local, domain = address.rsplit("@", 1)
    return os.path.join(root, domain, local, "Maildir")


def folder_path(maildir: str, folder: str) -> str:
    """The directory of IMAP folder ``folder`` (``INBOX``, ``Archivio/2024``, ...)."""
    d = folder_dir(folder)
    return os.path.join(maildir, d) if d else maildir


def make_folder(maildir: str, folder: str, *, mode: int = 0o777, marker: bool = False,
                marker_mtime: int | None = None) -> str:
    """Create ``cur/ new/ tmp/`` of IMAP folder ``folder`` (``mode`` for them, as
    ``os.makedirs`` applies it) and, with ``marker``, the empty ``maildirfolder`` file of a
    folder below INBOX. Returns the folder's directory."""
    fdir = folder_path(maildir, folder)
    for sub in SUBDIRS:
        os.makedirs(os.path.join(fdir, sub), mode=mode, exist_ok=True)
    if marker and fdir != maildir:
        write_file(os.path.join(fdir, "maildirfolder"), b"", mtime=marker_mtime)
    return fdir


def write_file(path: str, data: bytes, mtime: int | None = None, mode: int = 0o600) -> None:
    """Create (or truncate) ``path`` with ``mode`` (less the umask) holding ``data``; set
    its atime and mtime to ``mtime`` when given."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def replace_file(path: str, data: bytes) -> None:
    """Dovecot never rewrites its control files in place: temp name, then rename()."""
    tmp = path + ".tmp"
    write_file(tmp, data)
    os.replace(tmp, path)


def message_base(t: int, usec: int, pid: int, host: str, size: int, vsize: int | None = None) -> str:
    """Dovecot's base name for a message delivered at ``t``: ``<t>.M<usec>P<pid>.<host>,S=<size>``
    and ``,W=<vsize>`` (the size with CRLF line endings) when known."""
    return f"{t}.M{usec}P{pid}.{host},S={size}" + (f",W={vsize}" if vsize is not None else "")


def flags_sorted(flags: str) -> str:
    """Maildir flags as Dovecot writes them: each once, in ASCII order."""
    return "".join(sorted(set(flags)))


def message_name(base: str, sub: str, flags: str = "") -> str:
    """The file name of a message in ``sub`` (``new``: the base name; ``cur``: ``base:2,FLAGS``)."""
    return base if sub == "new" else f"{base}:2,{flags_sorted(flags)}"


def write_message(folder: str, sub: str, base: str, data: bytes, *, flags: str = "",
                  mtime: int | None = None, mode: int = 0o600) -> str:
    """Write one message into ``<folder>/<sub>/`` under its Maildir name, its mtime the
    delivery time. Returns its path."""
    path = os.path.join(folder, sub, message_name(base, sub, flags))
    write_file(path, data, mtime=mtime, mode=mode)
    return path


def uidlist_bytes(uidvalidity: int, nextuid: int, guid: str | None, entries: list[tuple[int, str]]) -> bytes:
    """A version 3 ``dovecot-uidlist``: header (``G<guid>`` only with a guid), then
    ``<uid> :<base name>`` for each (uid, base name) in ``entries``."""
    lines = [f"3 V{uidvalidity} N{nextuid}" + (f" G{guid}" if guid is not None else "")]
    lines += [f"{uid} :{base}" for uid, base in entries]
    return ("\n".join(lines) + "\n").encode()


def parse_uidlist(data: bytes) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """A version 3 ``dovecot-uidlist`` -> (header fields by letter, [(uid, base name)])."""
    text = data.decode()
    first, _, rest = text.partition("\n")
    parts = first.split()
    if not parts or parts[0] != "3":
        raise ValueError(f"not a version 3 dovecot-uidlist header: {first!r}")
    header = {p[0]: p[1:] for p in parts[1:]}
    entries = []
    for line in rest.splitlines():
        if not line:
            continue
        uid, _, base = line.partition(" :")
        entries.append((int(uid.split()[0]), base))
    return header, entries


def keywords_bytes(keywords: list[str]) -> bytes:
    """``dovecot-keywords``: keyword n is flag letter ``chr(ord('a') + n)`` in file names."""
    return "".join(f"{i} {k}\n" for i, k in enumerate(keywords)).encode()


def subscriptions_bytes(names: list[str], *, v2_header: bool = False) -> bytes:
    """``subscriptions``: one name a line, after Dovecot 2's ``V<TAB>2`` header and an empty
    line when ``v2_header``."""
    return (("V\t2\n\n" if v2_header else "") + "".join(f"{n}\n" for n in names)).encode()
