"""The config bundle format: round trips, every kind of damage, hostile content, restore.

Bundles are built from small trees under tmp_path with odd modes and owners (the suite
runs as root), sealed with a passphrase (weak scrypt for speed) or a repository key, then
damaged byte by byte, truncated, reordered and forged. Extraction and the live preflight
are checked to write only where they should.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import stat
import struct
import tarfile

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmbackup import utctime
from dmbackup.archive import bundle, bundlefiles

from dmbackup.source import appliance

from dmbackup.archive import crypto
from dmbackup.errors import (EXIT_DAMAGE, EXIT_KEY, CorruptObject, DmError, KeyProblem,
                             RestoreError, WrongPassphrase)

PW = b"correct horse battery staple"


@pytest.fixture(autouse=True)
def _weak_kdf(monkeypatch):
    monkeypatch.setattr(crypto, "SCRYPT_N", 1 << 10)
    monkeypatch.delenv("DMBACKUP_PASSPHRASE", raising=False)


def make_tree(root) -> str:
    """A small /etc-like tree: returns the config path to collect."""
    etc = os.path.join(root, "etc")
    os.makedirs(f"{etc}/postfix/sasl")
    os.makedirs(f"{etc}/dovecot/conf.d")
    os.makedirs(f"{etc}/ssl/private")
    with open(f"{etc}/postfix/main.cf", "w") as f:
        f.write("myhostname = mail.example.it\nsmtpd_tls_cert_file = /etc/ssl/certs/mail.pem\n")
    with open(f"{etc}/postfix/sasl/passwd", "wb") as f:
        f.write(b"[relay]:587 user:secret\n")
    os.chmod(f"{etc}/postfix/sasl/passwd", 0o600)
    open(f"{etc}/dovecot/empty.conf", "w").close()
    with open(f"{etc}/dovecot/conf.d/10-mail.conf", "w") as f:
        f.write("mail_location = maildir:/var/vmail/%d/%n/Maildir\n")
    with open(f"{etc}/ssl/private/mail.key", "wb") as f:
        f.write(os.urandom(300_000))           # several 64 KiB chunks, incompressible
    os.chown(f"{etc}/ssl/private/mail.key", 0, 109)
    os.chmod(f"{etc}/ssl/private/mail.key", 0o640)
    os.chown(f"{etc}/ssl/private", 0, 109)
    os.chmod(f"{etc}/ssl/private", 0o710)
    os.chown(f"{etc}/dovecot/conf.d/10-mail.conf", 5000, 5000)
    os.symlink("../postfix/main.cf", f"{etc}/dovecot/link-to-main.cf")
    os.symlink("/nonexistent/target", f"{etc}/dovecot/dangling")
    os.chmod(f"{etc}/dovecot", 0o750)
    os.utime(f"{etc}/postfix/main.cf", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return etc


def manifest_for(paths, root, coll=None):
    coll = coll or appliance.collect(paths)
    return coll, appliance.build_manifest(hostname="mail.example.it", mail_store=os.path.join(root, "vmail"),
                                          config_paths=paths, collection=coll)


def make_bundle(tmp_path, **seal):
    etc = make_tree(str(tmp_path / "src"))
    coll, man = manifest_for([etc], str(tmp_path / "src"))
    data, info = bundle.bundle_bytes(coll, man, **(seal or {"passphrase": PW}))
    return etc, data, info


def tree_state(root):
    """{relative path: (type, mode, uid, gid, content or link)} of everything under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            s = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(s.st_mode):
                out[rel] = ("l", os.readlink(p), s.st_uid, s.st_gid)
            elif stat.S_ISDIR(s.st_mode):
                out[rel] = ("d", stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("f", stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid, s.st_mtime_ns,
                                hashlib.sha256(f.read()).hexdigest())
    return out


# --- round trips ---------------------------------------------------------------------------
def test_passphrase_round_trip_keeps_bytes_and_metadata(tmp_path):
    etc, data, info = make_bundle(tmp_path)
    assert data.startswith(b"DMBUNDLE")
    assert info["files_count"] == 5 and info["stored_bytes"] == len(data)
    manifest, entries = bundle.read_bundle(data, passphrase=PW)
    assert manifest["id"] == info["id"] == bundle.parse_header(data).id
    assert manifest["hostname"] == "mail.example.it"
    by_path = {e.path: e for e in entries}
    assert [r["path"] for r in manifest["files"]] == [e.path for e in entries]
    for p, e in by_path.items():
        s = os.lstat(p)
        assert (e.mode, e.uid, e.gid, e.mtime_ns) == (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid, s.st_mtime_ns)
        if e.type == "file":
            with open(p, "rb") as f:
                assert e.data == f.read()
        elif e.type == "symlink":
            assert e.target == os.readlink(p)
        else:
            assert stat.S_ISDIR(s.st_mode)
    assert by_path[f"{etc}/dovecot/link-to-main.cf"].type == "symlink"
    assert by_path[f"{etc}/ssl/private/mail.key"].gid == 109
    assert by_path[f"{etc}/postfix/main.cf"].mtime_ns == 1_600_000_000_123_456_789
    assert by_path[f"{etc}/dovecot/empty.conf"].data == b""


def test_payload_is_an_ordinary_tar_zst_with_the_manifest_first(tmp_path):
    etc, data, _ = make_bundle(tmp_path)
    payload = bundle.decrypt_bundle(data, passphrase=PW)
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload)).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        names = tf.getnames()
    assert names[0] == "MANIFEST.json"
    assert etc.lstrip("/") + "/postfix/main.cf" in names


