"""A corpus of bad configuration files: every one makes ``dmbackup check-config`` exit 2 with
one line on stderr naming the config file and the field (dotted path), and no traceback.
The same holds for every other command, which parses the same file first (checked for
``backup`` on a sample)."""

from __future__ import annotations

import os

import pytest

from tests.faults.conftest import no_traceback, one_line


def base(w) -> str:
    return (f'hostname = "mx.test"\nstate_dir = "{w.state}"\n'
            f'[source]\nmail_store = "{w.store}"\n'
            f'[encryption]\npassphrase_file = "{w.passfile}"\n'
            f'[targets.local]\ntype = "dir"\npath = "{w.repo_dir}"\n')


def smb(w, **kw) -> str:
    fields = {"server": '"nas.example.it"', "share": '"backup"', "username": '"dm"',
              "password_file": f'"{w.tmp}/smb.pw"'}
    fields.update(kw)
    return "[targets.nas]\ntype = \"smb\"\n" + "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None)


def files(w) -> None:
    for name, mode in (("smb.pw", 0o600), ("open.pw", 0o644), ("group.pw", 0o640)):
        p = os.path.join(w.tmp, name)
        with open(p, "w") as f:
            f.write("secret\n")
        os.chmod(p, mode)
    os.makedirs(os.path.join(w.tmp, "a-directory.pw"), exist_ok=True)


