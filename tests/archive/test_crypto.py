"""dmbackup.archive.crypto: the master key wrapped by the passphrase, and the sealers.

The suite's conftest lowers ``crypto.SCRYPT_N`` for speed (this process only); everything else
is the production code path.
"""

from __future__ import annotations

import json
import os

import pytest

from dmbackup.archive import crypto, kdf
from dmbackup.errors import CorruptObject, WrongPassphrase

RID = "0123456789abcdef0123456789abcdef"
PW = b"correct horse battery staple"


@pytest.fixture(scope="module")
def master() -> bytes:
    return os.urandom(64)


@pytest.fixture
def keyfile(master) -> bytes:
    return crypto.wrap_master(master, PW, RID)


# --- the key file --------------------------------------------------------------------------
def test_the_passphrase_unwraps_the_master_key(master, keyfile):
    assert crypto.unwrap_master(keyfile, PW, RID) == master


def test_scrypt_is_rfc_7914():
    """The derivation (hashlib's, which releases the GIL) is RFC 7914's scrypt: its test vector,
    and the same key as the cryptography package's for the cost dmbackup writes."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    assert kdf.scrypt(b"password", b"NaCl", 1024, 8, 16).hex() == \
        "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
    salt = os.urandom(16)
    assert kdf.scrypt(PW, salt, 1 << 15, 8, 1) == Scrypt(salt=salt, length=32, n=1 << 15, r=8, p=1).derive(PW)


def test_a_key_derived_ahead_is_the_key(master, keyfile, monkeypatch):
    """derive_ahead starts the derivation; unwrap_master takes its result (once) and opens the
    key as without it. Another passphrase, or a key file replaced since, derives afresh."""
    kdf._ahead.clear()
    kdf.derive_ahead(keyfile, PW)
    assert len(kdf._ahead) == 1
    assert crypto.unwrap_master(keyfile, PW, RID) == master
    assert kdf._ahead == {}
    kdf.derive_ahead(keyfile, b"not the passphrase")
    with pytest.raises(WrongPassphrase):
        crypto.unwrap_master(keyfile, b"not the passphrase", RID)
    kdf.derive_ahead(keyfile, b"not the passphrase")          # never asked for: dropped by the next
    assert crypto.unwrap_master(crypto.wrap_master(master, PW, RID), PW, RID) == master
    assert kdf._ahead == {}


@pytest.mark.parametrize("bad", [b"{", b"[]", b'{"n": 4}', b'{"n": 1099511627776, "r": 8, "p": 1, "salt": "AAAAAAAAAAA="}',
                                 b'{"n": 1024, "r": 8, "p": 1, "salt": 5}', b'{"n": 1024, "r": 8, "p": 1, "salt": "AA=="}'])
def test_a_key_file_unwrap_would_refuse_is_not_derived_ahead(bad):
    kdf._ahead.clear()
    kdf.derive_ahead(bad, PW)
    assert kdf._ahead == {}


def test_key_file_is_the_documented_json(keyfile):
    doc = json.loads(keyfile)
    assert set(doc) == {"version", "kdf", "n", "r", "p", "salt", "nonce", "wrapped"}
    assert (doc["version"], doc["kdf"]) == (1, "scrypt")
    assert (doc["n"], doc["r"], doc["p"]) == (crypto.SCRYPT_N, crypto.SCRYPT_R, crypto.SCRYPT_P)
    assert len(crypto.unb64(doc["salt"])) == 16 and len(crypto.unb64(doc["nonce"])) == crypto.NONCE
    assert len(crypto.unb64(doc["wrapped"])) == 64 + crypto.TAG


def test_each_wrap_has_its_own_salt_and_nonce(master):
    docs = [json.loads(crypto.wrap_master(master, PW, RID)) for _ in range(4)]
    for k in ("salt", "nonce", "wrapped"):
        assert len({d[k] for d in docs}) == 4, k


@pytest.mark.parametrize("other", [b"", b"correct horse battery stapl", b"Correct horse battery staple",
                                   PW + b"\n", "pässwort".encode()])
def test_a_wrong_passphrase_is_wrong_passphrase(keyfile, other):
    with pytest.raises(WrongPassphrase) as e:
        crypto.unwrap_master(keyfile, other, RID)
    assert e.value.exit_code == 6
    assert "wrong passphrase" in str(e.value)


def test_the_key_file_is_bound_to_its_repository(keyfile):
    """AAD ``dmbackup-key\\0<repo id>``: a key file copied next to another repository's
    repo.json does not open there, even with the right passphrase."""
    with pytest.raises(WrongPassphrase):
        crypto.unwrap_master(keyfile, PW, "f" * 32)


def test_a_tampered_wrapped_key_does_not_open(keyfile):
    doc = json.loads(keyfile)
    raw = bytearray(crypto.unb64(doc["wrapped"]))
    raw[5] ^= 1
    doc["wrapped"] = crypto.b64(bytes(raw))
    with pytest.raises(WrongPassphrase):       # GCM cannot tell a flipped bit from another key
        crypto.unwrap_master(json.dumps(doc).encode(), PW, RID)


@pytest.mark.parametrize("change", [
    {"n": crypto.MAX_SCRYPT_N * 2},           # a hostile cost: refused before any work
    {"r": 64}, {"p": 4}, {"n": 1000}, {"n": "16384"}, {"n": True},
    {"version": 2}, {"kdf": "argon2"},
    {"salt": None}, {"nonce": "AAAA"}, {"wrapped": "not base64!"}, {"salt": "QUJD"},
])
def test_a_damaged_or_hostile_key_file_is_corrupt(keyfile, change):
    doc = json.loads(keyfile)
    doc.update(change)
    with pytest.raises(CorruptObject) as e:
        crypto.unwrap_master(json.dumps(doc).encode(), PW, RID)
    assert e.value.exit_code == 4 and "key file is damaged" in str(e.value)


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"null", b"\xff\xfe", b"[" * 100_000])
def test_garbage_is_corrupt(data):
    with pytest.raises(CorruptObject):
        crypto.unwrap_master(data, PW, RID)


def test_scrypt_cost_bounds():
    assert crypto.scrypt_cost_ok(crypto.SCRYPT_N, crypto.SCRYPT_R, crypto.SCRYPT_P)
    assert crypto.scrypt_cost_ok(crypto.MAX_SCRYPT_N, crypto.MAX_SCRYPT_R, crypto.MAX_SCRYPT_P)
    for n, r, p in ((crypto.MAX_SCRYPT_N * 2, 8, 1), (3000, 8, 1), (1, 8, 1), (1024, 0, 1), (1024, 9, 1),
                    (1024, 8, 0), (1024, 8, 2)):
        assert not crypto.scrypt_cost_ok(n, r, p), (n, r, p)


def test_the_production_cost_is_what_a_key_file_may_ask():
    """The module's own default (before the suite lowered it) stays within what it accepts."""
    assert crypto.scrypt_cost_ok(1 << 15, 8, 1)