@pytest.mark.parametrize("sealer", ["key", "raw", "plain"])
def test_key_round_trip_and_context_binding(tmp_path, sealer):
    keys = crypto.Keys(os.urandom(64) if sealer != "plain" else None)
    key = os.urandom(32) if sealer == "raw" else keys.bundle
    etc, data, info = make_bundle(tmp_path, key=key, context=b"repo-1")
    manifest, entries = bundle.read_bundle(data, key=key, context=b"repo-1")
    assert manifest["id"] == info["id"] and len(entries) == len(info["files"])
    with pytest.raises(CorruptObject):
        bundle.read_bundle(data, key=key, context=b"repo-2")   # moved to another repository


def test_wrong_passphrase_is_exit_6(tmp_path):
    _, data, _ = make_bundle(tmp_path)
    with pytest.raises(WrongPassphrase) as ei:
        bundle.read_bundle(data, passphrase=b"not it")
    assert ei.value.exit_code == EXIT_KEY and "wrong passphrase" in str(ei.value)


def test_wrong_key_and_wrong_kind_of_secret_are_key_problems(tmp_path):
    key = crypto.Keys(os.urandom(64)).bundle
    _, data, _ = make_bundle(tmp_path, key=key)
    with pytest.raises(KeyProblem) as ei:
        bundle.read_bundle(data, key=crypto.Keys(os.urandom(64)).bundle)
    assert ei.value.exit_code == EXIT_KEY
    with pytest.raises(KeyProblem):
        bundle.read_bundle(data, passphrase=PW)
    with pytest.raises(KeyProblem):     # an encrypted bundle is never read as an unencrypted one
        bundle.read_bundle(data, key=crypto.PlainSealer())
    pw_data = make_bundle(tmp_path / "b")[1]
    with pytest.raises(KeyProblem):
        bundle.read_bundle(pw_data, key=key)


def test_plain_bundle_is_refused_when_a_passphrase_is_expected(tmp_path):
    """Nobody can forge an unencrypted bundle and have a passphrase restore accept it."""
    _, data, _ = make_bundle(tmp_path, key=crypto.PlainSealer())
    with pytest.raises(KeyProblem):
        bundle.read_bundle(data, passphrase=PW)


# --- damage ----------------------------------------------------------------------------------
def _chunks(data):
    h = bundle.parse_header(data)
    body = data[len(h.raw):]
    full = (1 << h.chunk_exp) + crypto.OVERHEAD
    return h.raw, [body[i:i + full] for i in range(0, len(body), full)]


def test_every_flipped_byte_is_detected(tmp_path):
    _, data, _ = make_bundle(tmp_path)
    header_len = len(bundle.parse_header(data).raw)
    positions = list(range(0, header_len)) + list(range(header_len, len(data), 997)) + [len(data) - 1]
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 0x40
        with pytest.raises(CorruptObject) as ei:
            bundle.read_bundle(bytes(bad), passphrase=PW)
        assert ei.value.exit_code == EXIT_DAMAGE


def test_truncation_reordering_and_appending_are_detected(tmp_path):
    _, data, _ = make_bundle(tmp_path)
    header, chunks = _chunks(data)
    assert len(chunks) >= 4
    variants = {
        "cut at a chunk boundary": header + b"".join(chunks[:-1]),
        "cut mid-chunk": data[:-100],
        "header only": header,
        "swapped chunks": header + chunks[1] + chunks[0] + b"".join(chunks[2:]),
        "chunk repeated": header + chunks[0] + b"".join(chunks),
        "extra bytes": data + b"\0" * 40,
        "last chunk appended twice": data + chunks[-1],
        "cut inside the header": data[:40],
    }
    for what, bad in variants.items():
        with pytest.raises(CorruptObject, match="bundle"):
            bundle.read_bundle(bad, passphrase=PW)


