"""The passphrase's key derivation (scrypt, RFC 7914), and deriving it ahead.

``derive`` is scrypt with the cost a key file names (dmbackup.archive.crypto checks it with
``scrypt_cost_ok`` first: a medium asking for more is hostile or damaged). It is hashlib's
(OpenSSL), which releases the GIL: so a command that is about to unlock a repository can start
the derivation in a thread (``derive_ahead_from``) as soon as it has opened the target, and
load the rest of its code while scrypt runs (start-up, issue 17: ~70 ms of scrypt beside
~50 ms of imports). Nothing is decided ahead: the later ``derive`` with the very same
passphrase, salt and cost takes the result, and any other asks afresh (a key file replaced in
between simply does not match). This module imports nothing heavy, so the thread starts before
the cryptography package and the archive code are loaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading

# The most a key file (or a passphrase bundle) may ask for: the largest cost any dmbackup
# release wrote (N=2^16 before 1a981e9), 64 MiB and well under a second. A medium asking for
# more is hostile or damaged, never something we made.
MAX_SCRYPT_N = 1 << 16
MAX_SCRYPT_R = 8
MAX_SCRYPT_P = 1
_SMALL_MAX = 64 * 1024          # dmbackup.archive.reader.SMALL_MAX: a key file is read with this cap


def scrypt_cost_ok(n: int, r: int, p: int) -> bool:
    """Whether (n, r, p) is a cost dmbackup could have written (and is willing to pay)."""
    return (2 <= n <= MAX_SCRYPT_N and n & (n - 1) == 0 and 1 <= r <= MAX_SCRYPT_R
            and 1 <= p <= MAX_SCRYPT_P)


def unb64(s: str) -> bytes:
    try:
        return base64.b64decode(s.encode("ascii"), validate=True)
    except (UnicodeEncodeError, ValueError):
        raise ValueError("not base64") from None


def scrypt(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    """32 bytes of scrypt. ValueError for a cost OpenSSL refuses."""
    if hasattr(hashlib, "scrypt"):
        return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, dklen=32,
                              maxmem=130 * r * (n + p) + (8 << 20))
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt     # a Python without OpenSSL's

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


class _Ahead(threading.Thread):
    def __init__(self, args: tuple):
        super().__init__(name="dmbackup-kdf", daemon=True)
        self.args, self.key, self.error = args, None, None

    def run(self) -> None:
        try:
            self.key = scrypt(*self.args)
        except BaseException as exc:   # noqa: BLE001 - handed to whoever asks for this key
            self.error = exc


_ahead: dict[tuple, _Ahead] = {}     # at most one: the derivation started last
_lock = threading.Lock()


def derive(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    """scrypt: the derivation started ahead for exactly these arguments, or a new one. Either
    way nothing started ahead is kept after this (a long-lived daemon holds no stray key)."""
    with _lock:
        job = _ahead.pop((passphrase, salt, n, r, p), None)
        _ahead.clear()
    if job is None:
        return scrypt(passphrase, salt, n, r, p)
    job.join()
    if job.error is not None:
        raise job.error
    return job.key


def derive_ahead(keyfile: bytes, passphrase: bytes) -> None:
    """Start deriving the key-encryption key of ``keyfile`` (the JSON of keys/master.json) in a
    thread. A key file that dmbackup.archive.crypto.unwrap_master would refuse is ignored (it
    reports it)."""
    try:
        doc = json.loads(keyfile)
        n, r, p, salt = doc["n"], doc["r"], doc["p"], unb64(doc["salt"])
        if not all(type(v) is int for v in (n, r, p)) or not scrypt_cost_ok(n, r, p) or len(salt) < 8:
            return
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, UnicodeDecodeError):
        return
    args = (passphrase, salt, n, r, p)
    with _lock:
        if args in _ahead:
            return
        _ahead.clear()
        _ahead[args] = job = _Ahead(args)
    job.start()


def derive_ahead_from(target, key_path: str, passphrase_fn) -> None:
    """``derive_ahead`` for the key file at ``key_path`` on an open ``target`` (read with the
    cap of every small repository file). Best effort and silent: the unlock that follows makes
    every check and reports every problem."""
    try:
        keyfile = target.get(key_path, 0, _SMALL_MAX + 1)
        if len(keyfile) > _SMALL_MAX:
            return
        passphrase = passphrase_fn()
    except Exception:       # noqa: BLE001 - whatever it is, the real unlock says it properly
        return
    derive_ahead(keyfile, passphrase)
