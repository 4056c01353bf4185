"""IMAP folder names <-> Maildir++ directory names (modified UTF-7, RFC 3501 5.1.3).

Dovecot's Maildir++ layout stores folder ``Archivio/2024`` as ``.Archivio.2024`` and
``Posta inviàta`` as ``.Posta invi&AOA-ta``: the hierarchy separator becomes ``.`` and
non-ASCII characters are written in modified UTF-7.
"""

from __future__ import annotations

import base64


def mutf7_encode(name: str) -> str:
    out, buf = [], []

    def flush():
        if buf:
            b = "".join(buf).encode("utf-16-be")
            out.append("&" + base64.b64encode(b).decode().rstrip("=").replace("/", ",") + "-")
            buf.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            buf.append(ch)
    flush()
    return "".join(out)


def mutf7_decode(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        j = text.index("-", i)
        chunk = text[i + 1:j]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            out.append(base64.b64decode(b64).decode("utf-16-be"))
        i = j + 1
    return "".join(out)


def folder_dir(folder: str, separator: str = "/") -> str:
    """``Archivio/2024`` -> ``.Archivio.2024``; INBOX is the Maildir root (empty string)."""
    if folder.upper() == "INBOX":
        return ""
    parts = [p for p in folder.split(separator) if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"not a folder name: {folder!r}")
    return "." + ".".join(mutf7_encode(p) for p in parts)


def dir_folder(dirname: str, separator: str = "/") -> str:
    if dirname in ("", "."):
        return "INBOX"
    return separator.join(mutf7_decode(p) for p in dirname.lstrip(".").split("."))