def test_chunk_from_another_bundle_with_the_same_key_is_detected(tmp_path):
    key = crypto.Keys(os.urandom(64)).bundle
    _, a, _ = make_bundle(tmp_path / "a", key=key)
    _, b, _ = make_bundle(tmp_path / "b", key=key)
    ha, ca = _chunks(a)
    hb, cb = _chunks(b)
    with pytest.raises(CorruptObject):
        bundle.read_bundle(ha + cb[0] + b"".join(ca[1:]), key=key)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000), st.sampled_from(["pass", "key", "plain"]), st.booleans())
def test_random_bytes_give_a_dmerror(data, how, with_magic):
    if with_magic:
        data = bundle.MAGIC + data
    seal = {"pass": {"passphrase": PW}, "key": {"key": crypto.Sealer(b"k" * 32)},
            "plain": {"key": crypto.PlainSealer()}}[how]
    with pytest.raises(DmError):
        bundle.read_bundle(data, **seal)


def craft(payload_tar: bytes | None = None, *, raw_payload: bytes | None = None,
          sealer=None, protection=bundle.PROT_NONE, bundle_id=b"\x11" * 16) -> bytes:
    """A correctly sealed bundle around an arbitrary payload (a writer gone wrong)."""
    sealer = sealer or crypto.PlainSealer()
    header = bundle._make_header(protection, sealer, bundle_id, 1_700_000_000)
    out = io.BytesIO()
    out.write(header)
    sink = bundle._ChunkSealer(out, sealer, hashlib.sha256(header).digest(), b"", 1 << bundle.CHUNK_EXP)
    if raw_payload is None:
        raw_payload = zstandard.ZstdCompressor().compress(payload_tar)
    sink.write(raw_payload)
    sink.finish()
    return out.getvalue()


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=3000), st.booleans())
def test_sealed_garbage_payload_gives_a_dmerror(payload, compress):
    data = craft(payload) if compress else craft(raw_payload=payload)
    with pytest.raises(DmError):
        bundle.read_bundle(data, key=crypto.PlainSealer())


def tar_of(manifest: dict, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        m = json.dumps(manifest).encode()
        ti = tarfile.TarInfo("MANIFEST.json")
        ti.size = len(m)
        tf.addfile(ti, io.BytesIO(m))
        for ti, content in members:
            tf.addfile(ti, io.BytesIO(content) if content is not None else None)
    return buf.getvalue()


def _rec(path, kind="file", data=b"x", target=None):
    return {"path": path, "type": kind, "mode": 0o644, "uid": 0, "gid": 0, "mtime_ns": 0,
            "size": len(data) if kind == "file" else 0,
            "sha256": hashlib.sha256(data).hexdigest() if kind == "file" else None, "target": target}


def _ti(name, kind="file", data=b"x", target=None):
    ti = tarfile.TarInfo(name)
    ti.mode = 0o644
    if kind == "file":
        ti.size = len(data)
    elif kind == "dir":
        ti.type = tarfile.DIRTYPE
    else:
        ti.type, ti.linkname = tarfile.SYMTYPE, target
    return ti, (data if kind == "file" else None)


def hostile(records, members):
    manifest = {"format": appliance.MANIFEST_FORMAT, "id": "11" * 16, "files": records}
    return craft(tar_of(manifest, members))


@pytest.mark.parametrize("records,members,match", [
    ([_rec("/../etc/passwd")], [_ti("../etc/passwd")], "unsafe path"),
    ([_rec("/etc/../../x")], [_ti("etc/../../x")], "unsafe path"),
    ([_rec("etc/relative")], [_ti("etc/relative")], "unsafe path"),
    ([_rec("//etc/x")], [_ti("etc/x")], "unsafe path"),
    ([_rec("/etc/a\0b")], [_ti("etc/a")], "unsafe path"),
    ([_rec("/etc/l", "symlink", target="/"), _rec("/etc/l/passwd")],
     [_ti("etc/l", "symlink", target="/"), _ti("etc/l/passwd")], "below the symlink"),
    ([_rec("/etc/f"), _rec("/etc/f/g")], [_ti("etc/f"), _ti("etc/f/g")], "below the file"),
    ([_rec("/etc/x"), _rec("/etc/x")], [_ti("etc/x"), _ti("etc/x")], "twice"),
    ([_rec("/etc/x")], [_ti("etc/y")], "does not match"),
    ([_rec("/etc/x")], [_ti("etc/x", data=b"y")], "checksum"),
    ([_rec("/etc/x")], [], "lacks"),
    ([_rec("/etc/x")], [_ti("etc/x"), _ti("etc/extra")], "does not list"),
    ([_rec("/etc/x", "symlink", target="a")], [_ti("etc/x", "symlink", target="b")], "does not match"),
])
def test_hostile_payloads_are_refused(records, members, match):
    with pytest.raises(CorruptObject, match=match):
        bundle.read_bundle(hostile(records, members), key=crypto.PlainSealer())


def test_manifest_of_another_bundle_is_refused():
    manifest = {"format": appliance.MANIFEST_FORMAT, "id": "22" * 16, "files": []}
    with pytest.raises(CorruptObject, match="id mismatch"):
        bundle.read_bundle(craft(tar_of(manifest, [])), key=crypto.PlainSealer())


def test_compression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(bundle, "MAX_PAYLOAD", 1 << 20)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (2 << 20))
    with pytest.raises(CorruptObject, match="inflates"):
        bundle.read_bundle(craft(raw_payload=bomb), key=crypto.PlainSealer())