# --- sealing ---------------------------------------------------------------------------------
@pytest.fixture
def sealer(master) -> crypto.Sealer:
    return crypto.Keys(master).data


def test_seal_open_round_trip(sealer):
    for plain in (b"", b"x", os.urandom(5000)):
        sealed = sealer.seal(plain, b"aad")
        assert len(sealed) == len(plain) + crypto.OVERHEAD
        assert sealer.open(sealed, b"aad") == plain
        if len(plain) >= 16:          # one byte turns up in random ciphertext by chance
            assert plain not in sealed


def test_nonces_never_repeat_over_many_seals(sealer):
    n = 20_000
    sealed = [sealer.seal(b"same plaintext", b"same aad") for _ in range(n)]
    assert len({s[:crypto.NONCE] for s in sealed}) == n
    assert len(set(sealed)) == n


def test_aad_binds_the_object_to_its_place(sealer):
    sealed = sealer.seal(b"a block", b"rid|blk|0001-x|v0001|0")
    for other in (b"rid|blk|0001-x|v0001|4096", b"rid|blk|0001-x|v0002|0", b"", b"rid|blk|0001-x|v0001|0\0"):
        with pytest.raises(CorruptObject) as e:
            sealer.open(sealed, other, "block")
        assert "failed authentication" in str(e.value) and e.value.exit_code == 4


