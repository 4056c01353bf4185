"""Hooks run as root: whoever can change what runs owns the machine (issue 13, item 14).

A hook runs if it is in ``<hooks_dir>/<phase>.d``. Anyone who can write the hook, its
directory, ``hooks_dir`` or ANY ancestor of it (rename the directory away and put their own in
its place), or ``hooks.conf`` (sourced by the shipped hooks), or who controls where a symlink
in that path points, gets their code run as root at the next backup. Each test sets one such
trap with a hook that would leave a marker file, runs a real ``dmbackup backup JOB`` and checks
that the run is refused with exit 3, names the path and says what to do, and that the hook did
not run. Directories with the sticky bit owned by root (/tmp) are fine as ancestors: others
may add names there but not replace ours.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.world import World

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership traps need root (chown)")
NOBODY = 65534


def hook_world(tmp_path, hooks_dir: str | None = None) -> tuple[World, str, str]:
    """A world whose job runs one pre-backup hook that touches a marker; (world, hook, marker)."""
    w = World(tmp_path)
    md = os.path.join(w.store, "example.it", "mario", "Maildir", "cur")
    os.makedirs(md)
    with open(os.path.join(md, "1.M1P1.mail:2,S"), "wb") as f:
        f.write(b"Subject: x\r\n\r\ny\r\n")
    w.write_config('[jobs.nightly]\nwhat = "mail"\ntarget = "local"\n')
    hooks_dir = hooks_dir or os.path.join(w.tmp, "hooks")
    if hooks_dir != os.path.join(w.tmp, "hooks"):
        with open(w.config) as f:
            text = f.read().replace(f'hooks_dir = "{w.tmp}/hooks"', f'hooks_dir = "{hooks_dir}"')
        with open(w.config, "w") as f:
            f.write(text)
    marker = os.path.join(w.tmp, "HOOK-RAN")
    d = os.path.join(hooks_dir, "pre-backup.d")
    os.makedirs(d, mode=0o755, exist_ok=True)
    hook = os.path.join(d, "10-mark")
    with open(hook, "w") as f:
        f.write(f"#!/bin/sh\ntouch {marker}\n")
    os.chmod(hook, 0o755)
    w.ok("init", "local")
    return w, hook, marker


def refused(w: World, marker: str, *needles: str) -> str:
    r = w.run("backup", "nightly")
    assert r.code == 3, (r.code, r.err)
    assert not os.path.exists(marker), "the untrusted hook ran"
    lines = [ln for ln in r.err.splitlines() if ln.startswith("dmbackup:")]
    assert len(lines) == 1, r.err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not w.chain_files(".catalog"), "nothing may be written after a refused pre hook"
    return lines[0]


def test_a_trusted_hook_runs(tmp_path):
    w, hook, marker = hook_world(tmp_path)
    assert w.run("backup", "nightly").code == 0
    assert os.path.exists(marker)


@pytest.mark.parametrize("which", ["hooks_dir", "ancestor"])
def test_group_or_world_writable_directory_on_the_way_is_refused(tmp_path, which):
    base = tmp_path / "etc-dmbackup"
    base.mkdir()
    w, hook, marker = hook_world(tmp_path, hooks_dir=str(base / "hooks"))
    weak = str(base / "hooks") if which == "hooks_dir" else str(base)
    os.chmod(weak, 0o777)
    refused(w, marker, weak, f"chmod go-w {weak}")


def test_directory_owned_by_another_user_is_refused(tmp_path):
    base = tmp_path / "etc-dmbackup"
    base.mkdir()
    w, hook, marker = hook_world(tmp_path, hooks_dir=str(base / "hooks"))
    os.chown(base, NOBODY, NOBODY)            # that user can rename hooks/ away and plant theirs
    refused(w, marker, str(base), "chown root:root")


def test_hook_owned_by_another_user_is_refused(tmp_path):
    w, hook, marker = hook_world(tmp_path)
    os.chown(hook, NOBODY, NOBODY)
    refused(w, marker, hook, "chown root:root")


def test_symlinked_hook_into_a_writable_directory_is_refused(tmp_path):
    """The link's target is root's and looks fine, but it sits in a directory anyone may
    write: today's check looked at the target's own mode and at the link's directory only."""
    w, hook, marker = hook_world(tmp_path)
    drop = tmp_path / "drop"
    drop.mkdir()
    os.chmod(drop, 0o777)
    real = drop / "mark"
    shutil.move(hook, real)
    os.symlink(real, hook)
    refused(w, marker, hook, "symbolic link")


def test_symlinked_hooks_dir_is_refused(tmp_path):
    w, hook, marker = hook_world(tmp_path)
    hooks_dir = os.path.join(w.tmp, "hooks")
    os.rename(hooks_dir, os.path.join(w.tmp, "hooks.real"))
    os.symlink(os.path.join(w.tmp, "hooks.real"), hooks_dir)
    refused(w, marker, hooks_dir, "symbolic link")


@pytest.mark.parametrize("trap", ["writable", "owner", "symlink"])
def test_untrusted_hooks_conf_is_refused(tmp_path, monkeypatch, trap):
    w, hook, marker = hook_world(tmp_path)
    conf = tmp_path / "hooks.conf"
    conf.write_text("STAGING_DIR=/srv/staging\n")
    if trap == "writable":
        os.chmod(conf, 0o666)
    elif trap == "owner":
        os.chown(conf, NOBODY, NOBODY)
    else:
        other = tmp_path / "other.conf"
        conf.rename(other)
        conf.symlink_to(other)
    monkeypatch.setenv("DMBACKUP_HOOKS_CONF", str(conf))
    refused(w, marker, str(conf), "hooks.conf")


def test_post_hook_in_an_untrusted_place_is_a_warning_and_does_not_run(tmp_path):
    """After a committed snapshot an untrusted post hook is refused: exit 1, not 0, not 3."""
    w, hook, marker = hook_world(tmp_path)
    os.unlink(hook)
    post = os.path.join(w.tmp, "hooks", "post-backup.d")
    os.makedirs(post)
    with open(os.path.join(post, "90-mark"), "w") as f:
        f.write(f"#!/bin/sh\ntouch {marker}\n")
    os.chmod(os.path.join(post, "90-mark"), 0o755)
    os.chmod(post, 0o777)
    r = w.run("backup", "nightly")
    assert r.code == 1, r.err
    assert not os.path.exists(marker)
    assert f"chmod go-w {post}" in r.err
    assert len(w.chain_files(".catalog")) == 1
