"""Shared test setup: isolated environment, weak KDF, and a ready-made dmbackup world.

Every test runs with DMBACKUP_* variables cleared and the KDF weakened (restic's
TestUseLowSecurityKDFParameters idea) by patching ``crypto.SCRYPT_N`` in this process only:
the product has no switch for it, so a ``dmbackup`` child process always pays the production
cost when it makes a key (tests/security/test_medium_kdf_and_modes.py).
"""

from __future__ import annotations

import os
import time

import pytest

# the shared contract suites and the world helper assert too: show the values when they fail
# (tests/targets/contract.py is no test module, so pytest would print a bare AssertionError)
pytest.register_assert_rewrite("tests.targets.contract", "tests.world")

from dmbackup.archive import crypto  # noqa: E402
from tests.world import World  # noqa: E402

# Fixture modules, registered once here (pytest reads ``pytest_plugins`` from the root conftest
# only): their fixtures are available to every test by name, without importing them.
pytest_plugins = [
    "tests.fixtures.dovecot",    # dovecot_factory
    "tests.fixtures.smtp",       # smtp_factory
    "tests.fixtures.mailbox",    # tls_dovecot, smtp (the mailbox target's servers)
    "tests.fixtures.smbd",       # smbd, smbd_factory, smbd_module
    "tests.fixtures.ganesha",    # nfs_netns, ganesha
    "tests.fixtures.databases",  # mariadb_server, postgres_server, slapd_server
]


@pytest.fixture(autouse=True)
def _isolate(monkeypatch):
    for k in list(os.environ):
        if k.startswith("DMBACKUP_"):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(crypto, "SCRYPT_N", 1 << 10)


@pytest.fixture
def world(tmp_path):
    """A sample store, a dir target, a passphrase file and a config; not yet initialised."""
    w = World(tmp_path)
    w.make_store()
    w.write_config()
    return w


@pytest.fixture
def ready(world):
    """A world whose repository exists (init done)."""
    world.ok("init", "local")
    return world


@pytest.fixture
def utc_local_time():
    """Pin the local time zone to UTC (schedules are local time) and restore it after."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()