def test_any_flipped_byte_fails(sealer):
    sealed = sealer.seal(b"catalog header bytes", b"aad")
    for i in range(len(sealed)):                  # nonce, ciphertext and tag alike
        bad = bytearray(sealed)
        bad[i] ^= 0x80
        with pytest.raises(CorruptObject):
            sealer.open(bytes(bad), b"aad")


def test_truncated_and_extended_fail(sealer):
    sealed = sealer.seal(b"payload", b"aad")
    for bad in (b"", sealed[:crypto.OVERHEAD - 1], sealed[:-1], sealed + b"\0"):
        with pytest.raises(CorruptObject):
            sealer.open(bad, b"aad")
    with pytest.raises(CorruptObject, match="truncated"):
        sealer.open(sealed[:crypto.NONCE], b"aad", "page")


def test_purpose_keys_are_separate(master):
    keys = crypto.Keys(master)
    sealed = keys.data.seal(b"x", b"aad")
    for other in (keys.catalog, keys.bundle, crypto.Keys(os.urandom(64)).data):
        with pytest.raises(CorruptObject):
            other.open(sealed, b"aad")
    assert keys.hash_key == crypto.hkdf(master, "content-hash") and len(keys.hash_key) == 32
    assert len({crypto.hkdf(master, p) for p in ("data", "catalog", "bundle", "content-hash", "repo-json")}) == 5


def test_plain_sealer_catches_damage_and_moves_but_hides_nothing():
    s = crypto.Keys(None).data
    assert isinstance(s, crypto.PlainSealer) and not s.encrypted
    sealed = s.seal(b"visible", b"aad")
    assert sealed.endswith(b"visible") and len(sealed) == 32 + len(b"visible")
    assert s.open(sealed, b"aad") == b"visible"
    for bad, aad in ((sealed[:-1] + b"X", b"aad"), (sealed, b"other"), (sealed[:31], b"aad")):
        with pytest.raises(CorruptObject):
            s.open(bad, aad)


# --- fingerprint and repo.json MAC -------------------------------------------------------------
def test_fingerprint(master):
    fp = crypto.Keys(master).fingerprint
    assert fp == crypto.Keys(master).fingerprint
    parts = fp.split("-")
    assert len(parts) == 4 and all(len(p) == 8 and int(p, 16) >= 0 for p in parts)
    assert crypto.Keys(os.urandom(64)).fingerprint != fp
    assert crypto.Keys(None).fingerprint is None and not crypto.Keys(None).encrypted


def test_meta_mac(master):
    keys = crypto.Keys(master)
    meta = {"format": 1, "id": RID, "created": "2026-11-28T02:30:00Z", "hostname": "mx.test",
            "encryption": "aes-256-gcm"}
    mac = keys.meta_mac(meta)
    assert keys.meta_mac({**meta, "mac": "anything"}) == mac           # the mac field is not covered
    assert keys.meta_mac(dict(reversed(list(meta.items())))) == mac    # canonical: key order is irrelevant
    for k, v in (("hostname", "mx2.test"), ("id", "f" * 32), ("encryption", "none"), ("format", 2)):
        assert keys.meta_mac({**meta, k: v}) != mac, k
    assert crypto.Keys(os.urandom(64)).meta_mac(meta) != mac


@pytest.mark.parametrize("encrypted", [True, False])
def test_sealed_in_two_parts_is_the_same_object(encrypted):
    from dmbackup.archive.crypto import Keys

    sealer = Keys(os.urandom(64) if encrypted else None).catalog
    nonce, body = sealer.seal_parts(b"content index" * 100, b"aad")
    assert sealer.open(nonce + body, b"aad") == b"content index" * 100
    with pytest.raises(CorruptObject):
        sealer.open(nonce + body, b"other aad")
