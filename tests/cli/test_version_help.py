"""``dmbackup --version`` and the examples in ``--help``: run as a real process, no config.

``--version`` must work on a machine with no config file at all (it is the first thing asked
in a bug report and the first thing run after installing the package), so these tests point
``$DMBACKUP_CONFIG`` at a file that does not exist. The man pages are checked here too: every
command and option of the CLI in dmbackup(1), every key the config parsers read in
dmbackup.toml(5), and both render without warnings.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata

import pytest

from dmbackup import __version__
from dmbackup.archive import FORMAT_VERSION

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dm(*args, tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["DMBACKUP_CONFIG"] = str(tmp_path / "no-such-config.toml")
    env["COLUMNS"] = "200"          # rich wraps help text at the terminal width
    env["TERM"] = "dumb"
    return subprocess.run([sys.executable, "-m", "dmbackup", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_version_without_a_config(tmp_path):
    r = dm("--version", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"dmbackup {__version__}"
    assert f"repository format {FORMAT_VERSION}" in lines
    assert any(ln.startswith(f"Python {sys.version.split()[0]}") for ln in lines)
    for lib in ("typer", "smbprotocol", "pyudev", "zstandard", "cryptography", "schedule"):
        try:
            want = metadata.version(lib)
        except metadata.PackageNotFoundError:
            want = "not installed"
        assert f"{lib} {want}" in lines, r.stdout
    assert r.stderr == ""


def test_version_wins_over_a_bad_config_option(tmp_path):
    r = dm("--config", str(tmp_path / "missing.toml"), "--version", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("dmbackup ")


def test_a_missing_library_is_reported_not_fatal():
    from dmbackup.cli import main

    old = main.VERSION_LIBRARIES
    main.VERSION_LIBRARIES = old + ("dmbackup-no-such-distribution",)
    try:
        text = main.version_text()
    finally:
        main.VERSION_LIBRARIES = old
    assert "dmbackup-no-such-distribution not installed" in text.splitlines()


def test_help_loads_no_config_scheduler_or_crypto(tmp_path):
    """``dmbackup --help`` is start-up only (issue 17): it parses no config and loads neither the
    scheduler, the hooks, the archive format nor the crypto and compression libraries."""
    code = ("import sys\n"
            "sys.argv = ['dmbackup', '--help']\n"
            "from dmbackup.cli.main import main\n"
            "try:\n"
            "    main()\n"
            "except SystemExit:\n"
            "    pass\n"
            "sys.stderr.write('MODULES ' + ' '.join(sorted(sys.modules)) + '\\n')\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               DMBACKUP_CONFIG=str(tmp_path / "no-such-config.toml"), COLUMNS="200", TERM="dumb")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "Usage" in r.stdout, r.stdout + r.stderr
    line = next(x for x in r.stderr.splitlines() if x.startswith("MODULES "))
    loaded = set(line.split()[1:])
    assert "dmbackup.cli.main" in loaded
    heavy = {"dmbackup.config", "dmbackup.daemon.monitoring", "dmbackup.daemon.status", "dmbackup.engine.hooks",
             "dmbackup.archive.repository", "dmbackup.archive.bundle", "cryptography", "zstandard", "socket"}
    assert loaded & heavy == set()


def test_restore_help_shows_the_common_restores(tmp_path):
    r = dm("restore", "--help", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())            # rich pads and may wrap: compare words
    assert "Examples:" in out
    for cmd in (
        "dmbackup restore --target usb1 --to /var/vmail.new --uid-gap 1000",         # disaster, into a dir
        "dmbackup restore --target usb1 --at 2026-11-27T23:00 --to /var/vmail.new --uid-gap 1000",
        "dmbackup restore --resync",
        "dmbackup restore --target usb1 --overwrite",                                 # into the live store
        "--resume",
        "dmbackup restore --target usb1 --mailbox anna@example.it --to /tmp/anna",   # one mailbox
        "--mailbox anna@example.it --folder Archivio/2024 --to /tmp/a",              # one folder
        "dmbackup restore --target usb1 --mailbox anna@example.it --at 2026-11-27T23:00",   # live, at a time
    ):
        assert cmd in out, f"{cmd!r} missing from restore --help:\n{r.stdout}"


def test_every_command_has_examples(tmp_path):
    wanted = {
        ("backup",): "dmbackup backup nightly",
        ("verify",): "dmbackup verify --target usb1 --read-data",
        ("snapshots",): "dmbackup snapshots --target usb1 --json",
        ("init",): "dmbackup init usb1",
        ("prune",): "dmbackup prune --target usb1 --dry-run",
        ("status",): "dmbackup status --json",
        ("daemon",): "systemctl enable --now dmbackup.service",
        ("check-config",): "dmbackup check-config",
        ("usb", "list"): "dmbackup usb list",
    }
    for args, cmd in wanted.items():
        r = dm(*args, "--help", tmp_path=tmp_path)
        assert r.returncode == 0, r.stderr
        out = " ".join(r.stdout.split())
        assert "Examples:" in out and cmd in out, f"{' '.join(args)} --help:\n{r.stdout}"
    r = dm("verify", "--help", tmp_path=tmp_path)
    assert "dmbackup verify --target usb1 --restore-drill" in " ".join(r.stdout.split())


# --- the man pages (packaging/man): they cannot silently go stale -------------------------------

MAN = os.path.join(ROOT, "packaging", "man")
KEY_CALL = re.compile(r'\b(?:\w+)\.(?:str|int|bool|str_list|abs_path|size|table)\("([a-z_]+)"|\bduration\(\w+, "([a-z_]+)"')


def man_text(name: str) -> str:
    """The page's source with roff's escaped hyphens and quotes made plain."""
    with open(os.path.join(MAN, name), encoding="utf-8") as f:
        return f.read().replace("\\-", "-").replace("\\(dq", '"')


def cli_commands() -> dict[str, list[str]]:
    """{"restore": ["--target", ...], "usb list": [...]}: every command and its long options."""
    import typer

    from dmbackup.cli.main import app

    out = {}

    def walk(cmd, prefix):
        for name, sub in getattr(cmd, "commands", {}).items():
            full = f"{prefix} {name}".strip()
            if hasattr(sub, "commands"):      # a group (typer may vendor its own click)
                walk(sub, full)
            else:
                out[full] = [o for p in sub.params for o in p.opts if o.startswith("--") and o != "--help"]
    walk(typer.main.get_command(app), "")
    return out


def config_keys() -> set[str]:
    """Every key the config parsers read: dmbackup/config.py, the target types and the mailbox."""
    files = [os.path.join(ROOT, "dmbackup", "config.py"), os.path.join(ROOT, "dmbackup", "mailout", "mailbox.py")]
    tdir = os.path.join(ROOT, "dmbackup", "targets")
    files += [os.path.join(tdir, n) for n in sorted(os.listdir(tdir)) if n.endswith(".py")]
    keys = set()
    for p in files:
        with open(p, encoding="utf-8") as f:
            for m in KEY_CALL.finditer(f.read()):
                keys.add(m.group(1) or m.group(2))
    return keys


def test_every_command_and_option_is_in_dmbackup_1():
    page = man_text("dmbackup.1")
    cmds = cli_commands()
    assert {"init", "backup", "restore", "verify", "status", "usb list", "check-config"} <= set(cmds)
    for name, opts in cmds.items():
        assert re.search(rf"^\.B[IR]? \"?{re.escape(name)}\b", page, re.M), f"command {name!r} not in dmbackup.1"
        for o in opts:
            assert re.search(rf"{re.escape(o)}\b", page), f"option {o} of {name} not in dmbackup.1"
    for o in ("--config", "--quiet", "--version"):
        assert o in page
    for code in ("0", "1", "2", "3", "4", "5", "6", "7", "70", "130"):
        assert f"\n.B {code}\n" in page, f"exit code {code} not in dmbackup.1"


def test_every_config_key_is_in_dmbackup_toml_5():
    page = man_text("dmbackup.toml.5")
    keys = config_keys()
    assert {"hostname", "mail_store", "passphrase_file", "keep_chains", "textfile", "share", "imap_folder"} <= keys
    # a key counts only where it is set in bold (a .TP tag) or names a section, not in prose
    bold = "\n".join(ln for ln in page.splitlines() if ln.startswith((".B", ".SH", ".SS")))
    missing = sorted(k for k in keys if not re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)", bold))
    assert missing == [], f"config keys not in dmbackup.toml.5: {missing}"
    for section in ("[source]", "[encryption]", "[targets.NAME]", "[jobs.NAME]", "[notify]", "[monitoring]"):
        assert f".SH {section}" in page


@pytest.mark.parametrize("page", ["dmbackup.1", "dmbackup.toml.5"])
def test_man_pages_render_without_warnings(page):
    path = os.path.join(MAN, page)
    ran = False
    if shutil.which("groff"):
        r = subprocess.run(["groff", "-ww", "-z", "-man", path], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        ran = True
    if shutil.which("man"):
        env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
        r = subprocess.run(["man", "-l", path], capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert "dmbackup" in r.stdout
        ran = True
    if not ran:
        pytest.skip("neither groff nor man is installed")
