"""End to end over SMB: the real CLI (``python3 -m dmbackup --config FILE``, as a subprocess)
against a private smbd requiring encryption: init, full and incremental backup, verify
--read-data, restore of either snapshot; and what the administrator sees when the share is
gone, the password is wrong or the server hangs.
"""

from __future__ import annotations

import json
import os

from tests.fixtures.smbd import SmbServer
from tests.world import World, diff_trees, tree


def smb_world(tmp_path, srv: SmbServer, *, password_file: str | None = None, timeout: int = 20) -> World:
    w = World(tmp_path)
    w.make_store()
    w.write_config(targets=f"""[targets.nas]
type = "smb"
server = "{srv.host}"
port = {srv.port}
share = "{srv.share}"
path = "backups/appliances"
username = "{srv.username}"
password_file = "{password_file or srv.password_file}"
timeout = {timeout}
""")
    return w


def one_line_error(r) -> str:
    assert "Traceback" not in r.err and "Traceback" not in r.out, r.err
    lines = [ln for ln in r.err.strip().splitlines() if ln.strip()]
    assert lines, f"no error message; stdout: {r.out}"
    return lines[-1]


def _first_message(store: str) -> str:
    cur = os.path.join(store, "example.it", "mario", "Maildir", "cur")
    return os.path.join(cur, sorted(os.listdir(cur))[0])


def test_init_backup_verify_restore_over_smb(smbd, tmp_path):
    w = smb_world(tmp_path, smbd)
    r = w.sub("init", "nas")
    assert r.code == 0, r.err
    repo = smbd.share_dir / "backups" / "appliances" / "dmbackup" / "mx.test"
    assert (repo / "repo.json").is_file()

    r = w.sub("backup", "--target", "nas", "--what", "mail", "--full", "--json")
    assert r.code == 0, r.err
    before = tree(w.store)

    # a day of mail: a flag change (rename), a new message (no UID yet: restores below say
    # --uid-gap 0 for an exact copy), a deletion
    msg = _first_message(w.store)
    base, _, flags = msg.rpartition(":2,")
    os.rename(msg, f"{base}:2,RS")
    new_dir = os.path.join(w.store, "example.it", "anna", "Maildir", "new")
    with open(os.path.join(new_dir, "1793999999.M1P1.mx,S=20,W=21"), "wb") as f:
        f.write(b"Subject: new\r\n\r\nhi\r\n")
    gone_dir = os.path.join(w.store, "example.it", "anna", "Maildir", "cur")
    os.unlink(os.path.join(gone_dir, sorted(os.listdir(gone_dir))[-1]))
    after = tree(w.store)

    r = w.sub("backup", "--target", "nas", "--what", "mail", "--json")
    assert r.code == 0, r.err
    rows = json.loads(w.sub("snapshots", "--target", "nas", "--json").out)
    mail = [x for x in rows if x["kind"] != "config"]
    assert [x["kind"] for x in mail] == ["full", "incremental"]
    assert mail[1]["stored_bytes"] < mail[0]["stored_bytes"] / 10

    r = w.sub("verify", "--target", "nas", "--read-data")
    assert r.code == 0, r.err

    out_new = os.path.join(w.tmp, "restored-new")
    r = w.sub("restore", "--target", "nas", "--uid-gap", "0", "--to", out_new)
    assert r.code == 0, r.err
    assert diff_trees(after, tree(out_new)) == []

    out_old = os.path.join(w.tmp, "restored-old")
    r = w.sub("restore", "--target", "nas", mail[0]["id"], "--uid-gap", "0", "--to", out_old)
    assert r.code == 0, r.err
    assert diff_trees(before, tree(out_old)) == []

    leftovers = [n for _, _, fns in os.walk(smbd.share_dir) for n in fns if ".tmp-" in n]
    assert leftovers == []


def test_share_gone_exits_7(smbd, tmp_path):
    w = smb_world(tmp_path, smbd)
    assert w.sub("init", "nas").code == 0
    smbd.kill()
    r = w.sub("backup", "--target", "nas", "--what", "mail")
    assert r.code == 7
    assert f"cannot reach //127.0.0.1/{smbd.share}" in one_line_error(r)


def test_wrong_password_exits_7_without_showing_it(smbd, tmp_path):
    pw = tmp_path / "nas.pw"
    pw.write_text(smbd.password + "\n")
    pw.chmod(0o600)
    w = smb_world(tmp_path, smbd, password_file=str(pw))
    assert w.sub("init", "nas").code == 0
    pw.write_text("Wrong-Password-42\n")
    r = w.sub("backup", "--target", "nas", "--what", "mail")
    assert r.code == 7
    line = one_line_error(r)
    assert f"authentication failed for user {smbd.username} on //127.0.0.1/{smbd.share}" in line
    assert "Wrong-Password-42" not in r.err + r.out


def test_hung_server_exits_7_instead_of_hanging(smbd, tmp_path):
    w = smb_world(tmp_path, smbd, timeout=3)
    assert w.sub("init", "nas").code == 0
    smbd.pause()
    try:
        r = w.sub("backup", "--target", "nas", "--what", "mail", timeout=300)   # hang guard only
    finally:
        smbd.resume()
    assert r.code == 7
    assert "no answer from the server within 3s" in one_line_error(r)