# name -> (config text from the world, the field the line must name)
CASES = {
    # wrong types
    "hostname-int": (lambda w: base(w).replace('hostname = "mx.test"', "hostname = 5"), "hostname"),
    "hostname-date": (lambda w: base(w).replace('hostname = "mx.test"', "hostname = 1979-05-27"), "hostname"),
    "hostname-slash": (lambda w: base(w).replace('hostname = "mx.test"', 'hostname = "a/b"'), "hostname"),
    "state-dir-relative": (lambda w: base(w).replace(f'state_dir = "{w.state}"', 'state_dir = "state"'), "state_dir"),
    "volume-size-bool": (lambda w: "volume_size = true\n" + base(w), "volume_size"),
    "volume-size-words": (lambda w: 'volume_size = "lots"\n' + base(w), "volume_size"),
    "volume-size-too-big": (lambda w: 'volume_size = "4G"\n' + base(w), "volume_size"),
    "volume-size-minus-inf": (lambda w: 'volume_size = "-inf"\n' + base(w), "volume_size"),
    "volume-size-nan": (lambda w: 'volume_size = "nan"\n' + base(w), "volume_size"),
    "volume-size-float": (lambda w: "volume_size = 1.5e9\n" + base(w), "volume_size"),
    "hook-timeout-string": (lambda w: 'hook_timeout = "10"\n' + base(w), "hook_timeout"),
    "hook-timeout-zero": (lambda w: "hook_timeout = 0\n" + base(w), "hook_timeout"),
    "mail-store-int": (lambda w: base(w).replace(f'mail_store = "{w.store}"', "mail_store = 5"), "source.mail_store"),
    "mail-store-relative": (lambda w: base(w).replace(f'mail_store = "{w.store}"', 'mail_store = "vmail"'),
                            "source.mail_store"),
    "config-paths-int": (lambda w: base(w).replace(f'mail_store = "{w.store}"',
                                                   f'mail_store = "{w.store}"\nconfig_paths = [1]'),
                         "source.config_paths[0]"),
    "source-not-a-table": (lambda w: base(w).replace(f'[source]\nmail_store = "{w.store}"\n', 'source = "x"\n'),
                           "source"),
    "encryption-mode": (lambda w: base(w).replace("[encryption]\n", '[encryption]\nmode = "rot13"\n'),
                        "encryption.mode"),
    "target-not-a-table": (lambda w: base(w) + "[targets]\nnas = 5\n", "targets.nas"),
    "target-type-unknown": (lambda w: base(w).replace('type = "dir"', 'type = "tape"'), "targets.local.type"),
    "target-path-missing": (lambda w: base(w).replace(f'path = "{w.repo_dir}"\n', ""), "targets.local.path"),
    "require-mount-string": (lambda w: base(w) + 'require_mount = "yes"\n', "targets.local.require_mount"),
    "smb-port-string": (lambda w: base(w) + smb(w, port='"445"'), "targets.nas.port"),
    "smb-port-huge": (lambda w: base(w) + smb(w, port="99999999999999999999"), "targets.nas.port"),
    "smb-server-with-share": (lambda w: base(w) + smb(w, server='"nas/backup"'), "targets.nas.server"),
    "smb-path-climbs": (lambda w: base(w) + smb(w, path='"../x"'), "targets.nas.path"),
    "smb-username-missing": (lambda w: base(w) + smb(w, username=None), "targets.nas.username"),
    "usb-without-label": (lambda w: base(w) + '[targets.u]\ntype = "usb"\n', "targets.u.label"),
    "nfs-export-no-colon": (lambda w: base(w) + '[targets.n]\ntype = "nfs"\nexport = "nas"\n', "targets.n.export"),
    "job-full-every-negative": (lambda w: base(w) + '[jobs.n]\ntarget = "local"\nfull_every = -1\n',
                                "jobs.n.full_every"),
    "job-keep-chains-string": (lambda w: base(w) + '[jobs.n]\ntarget = "local"\nkeep_chains = "4"\n',
                               "jobs.n.keep_chains"),
    "job-what-unknown": (lambda w: base(w) + '[jobs.n]\ntarget = "local"\nwhat = "everything"\n', "jobs.n.what"),
    "job-verify-after": (lambda w: base(w) + '[jobs.n]\ntarget = "local"\nverify_after = "always"\n',
                         "jobs.n.verify_after"),
    "notify-port": (lambda w: base(w) + '[notify]\nto = ["a@b.it"]\nsmtp_host = "h"\nsmtp_port = 0\n',
                    "notify.smtp_port"),
    "notify-without-host": (lambda w: base(w) + '[notify]\nto = ["a@b.it"]\n', "notify.smtp_host"),
    # unknown keys, at every level
    "unknown-top": (lambda w: 'colour = "blue"\n' + base(w), "colour"),
    "unknown-source": (lambda w: base(w).replace("[source]\n", "[source]\nmailstore = \"/x\"\n"), "source.mailstore"),
    "unknown-encryption": (lambda w: base(w).replace("[encryption]\n", "[encryption]\npassphrase = \"x\"\n"),
                           "encryption.passphrase"),
    "unknown-target": (lambda w: base(w) + "requiremount = true\n", "targets.local.requiremount"),
    "unknown-job": (lambda w: base(w) + '[jobs.n]\ntarget = "local"\nkeep = 3\n', "jobs.n.keep"),
    "unknown-notify": (lambda w: base(w) + '[notify]\nto = ["a@b.it"]\nsmtp_host = "h"\nport = 25\n', "notify.port"),
    # targets and jobs that do not fit together
    "job-names-missing-target": (lambda w: base(w) + '[jobs.n]\ntarget = "nas"\n', "jobs.n.target"),
    "job-without-any-targets": (lambda w: base(w).replace(f'[targets.local]\ntype = "dir"\npath = "{w.repo_dir}"\n', "")
                                + '[jobs.n]\ntarget = "local"\n', "jobs.n.target"),
    "job-target-missing-key": (lambda w: base(w) + '[jobs.n]\nwhat = "mail"\n', "jobs.n.target"),
    "mail-job-to-mailbox": (lambda w: base(w) + '[targets.off]\ntype = "mailbox"\nsmtp_host = "h"\nto = "a@b.it"\n'
                            '[jobs.n]\ntarget = "off"\n', "jobs.n.target"),
    "mailbox-target-encryption-off": (lambda w: base(w).replace(f'passphrase_file = "{w.passfile}"', 'mode = "none"')
                                      + '[targets.off]\ntype = "mailbox"\nsmtp_host = "h"\nto = "a@b.it"\n',
                                      "targets.off"),
    # schedules
    "schedule-words": (lambda w: base(w) + '[jobs.n]\ntarget = "local"\nschedule = "whenever"\n', "jobs.n.schedule"),
    "schedule-25h": (lambda w: base(w) + '[jobs.n]\ntarget = "local"\nschedule = "daily at 25:00"\n',
                     "jobs.n.schedule"),
    "schedule-funday": (lambda w: base(w) + '[jobs.n]\ntarget = "local"\nschedule = "weekly on funday"\n',
                        "jobs.n.schedule"),
    "schedule-every-0": (lambda w: base(w) + '[jobs.n]\ntarget = "local"\nschedule = "every 0 hours"\n',
                         "jobs.n.schedule"),
    "schedule-int": (lambda w: base(w) + '[jobs.n]\ntarget = "local"\nschedule = 5\n', "jobs.n.schedule"),
    # secret files
    "passphrase-world-readable": (lambda w: base(w).replace(w.passfile, f"{w.tmp}/open.pw"),
                                  "encryption.passphrase_file"),
    "passphrase-group-readable": (lambda w: base(w).replace(w.passfile, f"{w.tmp}/group.pw"),
                                  "encryption.passphrase_file"),
    "passphrase-missing": (lambda w: base(w).replace(w.passfile, f"{w.tmp}/nope.pw"), "encryption.passphrase_file"),
    "passphrase-directory": (lambda w: base(w).replace(w.passfile, f"{w.tmp}/a-directory.pw"),
                             "encryption.passphrase_file"),
    "passphrase-through-a-file": (lambda w: base(w).replace(w.passfile, f"{w.passfile}/x"),
                                  "encryption.passphrase_file"),
    "smb-password-world-readable": (lambda w: base(w) + smb(w, password_file=f'"{w.tmp}/open.pw"'),
                                    "targets.nas.password_file"),
    "smb-password-missing": (lambda w: base(w) + smb(w, password_file=f'"{w.tmp}/nope.pw"'),
                             "targets.nas.password_file"),
    "smb-password-directory": (lambda w: base(w) + smb(w, password_file=f'"{w.tmp}/a-directory.pw"'),
                               "targets.nas.password_file"),
    # not a config file at all
    "not-toml": (lambda w: base(w) + "this is not = = toml\n", None),
    "duplicate-key": (lambda w: base(w) + 'hostname = "again"\n', None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_config_exits_2_naming_file_and_field(world, name):
    files(world)
    text, field = CASES[name]
    with open(world.config, "w") as f:
        f.write(text(world))
    r = world.run("check-config")
    line = one_line(r)
    assert r.code == 2, (r.code, line)
    assert world.config in line, line
    if field:
        assert f": {field}: " in line, line


def test_not_utf8(world):
    with open(world.config, "wb") as f:
        f.write(b'hostname = "\xff"\n')
    r = world.run("check-config")
    assert r.code == 2 and world.config in one_line(r)


@pytest.mark.parametrize("name", ["unknown-job", "passphrase-world-readable", "schedule-25h"])
def test_every_command_refuses_a_bad_config(world, name):
    files(world)
    text, field = CASES[name]
    with open(world.config, "w") as f:
        f.write(text(world))
    for argv in (["backup", "--target", "local"], ["snapshots"], ["status"]):
        r = world.run(*argv)
        line = one_line(r)
        assert r.code == 2 and world.config in line and field in line, (argv, line)


@pytest.mark.parametrize("value", ["inf", "1e400"])
def test_volume_size_infinity(world, value):
    with open(world.config, "w") as f:
        f.write(f'volume_size = "{value}"\n' + base(world))
    r = world.run("check-config")
    no_traceback(r)
    assert r.code == 2 and "volume_size" in one_line(r)


@pytest.mark.parametrize("pw", ["open.pw", "nope.pw"])
def test_notify_password_file_is_checked(world, pw):
    files(world)
    with open(world.config, "w") as f:
        f.write(base(world) + f'[notify]\nto = ["a@b.it"]\nsmtp_host = "h"\nusername = "u"\n'
                              f'password_file = "{world.tmp}/{pw}"\n')
    r = world.run("check-config")
    assert r.code == 2 and "notify.password_file" in one_line(r)
