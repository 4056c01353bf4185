"""Runs tests/targets/test_nfs.py inside rpcbind's private namespace, from a plain pytest.

The NFS server tests cannot run in the machine's own network namespace (rpcbind binds
0.0.0.0:111), so that module skips there. This test starts it through
tests/nfs/run-in-netns.sh and fails if anything in it failed or was skipped, so one plain
``pytest`` run exercises NFS for real. Inside the namespace it is not needed and skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.fixtures.ganesha import RUNNER, in_private_netns, missing_tools

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIN_TESTS = 150     # fewer means tests were not collected: fail rather than look green


def test_nfs_suite_in_private_netns(tmp_path):
    if in_private_netns():
        pytest.skip("already inside the private namespace")
    if os.geteuid() != 0:
        pytest.skip("needs root for unshare --net --mount")
    missing = missing_tools()
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: run scripts/install-test-deps.sh")
    junit = tmp_path / "nfs-junit.xml"
    proc = subprocess.run(
        [RUNNER, "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'inner'}", f"--junitxml={junit}"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHON=sys.executable), timeout=1800)
    out = proc.stdout.decode(errors="replace")
    assert junit.exists(), out[-6000:]
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    skipped = [f"{c.get('name')}: {c.find('skipped').get('message')}"     # xfails are known, strict
               for c in suite.iter("testcase")
               if c.find("skipped") is not None and c.find("skipped").get("type") != "pytest.xfail"]
    assert proc.returncode == 0, out[-6000:]
    assert skipped == [], out[-3000:]
    assert int(suite.get("tests")) >= MIN_TESTS, out[-3000:]
