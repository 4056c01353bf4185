"""``status``: reports match the JSON Schema in docs/status-json.md, flags and exit codes are right.

The schema is read from the document itself, so the documentation cannot drift from the
code without this test failing. The validator below implements the small part of JSON Schema
the document uses (type, const, enum, required, properties, items, anyOf, $ref, pattern,
minimum) and, stricter than the schema, rejects fields the document does not describe.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.world import base_config
from dmbackup import engine
from dmbackup.daemon import status
from dmbackup.context import App
from dmbackup.config import load
from dmbackup.daemon.jobs import run_job
from dmbackup.log import Logger
from dmbackup.daemon.scheduler import SchedulerState

DOC = Path(__file__).resolve().parent.parent / "docs" / "status-json.md"
UTC = timezone.utc


@pytest.fixture(autouse=True)
def _utc(utc_local_time):
    """Schedules are local time: these tests expect plain UTC (fixture in tests/conftest.py)."""


def doc_schema() -> dict:
    m = re.search(r"```json schema\n(.*?)```", DOC.read_text(), re.S)
    assert m, "docs/status-json.md must contain a ```json schema block"
    return json.loads(m.group(1))


def doc_example() -> dict:
    m = re.search(r"## Example\n\n```json\n(.*?)```", DOC.read_text(), re.S)
    return json.loads(m.group(1))


_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)}


def _is_type(v, t: str) -> bool:
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, _TYPES[t])


def validate(value, schema: dict, root: dict, path: str = "$") -> list[str]:
    """Errors of ``value`` against ``schema`` (the subset described in the module docstring)."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return validate(value, root["$defs"][name], root, path)
    errs = []
    if "anyOf" in schema:
        if all(validate(value, s, root, path) for s in schema["anyOf"]):
            errs.append(f"{path}: matches none of anyOf")
        return errs
    if "const" in schema and value != schema["const"]:
        errs.append(f"{path}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r} not in {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, t) for t in types):
            return errs + [f"{path}: expected {types}, got {type(value).__name__} {value!r}"]
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        errs.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        errs.append(f"{path}: {value} < {schema['minimum']}")
    if isinstance(value, dict) and "properties" in schema:
        for key in schema.get("required", []):
            if key not in value:
                errs.append(f"{path}: missing {key!r}")
        for key, v in value.items():
            if key not in schema["properties"]:
                errs.append(f"{path}: undocumented field {key!r}")
            else:
                errs += validate(v, schema["properties"][key], root, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errs += validate(v, schema["items"], root, f"{path}[{i}]")
    return errs


def assert_valid(report: dict) -> None:
    schema = doc_schema()
    errors = validate(json.loads(json.dumps(report)), schema, schema)
    assert errors == [], "\n".join(errors)


class FakeClock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def write_config(tmp_path: Path) -> str:
    mbox = tmp_path / "vmail" / "example.test" / "u" / "Maildir" / "cur"
    mbox.mkdir(parents=True)
    for i in range(5):
        (mbox / f"{1700000000 + i}.M{i}.mail.test:2,S").write_text(f"Subject: {i}\n\nbody {i}\n")
    toml = base_config(tmp_path) + textwrap.dedent(f"""
        [targets.gone]
        type = "dir"
        path = "{tmp_path}/unplugged"
        [jobs.nightly]
        target = "local"
        schedule = "daily at 02:30"
        [jobs.offsite]
        target = "gone"
        schedule = "weekly on sunday at 04:00"
        [jobs.stale]
        target = "local"
        schedule = "every 6 hours"
        [jobs.byhand]
        target = "local"
    """)
    p = tmp_path / "dmbackup.toml"
    p.write_text(toml)
    return str(p)


def test_report_matches_documented_schema_and_flags(tmp_path):
    cfg_file = write_config(tmp_path)
    app = App(load(cfg_file), log=Logger(None))
    engine.init_repo(app, "local")
    ok = run_job(app, "nightly")
    assert ok.status == "ok", ok.error
    failed = run_job(app, "offsite")
    assert failed.status == "failed" and failed.exit_code == 7
    # "stale": the daemon has known it for three days and it never succeeded
    now = datetime.now(UTC)
    SchedulerState(app.config.state_dir).save(
        {"jobs": {"stale": {"first_seen": (now - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")}}})

    report = status.status(app)
    assert_valid(report)
    jobs = {j["name"]: j for j in report["jobs"]}
    assert [j["name"] for j in report["jobs"]] == sorted(jobs)

    n = jobs["nightly"]
    assert n["result"] == "ok" and not n["failed"] and not n["overdue"]
    assert n["last_success"]["snapshot"] == ok.snapshot_id
    assert 0 <= n["last_success_age_seconds"] < 600
    assert n["next_run"].endswith("T02:30:00Z") and n["interval_seconds"] == 86400

    o = jobs["offsite"]
    assert o["failed"] and o["result"] == "failed" and o["last_run"]["exit_code"] == 7
    assert "unplugged" in o["last_run"]["error"] and o["last_success"] is None

    s = jobs["stale"]
    assert s["overdue"] and s["last_run"] is None and s["result"] is None

    b = jobs["byhand"]
    assert b["schedule"] is None and b["next_run"] is None and not b["overdue"]

    targets = {t["name"]: t for t in report["targets"]}
    assert targets["local"]["available"] is True
    assert targets["local"]["snapshots"] >= 1
    assert targets["local"]["newest_snapshot"]["id"] == ok.snapshot_id
    assert targets["local"]["newest_snapshot"]["kind"] == "full"
    assert isinstance(targets["local"]["free_bytes"], int) and targets["local"]["free_bytes"] > 0
    assert targets["gone"]["available"] is False and "unplugged" in targets["gone"]["error"]

    assert status.exit_code(report) == 1 and report["ok"] is False
    text = status.render_text(report)
    assert "OVERDUE" in text and "FAILED" in text and "nightly" in text


def test_healthy_report_exits_zero_and_overdue_boundary(tmp_path):
    cfg_file = write_config(tmp_path)
    app = App(load(cfg_file), log=Logger(None))
    for job in ("nightly", "offsite", "stale"):
        app.state.record_run(job, {"time": "2026-11-27T02:30:00Z", "status": "ok", "exit_code": 0,
                                   "snapshot": "S"})
    at = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    report = status.status(app, clock=FakeClock(at), check_targets=False)
    assert_valid(report)
    assert status.exit_code(report) == 0 and report["ok"] is True
    assert all(t["available"] is None for t in report["targets"])
    jobs = {j["name"]: j for j in report["jobs"]}
    assert jobs["nightly"]["next_run"] == "2026-11-28T02:30:00Z"
    assert jobs["offsite"]["next_run"] == "2026-11-29T04:00:00Z"       # 2026-11-29 is a Sunday
    assert jobs["stale"]["next_run"] == "2026-11-27T12:00:00Z"         # 6 h after 02:30 has passed: now

    # twice the interval is the limit: 12 h for "every 6 hours"
    r = status.status(app, clock=FakeClock(datetime(2026, 11, 27, 14, 30, tzinfo=UTC)), check_targets=False)
    assert not {j["name"]: j for j in r["jobs"]}["stale"]["overdue"]
    r = status.status(app, clock=FakeClock(datetime(2026, 11, 27, 14, 31, tzinfo=UTC)), check_targets=False)
    assert {j["name"]: j for j in r["jobs"]}["stale"]["overdue"]
    assert status.exit_code(r) == 1


def test_documented_example_is_valid():
    assert_valid(doc_example())


def test_validator_rejects_what_it_should():
    schema = doc_schema()
    bad = doc_example()
    bad["jobs"][0]["overdue"] = "no"
    bad["jobs"][0]["surprise"] = 1
    del bad["targets"][0]["free_bytes"]
    errs = validate(bad, schema, schema)
    assert any("overdue" in e for e in errs)
    assert any("surprise" in e for e in errs)
    assert any("free_bytes" in e for e in errs)


def test_cli_status_json(tmp_path):
    cfg_file = write_config(tmp_path)
    app = App(load(cfg_file), log=Logger(None))
    engine.init_repo(app, "local")
    assert run_job(app, "nightly").status == "ok"
    proc = subprocess.run([sys.executable, "-m", "dmbackup", "--config", cfg_file, "status", "--json"],
                          capture_output=True, text=True, timeout=120)
    report = json.loads(proc.stdout)
    assert_valid(report)
    # offsite and stale never ran; nothing failed, nothing is overdue yet (never seen by a daemon)
    assert proc.returncode == 0, proc.stderr
    app.state.record_run("offsite", {"time": "2026-11-27T02:30:00Z", "status": "failed", "exit_code": 7,
                                     "error": "disk absent"})
    proc = subprocess.run([sys.executable, "-m", "dmbackup", "--config", cfg_file, "status"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout and "disk absent" in proc.stdout
