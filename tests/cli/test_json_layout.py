"""``--json`` layout (dmbackup.cli.common.to_json): two-space indentation, except a long list
of objects (``find``'s messages, ``snapshots``), one object a line. Only the layout differs:
what a JSON parser reads is the same either way."""

from __future__ import annotations

import json
import os
import random

import pytest

from dmbackup.cli import common
from dmbackup.cli.common import LONG_LIST, to_json


def _objects(n: int) -> list[dict]:
    rnd = random.Random(n)
    names = ["INBOX", "Archivio/2024", "Posta inviàta", "\udcff\udcfe bytes", 'quo"te\\', "line\nbreak", "日本"]
    return [{"name": rnd.choice(names), "size": rnd.randint(0, 1 << 40), "flags": ["\\Seen"][: rnd.randint(0, 1)],
             "nested": {"a": [1, 2], "b": {}}, "none": None, "ok": rnd.random() < 0.5} for _ in range(n)]


def test_short_output_is_exactly_the_indented_json():
    for obj in ({"a": 1}, [], {}, _objects(LONG_LIST), {"messages": _objects(LONG_LIST), "count": LONG_LIST},
                {"messages": [1] * (LONG_LIST + 5)}, [{"a": 1}] * LONG_LIST + [3]):
        assert to_json(obj) == json.dumps(obj, indent=2, default=str, ensure_ascii=True)


def test_a_long_list_of_objects_is_one_object_a_line_and_parses_the_same():
    many = _objects(LONG_LIST + 1)
    for obj in (many, {"target": "usb1", "filters": {"from": "rossi"}, "messages": many, "warnings": [],
                       "count": len(many), "empty": {}}):
        text = to_json(obj)
        assert json.loads(text) == json.loads(json.dumps(obj, default=str))
        assert text.isascii()
        lines = text.split("\n")
        one_each = [ln for ln in lines if ln.strip().startswith('{"name"')]
        assert [json.loads(ln.strip().rstrip(",")) for ln in one_each] == json.loads(json.dumps(many, default=str))
    # the other members keep their indented layout, shifted under their key
    assert '  "filters": {\n    "from": "rossi"\n  },' in text


def test_a_long_list_is_written_in_pieces_that_make_the_same_text(monkeypatch):
    """``emit`` prints ``json_pieces`` one at a time (an answer of 100,000 messages is never
    one string): the pieces, however many objects each holds, join to the very same text."""
    many = _objects(2 * LONG_LIST + 7)
    for obj in (many, {"target": "usb1", "messages": many, "warnings": ["w"], "count": len(many)},
                {"messages": many, "snapshots": many}, {"a": 1}):
        whole = to_json(obj)
        assert json.loads(whole) == json.loads(json.dumps(obj, default=str))
        for n in (1, 7, LONG_LIST, 10 ** 6):
            monkeypatch.setattr(common, "JSON_PIECE_LINES", n)
            pieces = list(common.json_pieces(obj))
            assert "".join(pieces) == whole
            if n == 7 and obj is many:
                assert len(pieces) > len(many) // 7
                assert max(p.count("\n") for p in pieces) <= 7


def test_find_json_with_many_messages_is_one_message_a_line(tmp_path, monkeypatch):
    """Through the CLI: ``find --json`` over the awkward store, with the threshold lowered so
    that its messages make a long list: one message a line, the same answer."""
    from tests.engine.findworld import awkward_store
    from tests.world import World

    w = World(tmp_path)
    awkward_store(w.store)
    w.write_config()
    w.ok("init", "local")
    w.ok("backup", "--target", "local")
    plain = w.ok("find", "--json", "--since", "1970-01-01").out
    monkeypatch.setattr(common, "LONG_LIST", 3)
    text = w.ok("find", "--json", "--since", "1970-01-01").out
    got, want = json.loads(text), json.loads(plain)
    assert got == want and len(got["messages"]) > 3
    lines = text.split("\n")
    start = lines.index('  "messages": [')
    for i, m in enumerate(got["messages"]):
        assert json.loads(lines[start + 1 + i].strip().rstrip(",")) == m
    assert lines[start + 1 + len(got["messages"])] == "  ],"
    monkeypatch.setattr(common, "JSON_PIECE_LINES", 2)      # printed in pieces of two messages
    assert w.ok("find", "--json", "--since", "1970-01-01").out == text


@pytest.mark.parametrize("json_out", [True, False])
def test_a_reader_that_stops_reading_is_no_error(tmp_path, json_out):
    """``dmbackup find --json | head``: the reader goes away before the answer is printed. The
    command ends as it would have (its exit code, its log), with no "internal error", no crash
    report and no traceback: the reader chose to stop. (Its stdout here is a pipe whose read
    end is closed before it starts, so every write fails with EPIPE.)"""
    import subprocess
    import sys

    from tests.engine.findworld import awkward_store
    from tests.world import ROOT, World

    w = World(tmp_path)
    awkward_store(w.store)
    w.write_config()
    w.ok("init", "local")
    w.ok("backup", "--target", "local")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r, wr = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "dmbackup", "--config", w.config, "find", "--since", "1970-01-01",
                            *(["--json"] if json_out else [])], stdout=wr, stderr=subprocess.PIPE, env=env,
                           text=True, timeout=300)
    finally:
        os.close(wr)
    assert p.returncode == 0, p.stderr
    assert "internal error" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not os.path.isdir(os.path.join(w.state, "crash")) or not os.listdir(os.path.join(w.state, "crash"))