# --- collection edge cases ------------------------------------------------------------------
def test_non_utf8_names_and_vanished_files(tmp_path, monkeypatch):
    d = tmp_path / "etc"
    d.mkdir()
    weird = os.path.join(os.fsencode(d), b"caf\xe9.conf")
    with open(weird, "wb") as f:
        f.write(b"latin-1 name")
    (d / "gone.conf").write_text("soon gone")
    coll, man = manifest_for([str(d)], str(tmp_path))
    os.unlink(d / "gone.conf")                 # vanishes between scan and read
    data, info = bundle.bundle_bytes(coll, man, passphrase=PW)
    assert any("vanished" in w for w in info["warnings"])
    manifest, entries = bundle.read_bundle(data, passphrase=PW)
    assert [os.fsencode(e.path) for e in entries if e.type == "file"] == [weird]
    out = tmp_path / "out"
    bundlefiles.extract_entries(manifest, entries, str(out))
    with open(os.fsencode(out) + weird, "rb") as f:
        assert f.read() == b"latin-1 name"


# --- extraction -------------------------------------------------------------------------------
def test_extract_writes_modes_owners_mtimes_and_manifest(tmp_path):
    etc, data, info = make_bundle(tmp_path)
    out = tmp_path / "restore"
    summary = bundlefiles.extract_bundle(data, str(out), passphrase=PW)
    assert summary["files"] == 5 and summary["symlinks"] == 2 and summary["warnings"] == []
    src = tree_state(etc)
    got = tree_state(os.path.join(out, etc.lstrip("/")))
    assert got == src
    s = os.lstat(os.path.join(out, etc.lstrip("/"), "postfix/main.cf"))
    assert s.st_mtime_ns == 1_600_000_000_123_456_789
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["id"] == info["id"] and manifest["hostname"] == "mail.example.it"
    assert stat.S_IMODE(os.stat(out / "MANIFEST.json").st_mode) == 0o600
    assert not [n for n in os.listdir(out) if "dmbackup-tmp" in n]


def test_extract_refuses_to_overwrite_unless_told(tmp_path):
    etc, data, _ = make_bundle(tmp_path)
    out = tmp_path / "restore"
    target = out / etc.lstrip("/") / "postfix" / "main.cf"
    target.parent.mkdir(parents=True)
    target.write_text("local edit")
    before = tree_state(out)
    with pytest.raises(RestoreError, match="already exist"):
        bundlefiles.extract_bundle(data, str(out), passphrase=PW)
    assert tree_state(out) == before                       # nothing written
    bundlefiles.extract_bundle(data, str(out), passphrase=PW, overwrite=True)
    assert target.read_text().startswith("myhostname")


def test_extract_never_follows_a_link_already_in_the_directory(tmp_path):
    etc, data, _ = make_bundle(tmp_path)
    out = tmp_path / "restore"
    outside = tmp_path / "outside"
    outside.mkdir()
    first = etc.lstrip("/").split("/")[0]
    out.mkdir()
    os.symlink(outside, out / first)                        # DIR/tmp -> outside
    with pytest.raises(RestoreError, match="symbolic link"):
        bundlefiles.extract_bundle(data, str(out), passphrase=PW, overwrite=True)
    assert os.listdir(outside) == []


