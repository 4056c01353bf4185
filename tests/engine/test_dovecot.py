"""What a restore is for: a real Dovecot serving the restored store exactly as before.

The assertion is IMAP's own view: for every user and folder, UIDVALIDITY, UIDNEXT, and
(uid, Message-ID, flags, keywords) of every message, plus the subscription list.
"""

import json
import os
import threading
import time

import pytest

from tests.fixtures.imapstate import capture_state, count_uid_mismatches, diff_states
from tests.fixtures.mailgen import mutate, populate
from tests.world import World, diff_trees, tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="Dovecot's vmail uid needs root")

USERS = ["mario@example.it", "anna@example.it", "luca@other.it"]


def world_on(tmp_path, store) -> World:
    w = World(tmp_path)
    w.store = str(store)
    w.write_config()
    w.ok("init", "local")
    return w


def test_restored_store_is_served_identically(dovecot_factory, tmp_path):
    live = dovecot_factory(USERS)
    populate(live, USERS, seed=1)
    before = capture_state(live, USERS)
    w = world_on(tmp_path, live.vmail_root)
    w.ok("backup", "--target", "local")
    out = dovecot_factory.tmpdir("restored-")
    w.ok("restore", "--target", "local", "--to", str(out))
    fresh = dovecot_factory(USERS, vmail_root=out)
    after = capture_state(fresh, USERS)
    assert diff_states(before, after) == []
    assert count_uid_mismatches(before, after) == 0


def test_every_day_of_a_chain_is_served_as_it_was(dovecot_factory, tmp_path):
    live = dovecot_factory(USERS)
    populate(live, USERS, seed=3)
    w = world_on(tmp_path, live.vmail_root)
    states, trees = [], []
    for day in range(4):
        if day:
            mutate(live, USERS, seed=10 + day)
        states.append(capture_state(live, USERS))   # lets Dovecot settle UIDs first
        trees.append(tree(str(live.vmail_root)))
        w.ok("backup", "--target", "local")
        time.sleep(1.05)                            # distinct snapshot times for --at
    rows = [r for r in json.loads(w.ok("snapshots", "--json").out) if r["kind"] != "config"]
    assert [r["kind"] for r in rows] == ["full"] + ["incremental"] * 3
    for day, r in enumerate(rows):
        out = dovecot_factory.tmpdir(f"day{day}-")
        w.ok("restore", "--target", "local", "--at", r["time"], "--to", str(out))
        assert diff_trees(trees[day], tree(str(out))) == [], f"day {day}"
        fresh = dovecot_factory(USERS, vmail_root=out)
        assert diff_states(states[day], capture_state(fresh, USERS)) == [], f"day {day}"
        fresh.close()


def _mutator(live, stop: threading.Event, errors: list):
    seed = 100
    while not stop.is_set():
        try:
            mutate(live, USERS, seed=seed)
        except Exception as exc:        # a failed IMAP op is not what this test is about
            errors.append(repr(exc))
        seed += 1


def test_backup_during_heavy_imap_activity_loses_no_uid(dovecot_factory, tmp_path):
    live = dovecot_factory(USERS)
    populate(live, USERS, seed=5, n_messages=120)
    w = world_on(tmp_path, live.vmail_root)
    stop, errors = threading.Event(), []
    t = threading.Thread(target=_mutator, args=(live, stop, errors), daemon=True)
    t.start()
    results = []
    try:
        for i in range(3):
            before = capture_state(live, USERS)
            r = w.run("backup", "--target", "local", "--json")
            after = capture_state(live, USERS)
            assert r.code in (0, 1), r.err            # 1: messages expunged during the scan
            results.append((json.loads(r.out)["id"], before, after))
    finally:
        stop.set()
        t.join(timeout=120)
    checked = 0
    for snap, before, after in results:
        out = dovecot_factory.tmpdir("busy-")
        w.ok("restore", snap, "--to", str(out))
        fresh = dovecot_factory(USERS, vmail_root=out)
        restored = capture_state(fresh, USERS)
        fresh.close()
        for user in USERS:
            for folder, fb in before[user]["folders"].items():
                fa = after[user]["folders"].get(folder)
                fr = restored[user]["folders"].get(folder)
                if fb.get("noselect") or not fa or fa.get("noselect") or fa["uidvalidity"] != fb["uidvalidity"]:
                    continue
                live_ids = {m[0]: m[1] for m in fb["messages"]} | {m[0]: m[1] for m in fa["messages"]}
                stable = {m[0]: m[1] for m in fb["messages"]} .keys() & {m[0] for m in fa["messages"]}
                assert fr is not None and fr["uidvalidity"] == fb["uidvalidity"], (snap, user, folder)
                got = {m[0]: m[1] for m in fr["messages"]}
                # no UID carries another message than it did on the live server
                mism = [u for u, mid in got.items() if u in live_ids and live_ids[u] != mid]
                assert mism == [], (snap, user, folder, mism)
                # every message that lived through the whole backup is there, same UID
                missing = [u for u in stable if u not in got]
                assert missing == [], (snap, user, folder, missing)
                checked += len(stable)
    assert checked > 500
    print(f"checked {checked} stable messages over {len(results)} snapshots; mutator errors: {len(errors)}")


def test_mailbox_restore_into_live_dovecot_lands_in_restored_folder(dovecot_factory, tmp_path):
    live = dovecot_factory(USERS)
    populate(live, USERS, seed=7)
    w = World(tmp_path)
    w.store = str(live.vmail_root)
    w.write_config(extra="")
    with open(w.config) as f:
        text = f.read().replace("[source]\n", f'[source]\ndovecot_config = "{live.config_file}"\n')
    with open(w.config, "w") as f:
        f.write(text)
    w.ok("init", "local")
    at_backup = capture_state(live, ["anna@example.it"])
    w.ok("backup", "--target", "local")
    # the user deletes her INBOX mail afterwards
    c = live.imap("anna@example.it")
    c.select("INBOX")
    c.store("1:*", "+FLAGS", "\\Deleted")
    c.expunge()
    c.logout()
    live_before = capture_state(live, USERS)
    r = w.ok("restore", "--target", "local", "--mailbox", "anna@example.it", "--json")
    res = json.loads(r.out)
    assert "Restored-" in res["destination"]
    live_after = capture_state(live, USERS)
    # live folders unchanged; only Restored-* folders added
    for user in USERS:
        for folder, st in live_before[user]["folders"].items():
            assert live_after[user]["folders"][folder] == st, (user, folder)
        extra = set(live_after[user]["folders"]) - set(live_before[user]["folders"])
        assert all(f.startswith("Restored-") for f in extra)
        assert bool(extra) == (user == "anna@example.it")
    restored_inbox = next(f for f in live_after["anna@example.it"]["folders"] if f.endswith("/INBOX"))
    want = sorted((m[1], m[2], m[3]) for m in at_backup["anna@example.it"]["folders"]["INBOX"]["messages"])
    got = sorted((m[1], m[2], m[3]) for m in live_after["anna@example.it"]["folders"][restored_inbox]["messages"])
    assert got == want and want           # same Message-IDs, flags and keywords
    assert restored_inbox in live_after["anna@example.it"]["subscriptions"]
    for dp, dns, fns in os.walk(os.path.join(str(live.vmail_root), "example.it", "anna", "Maildir")):
        for n in dns + fns:
            st = os.lstat(os.path.join(dp, n))
            assert (st.st_uid, st.st_gid) == (5000, 5000), os.path.join(dp, n)
