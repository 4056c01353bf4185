"""Database dumps in config bundles (format version 2): round trip, unencrypted bundles, damage.

No database server here: the dumps are files of arbitrary bytes; what makes them is
tests/source/test_databases*.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile

import pytest
import zstandard

from dmbackup.archive import bundle, bundlefiles, crypto
from dmbackup.errors import CorruptObject
from dmbackup.source import appliance

PW = b"correct horse battery staple"
DUMP = b"-- MariaDB dump\nINSERT INTO `mailbox` VALUES ('a@x','{SSHA512}...');\n-- Dump completed\n" * 50


@pytest.fixture(autouse=True)
def _weak_kdf(monkeypatch):
    monkeypatch.setattr(crypto, "SCRYPT_N", 1 << 10)


def _setup(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text("myhostname = mx\n")
    dump = tmp_path / "postfixadmin.sql"
    dump.write_bytes(DUMP)
    rec = {"name": "postfixadmin", "type": "mysql", "file": "databases/postfixadmin.sql", "size": len(DUMP),
           "sha256": hashlib.sha256(DUMP).hexdigest(), "users": None}
    manifest = {"format": appliance.MANIFEST_FORMAT, "time": "2026-11-28T02:30:00Z", "databases": [rec]}
    return [str(etc)], manifest, {rec["file"]: str(dump)}


def test_dumps_round_trip_and_extract(tmp_path):
    paths, manifest, dumps = _setup(tmp_path)
    data, info = bundle.bundle_bytes(paths, manifest, passphrase=PW, dumps=dumps)
    assert bundle.parse_header(data).version == 2
    contents = bundle.read_bundle(data, passphrase=PW)
    m, entries = contents                                     # two values, as before
    d, = contents.dumps
    assert (d.file, d.filename, d.data) == ("databases/postfixadmin.sql", "postfixadmin.sql", DUMP)
    assert m["databases"][0]["stored"] is True and info["databases"][0]["stored"] is True
    out = tmp_path / "out"
    summary = bundlefiles.extract_bundle(data, str(out), passphrase=PW)
    written = out / "databases" / "postfixadmin.sql"
    assert summary["databases"] == [str(written)] and written.read_bytes() == DUMP
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "databases").stat().st_mode) == 0o700
    with pytest.raises(Exception, match="already exist"):
        bundlefiles.extract_bundle(data, str(out), passphrase=PW)


def test_a_bundle_without_dumps_stays_version_1(tmp_path):
    paths, manifest, _ = _setup(tmp_path)
    data, _ = bundle.bundle_bytes(paths, dict(manifest, databases=[]), passphrase=PW)
    assert bundle.parse_header(data).version == 1
    assert bundle.read_bundle(data, passphrase=PW).dumps == []


def test_an_unencrypted_bundle_stores_no_dump(tmp_path):
    paths, manifest, dumps = _setup(tmp_path)
    data, info = bundle.bundle_bytes(paths, manifest, key=crypto.PlainSealer(), dumps=dumps)
    assert bundle.parse_header(data).version == 1
    assert DUMP[:40] not in zstandard.ZstdDecompressor().decompressobj().decompress(
        bundle.decrypt_bundle(data, key=crypto.PlainSealer()))
    contents = bundle.read_bundle(data, key=crypto.PlainSealer())
    assert contents.dumps == [] and contents[0]["databases"][0]["stored"] is False
    assert any("not stored" in w for w in info["warnings"])


def _reseal(tar: bytes, version: int) -> bytes:
    """A correctly sealed (protection 3) bundle around ``tar``: a writer gone wrong."""
    sealer = crypto.PlainSealer()
    header = bundle._make_header(bundle.PROT_NONE, sealer, b"\x22" * 16, 1_700_000_000, version=version)
    out = io.BytesIO()
    out.write(header)
    sink = bundle._ChunkSealer(out, sealer, hashlib.sha256(header).digest(), b"", 1 << bundle.CHUNK_EXP)
    sink.write(zstandard.ZstdCompressor().compress(tar))
    sink.finish()
    return out.getvalue()


def _tar(records: list[dict], members: list[tuple[str, bytes]]) -> bytes:
    manifest = {"format": appliance.MANIFEST_FORMAT, "id": "22" * 16, "files": [], "databases": records}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, content in [("MANIFEST.json", json.dumps(manifest).encode())] + members:
            ti = tarfile.TarInfo(name)
            ti.size = len(content)
            tf.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


def _drec(name: str, data: bytes = DUMP, stored: bool = True) -> dict:
    return {"file": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "stored": stored}


@pytest.mark.parametrize("records,members,version,match", [
    ([_drec("databases/a.sql")], [("databases/a.sql", DUMP)], 1, "version 1 claims"),
    ([_drec("databases/../a.sql")], [("databases/../a.sql", DUMP)], 2, "unsafe"),
    ([_drec("etc/a.sql")], [("etc/a.sql", DUMP)], 2, "unsafe"),
    ([_drec("databases/a.sql"), _drec("databases/a.sql")], [("databases/a.sql", DUMP)] * 2, 2, "repeated"),
    ([_drec("databases/a.sql")], [("databases/b.sql", DUMP)], 2, "lacks the dump"),
    ([_drec("databases/a.sql")], [], 2, "lacks the dump"),
    ([_drec("databases/a.sql")], [("databases/a.sql", DUMP + b"x")], 2, "checksum"),
    ([_drec("databases/a.sql", stored=False)], [("databases/a.sql", DUMP)], 2, "does not list"),
    ([_drec("databases/a.sql")], [("databases/a.sql", DUMP), ("databases/b.sql", DUMP)], 2, "does not list"),
])
def test_hostile_dumps_are_refused(records, members, version, match):
    with pytest.raises(CorruptObject, match=match):
        bundle.read_bundle(_reseal(_tar(records, members), version), key=crypto.PlainSealer())


def test_a_newer_format_says_upgrade(tmp_path):
    data = _reseal(_tar([], []), 3)
    with pytest.raises(CorruptObject, match="upgrade dmbackup"):
        bundle.read_bundle(data, key=crypto.PlainSealer())


def test_config_keys_of_databases_are_documented():
    """tests/cli/test_version_help.py finds the keys config.py reads by their Section calls;
    the [[source.databases]] keys are read by databases.parse_specs: checked here."""
    from dmbackup.source import databases

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "packaging", "man", "dmbackup.toml.5"), encoding="utf-8") as f:
        page = f.read()
    bold = "\n".join(ln for ln in page.splitlines() if ln.startswith((".B", ".SH", ".SS")))
    for key in {"databases"} | set().union(*databases.KEYS.values()):
        assert key in bold, f"{key} not in dmbackup.toml.5"
    with open(os.path.join(root, "packaging", "deb", "dmbackup.toml"), encoding="utf-8") as f:
        example = f.read()
    for key in set().union(*databases.KEYS.values()) | {"[[source.databases]]"}:
        assert f"# {key}" in example, f"{key} not in the example config"