def test_extracted_links_are_not_followed_when_overwriting(tmp_path):
    """A second restore over a tree holding the bundle's own links writes no file through them."""
    etc, data, _ = make_bundle(tmp_path)
    out = tmp_path / "restore"
    bundlefiles.extract_bundle(data, str(out), passphrase=PW)
    link = out / etc.lstrip("/") / "dovecot" / "dangling"
    assert os.readlink(link) == "/nonexistent/target"
    bundlefiles.extract_bundle(data, str(out), passphrase=PW, overwrite=True)
    assert not os.path.exists("/nonexistent")


# --- the live preflight ---------------------------------------------------------------------
def test_diff_against_live_reports_and_only_writes_when_told(tmp_path):
    etc, data, _ = make_bundle(tmp_path)
    manifest, entries = bundle.read_bundle(data, passphrase=PW)
    main_cf = os.path.join(etc, "postfix/main.cf")
    with open(main_cf, "w") as f:
        f.write("edited after the backup\n")
    os.chmod(os.path.join(etc, "postfix/sasl/passwd"), 0o644)
    os.unlink(os.path.join(etc, "dovecot/empty.conf"))
    os.unlink(os.path.join(etc, "dovecot/link-to-main.cf"))
    os.mkdir(os.path.join(etc, "dovecot/link-to-main.cf"))   # a directory where a link was
    before = tree_state(etc)

    report = bundlefiles.diff_against_live(manifest, entries)
    actions = {c["path"][len(etc):]: c["action"] for c in report["changes"]}
    assert actions["/postfix/main.cf"] == "replace"
    assert actions["/postfix/sasl/passwd"] == "metadata"
    assert actions["/dovecot/empty.conf"] == "create"
    assert actions["/dovecot/link-to-main.cf"] == "conflict"
    assert actions["/dovecot/conf.d/10-mail.conf"] == "unchanged"
    assert report["applied"] is False and report["counts"]["replace"] == 1
    assert tree_state(etc) == before                          # a preflight writes nothing

    stamp = utctime.parse_time("2026-11-28T02:30:00Z")
    report = bundlefiles.diff_against_live(manifest, entries, overwrite=True, time=stamp)
    assert report["applied"] is True
    with open(main_cf) as f:
        assert f.read().startswith("myhostname")
    with open(main_cf + ".dmbackup-20261128T023000Z") as f:
        assert f.read() == "edited after the backup\n"
    assert stat.S_IMODE(os.stat(os.path.join(etc, "postfix/sasl/passwd")).st_mode) == 0o600
    assert os.path.exists(os.path.join(etc, "dovecot/empty.conf"))
    assert os.path.isdir(os.path.join(etc, "dovecot/link-to-main.cf"))   # conflicts left alone
    assert any("left alone" in w for w in report["warnings"])
    again = bundlefiles.diff_against_live(manifest, entries)
    assert {c["action"] for c in again["changes"]} == {"unchanged", "conflict"}


def test_diff_against_live_creates_missing_directories(tmp_path):
    etc, data, _ = make_bundle(tmp_path)
    manifest, entries = bundle.read_bundle(data, passphrase=PW)
    root = tmp_path / "newroot"
    root.mkdir()
    report = bundlefiles.diff_against_live(manifest, entries, root=str(root), overwrite=True)
    assert report["counts"]["create"] == len(entries)
    assert tree_state(os.path.join(root, etc.lstrip("/"))) == tree_state(etc)


def test_special_files_are_skipped_with_a_warning(tmp_path):
    d = tmp_path / "etc"
    d.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "control.sock"))
    try:
        coll = appliance.collect([str(d)])
    finally:
        s.close()
    assert [i.type for i in coll.items] == ["dir"]
    assert any("control.sock" in w for w in coll.warnings)


def test_header_layout_matches_the_documented_offsets(tmp_path):
    _, data, info = make_bundle(tmp_path)
    magic, version, prot, comp, exp = struct.unpack_from(">8sBBBB", data, 0)
    assert (magic, version, prot, comp, exp) == (b"DMBUNDLE", 1, 1, 1, 16)
    assert data[12:28].hex() == info["id"]
    log2n, r, p = struct.unpack_from(">BBB", data, 36)
    assert (log2n, r, p) == (10, 8, 1)
    (check_len,) = struct.unpack_from(">H", data, 55)
    end = 57 + check_len
    assert hashlib.sha256(data[:end]).digest() == data[end:end + 32]
