"""Keys and sealing: passphrase -> scrypt -> key-encryption key -> wrapped master key.

Key file (``keys/master.json`` in a repository), JSON::

    {"version": 1, "kdf": "scrypt", "n": 65536, "r": 8, "p": 1, "salt": b64(16),
     "nonce": b64(12), "wrapped": b64(AES-256-GCM(kek, master(64 bytes), aad))}

with ``aad = b"dmbackup-key\\0" + repo_id``. The master key is 64 random bytes that never
change for the life of the repository; changing the passphrase rewrites only the key file.
From the master key, HKDF-SHA256 derives purpose keys ("data", "catalog", "bundle", ...).

A sealed object is ``nonce(12) || AES-256-GCM(key, plaintext, aad)``; the caller supplies an
``aad`` that binds the object to where it belongs (repository id, object kind, name, offset),
so an object moved or swapped elsewhere in the repository fails to open. With encryption
mode "none" the ``PlainSealer`` stores ``sha256(aad || plaintext) || plaintext``: the same
interface, but no key, so it catches accidental damage only; anyone holding the medium can
recompute it, which is why dmbackup claims no integrity for such repositories (see
docs/threat-model.md).

Two more values come from the master key: the key *fingerprint* (128 bits of HKDF output,
shown by ``init`` and recorded in ``state_dir`` when a repository is enrolled, so a machine
notices a repository whose key changed) and the MAC of ``repo.json`` (HMAC-SHA256 under the
"repo-json" purpose key over the canonical JSON of its other fields).

Nothing read from the medium sets the KDF's cost beyond ``MAX_SCRYPT_*``: a key file that
asks for more is damaged (a hostile one would otherwise take gigabytes and minutes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dmbackup.archive import kdf
from dmbackup.archive.kdf import MAX_SCRYPT_N, MAX_SCRYPT_P, MAX_SCRYPT_R, scrypt_cost_ok, unb64  # noqa: F401 (re-exported)
from dmbackup.errors import CorruptObject, WrongPassphrase

NONCE = 12
TAG = 16
OVERHEAD = NONCE + TAG
# Production cost: scrypt N=2^15, r=8 (32 MiB, ~0.1-0.3 s on a 2-core appliance, paid once per
# command). The parameters are stored in the key file, so a later change affects new keys only.
# Nothing outside this module lowers it: the test suite monkeypatches SCRYPT_N in its own
# process only, so no environment variable can weaken a shipped run.
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
def b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def derive_kek(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    """scrypt (dmbackup.archive.kdf): the result of a derivation started ahead when there is one."""
    return kdf.derive(passphrase, salt, n, r, p)


def hkdf(master: bytes, purpose: str, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None,
                info=b"dmbackup/" + purpose.encode()).derive(master)


def wrap_master(master: bytes, passphrase: bytes, repo_id: str) -> bytes:
    salt = os.urandom(16)
    n = SCRYPT_N
    kek = derive_kek(passphrase, salt, n, SCRYPT_R, SCRYPT_P)
    nonce = os.urandom(NONCE)
    wrapped = AESGCM(kek).encrypt(nonce, master, b"dmbackup-key\0" + repo_id.encode())
    doc = {"version": 1, "kdf": "scrypt", "n": n, "r": SCRYPT_R, "p": SCRYPT_P,
           "salt": b64(salt), "nonce": b64(nonce), "wrapped": b64(wrapped)}
    return json.dumps(doc, indent=1).encode() + b"\n"


def unwrap_master(keyfile: bytes, passphrase: bytes, repo_id: str) -> bytes:
    damaged = "the repository key file is damaged ({}): restore keys/ from another copy"
    try:
        doc = json.loads(keyfile)
        if not isinstance(doc, dict) or doc.get("version") != 1 or doc.get("kdf") != "scrypt":
            raise ValueError("unsupported key file")
        n, r, p = doc.get("n"), doc.get("r"), doc.get("p")
        if not all(type(v) is int for v in (n, r, p)):
            raise ValueError("cost parameters are not integers")
        if not scrypt_cost_ok(n, r, p):
            raise ValueError(f"scrypt cost n={n} r={r} p={p} is not one dmbackup writes")
        fields = [doc.get(k) for k in ("salt", "nonce", "wrapped")]
        if not all(isinstance(v, str) for v in fields):
            raise ValueError("salt, nonce or wrapped key missing")
        salt, nonce, wrapped = (unb64(v) for v in fields)
        if len(nonce) != NONCE or len(salt) < 8 or len(wrapped) < TAG:
            raise ValueError("salt, nonce or wrapped key of the wrong size")
    except (ValueError, KeyError, TypeError, RecursionError, UnicodeDecodeError) as exc:
        raise CorruptObject(damaged.format(exc)) from None
    try:
        kek = derive_kek(passphrase, salt, n, r, p)
    except (ValueError, MemoryError) as exc:
        raise CorruptObject(damaged.format(exc)) from None
    try:
        return AESGCM(kek).decrypt(nonce, wrapped, b"dmbackup-key\0" + repo_id.encode())
    except InvalidTag:
        raise WrongPassphrase(
            "wrong passphrase: it does not unlock this repository's key "
            "(check encryption.passphrase_file or $DMBACKUP_PASSPHRASE)") from None
    except ValueError as exc:
        raise CorruptObject(damaged.format(exc)) from None


class Sealer:
    """AES-256-GCM with a per-purpose key; ``open`` raises CorruptObject on any mismatch."""

    encrypted = True

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return b"".join(self.seal_parts(plaintext, aad))

    def seal_parts(self, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """``seal`` as the two parts it joins (nonce, ciphertext + tag), for a caller that
        writes them one after the other: joining a 4 MiB block or a 38 MB index costs a copy."""
        nonce = os.urandom(NONCE)
        return nonce, self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes, what: str = "object") -> bytes:
        if len(sealed) < OVERHEAD:
            raise CorruptObject(f"{what} is truncated")
        try:
            return self._aead.decrypt(sealed[:NONCE], sealed[NONCE:], aad)
        except InvalidTag:
            raise CorruptObject(f"{what} failed authentication (damaged, truncated or moved)") from None


class PlainSealer:
    """No secrecy, no key (mode = "none"): a SHA-256 over aad and plaintext catches accidental
    damage only. Anyone can recompute it, so it proves nothing about who wrote the object."""

    encrypted = False

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return b"".join(self.seal_parts(plaintext, aad))

    def seal_parts(self, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        h = hashlib.sha256(aad)
        h.update(plaintext)
        return h.digest(), plaintext

    def open(self, sealed: bytes, aad: bytes, what: str = "object") -> bytes:
        if len(sealed) < 32:
            raise CorruptObject(f"{what} is truncated")
        digest, body = sealed[:32], sealed[32:]
        if not hmac.compare_digest(digest, hashlib.sha256(aad + body).digest()):
            raise CorruptObject(f"{what} failed its integrity check (damaged, truncated or moved)")
        return body


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class Keys:
    """Purpose keys of one repository."""

    def __init__(self, master: bytes | None):
        self.master = master
        if master is None:
            self.data = self.catalog = self.bundle = PlainSealer()
            self.hash_key = b""
        else:
            self.data = Sealer(hkdf(master, "data"))
            self.catalog = Sealer(hkdf(master, "catalog"))
            self.bundle = Sealer(hkdf(master, "bundle"))
            self.hash_key = hkdf(master, "content-hash")

    @property
    def encrypted(self) -> bool:
        return self.master is not None

    @property
    def fingerprint(self) -> str | None:
        """128 bits identifying the master key without revealing it (``xxxxxxxx-...``, 4 groups)."""
        if self.master is None:
            return None
        h = hkdf(self.master, "fingerprint", 16).hex()
        return "-".join(h[i:i + 8] for i in range(0, 32, 8))

    def meta_mac(self, meta: dict) -> str:
        """The MAC of ``repo.json``: every field but ``mac`` itself, canonically serialised."""
        assert self.master is not None
        body = {k: v for k, v in meta.items() if k != "mac"}
        return hmac.new(hkdf(self.master, "repo-json"), _canonical(body), hashlib.sha256).hexdigest()
