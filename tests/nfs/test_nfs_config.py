"""Config parsing of the ``nfs`` target and its export syntax: no server, no namespace."""

from __future__ import annotations

import pytest

from dmbackup.config import Section
from dmbackup.errors import ConfigError
from dmbackup.targets import nfs


def cfg_of(data: dict, name: str = "nas") -> nfs.NfsConfig:
    s = Section(dict(data, type="nfs"), "/etc/dmbackup/dmbackup.toml", f"targets.{name}")
    s.str("type")
    c = nfs.parse_config(name, s, "nfs")
    s.finish()
    return c


def test_config_defaults():
    c = cfg_of({"export": "nas.example.it:/srv/backup/"})
    assert (c.server, c.export_path, c.transport) == ("nas.example.it", "/srv/backup", "mount")
    assert c.mount_point == "/run/dmbackup/nas"
    assert c.timeout == 30 and c.path is None
    assert c.mount_command == ("mount", "-t", "nfs") and c.umount_command == ("umount",)
    assert c.mount_options() == "soft,timeo=300,retrans=2"
    assert isinstance(nfs.build(c, None), nfs.NfsMountTarget)


def test_config_userspace_and_ipv6():
    c = cfg_of({"export": "[fd00::5]:/export", "transport": "userspace", "path": "/appliances/mail/",
                "timeout": 5})
    assert (c.server, c.export_path, c.path, c.timeout) == ("fd00::5", "/export", "appliances/mail", 5)
    assert isinstance(nfs.build(c, None), nfs.NfsUserspaceTarget)


def test_config_explicit_empty_options_means_no_dash_o():
    assert cfg_of({"export": "h:/x", "options": ""}).mount_options() == ""
    assert cfg_of({"export": "h:/x", "options": "vers=4.2,hard"}).mount_options() == "vers=4.2,hard"


@pytest.mark.parametrize("data, field, words", [
    ({"export": "nas.example.it"}, "export", "server:/path"),
    ({"export": "nas:relative"}, "export", "server:/path"),
    ({"export": ":/x"}, "export", "server:/path"),
    ({"export": "h:/x", "transport": "kernel"}, "transport", "'mount'"),
    ({"export": "h:/x", "path": "../etc"}, "path", "sub-directory"),
    ({"export": "h:/x", "timeout": 0}, "timeout", "at least 1"),
    ({"export": "h:/x", "mount_point": "run/x"}, "mount_point", "absolute"),
    ({"export": "h:/x", "options": "soft, hard"}, "options", "without spaces"),
    ({"export": "h:/x", "mount_command": []}, "mount_command", "command"),
    ({"export": "h:/x", "transport": "userspace", "options": "soft"}, "options", "transport = \"mount\""),
    ({"export": "h:/x", "transport": "userspace", "mount_point": "/mnt"}, "mount_point", "mounts nothing"),
    ({"export": "h:/x", "expor": "typo"}, "expor", "unknown key"),
])
def test_config_errors_name_the_field(data, field, words):
    with pytest.raises(ConfigError) as ei:
        cfg_of(data)
    assert f"targets.nas.{field}" in str(ei.value) and words in str(ei.value)
    assert ei.value.exit_code == 2


def test_registered_in_the_registry():
    from dmbackup.targets import registry

    c = registry.parse_target("nas", {"type": "nfs", "export": "h:/x", "transport": "userspace"}, "f.toml")
    assert isinstance(registry.build(c, None), nfs.NfsUserspaceTarget)




@pytest.mark.parametrize("export, parts", [
    ("nas:/", ("nas", "/")),
    ("nas://srv//backup/", ("nas", "/srv/backup")),
    ("192.0.2.7:/export", ("192.0.2.7", "/export")),
    ("[fe80::1%eth0]:/e", ("fe80::1%eth0", "/e")),
])
def test_split_export(export, parts):
    assert nfs.split_export(export) == parts


@pytest.mark.parametrize("export", ["nas", "nas:", "nas:x", "[::1]/x", "a b:/x", "/dev/sdb1", ""])
def test_split_export_rejects(export):
    with pytest.raises(ValueError):
        nfs.split_export(export)
