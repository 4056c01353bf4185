"""The Debian package (issue 14): scripts/build-deb.sh builds it, apt-get installs it on this
machine, and the installed program, units, config and maintainer scripts do their job.

Real components only: the .deb is built from this checkout (its private venv pip-installed
from PyPI), installed with ``apt-get install ./dist/...deb``, upgraded to a rebuilt higher
version, removed and purged with apt-get, and every dmbackup command runs through the
installed /usr/bin/dmbackup. Root only (apt-get). The test uninstalls what it installed; an
/etc/dmbackup or /var/lib/dmbackup that was on the machine before is moved aside for the
test and put back afterwards (purge would delete /var/lib/dmbackup).

Man pages and bash completion are checked only when their sources
(packaging/man/dmbackup.1, packaging/bash-completion/dmbackup) are in the checkout: the package
installs them if they exist at build time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
import warnings
from pathlib import Path

import pytest

from dmbackup.quickstart.demo import _tree
from dmbackup.quickstart.sample import generate

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "scripts" / "build-deb.sh"
UNIT_DIR = Path("/lib/systemd/system")
UNITS = ("dmbackup.service", "dmbackup-job@.service", "dmbackup-job@.timer", "dmbackup-usb@.service")
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "l"}

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a .deb with apt-get: run as root"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("apt-get") is None,
                       reason="dpkg-deb/apt-get missing: run scripts/install-test-deps.sh"),
    pytest.mark.skipif(not Path("/usr/bin/python3").exists(),
                       reason="Debian's /usr/bin/python3 missing: run scripts/install-test-deps.sh"),
]


def run(cmd, *, check=True, env=None, timeout=600, **kw) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("DMBACKUP_", "PYTHON"))}
    e.update(env or {})
    r = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout, **kw)
    if check:
        assert r.returncode == 0, f"{cmd} -> {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r


def dm(*args: str, check=True) -> subprocess.CompletedProcess:
    """The installed program, on its default config /etc/dmbackup/dmbackup.toml."""
    return run(["/usr/bin/dmbackup", *args], check=check, cwd="/")


def pkg_status() -> str:
    r = run(["dpkg-query", "-W", "-f=${Status} ${Version}", "dmbackup"], check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


def upstream_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def arch() -> str:
    return run(["dpkg", "--print-architecture"]).stdout.strip()


def build(version: str | None) -> Path:
    env = {"DMBACKUP_DEB_VERSION": version} if version else {}
    r = run(["bash", str(BUILD)], env=env, cwd=REPO)
    deb = REPO / r.stdout.strip().splitlines()[-1]
    assert deb.exists() and deb.name == f"dmbackup_{version or upstream_version()}_{arch()}.deb", r.stdout
    return deb


@pytest.fixture(scope="module")
def debs() -> tuple[Path, Path]:
    """The package at the checkout's version and a rebuild at a higher one (upgrade check)."""
    v1 = upstream_version()
    v2 = f"{v1}+2"
    assert run(["dpkg", "--compare-versions", v2, "gt", v1], check=False).returncode == 0
    return build(None), build(v2)


@pytest.fixture
def clean_machine(tmp_path):
    """No dmbackup package before; whatever was at its paths is moved aside and put back."""
    if pkg_status():
        pytest.skip(f"a dmbackup package is already installed here ({pkg_status()}): not touching it")
    aside = {}
    for p in (Path("/etc/dmbackup"), Path("/var/lib/dmbackup")):
        if p.exists() or p.is_symlink():
            dest = Path(f"{p}.test-deb-aside-{os.getpid()}")
            os.rename(p, dest)
            aside[p] = dest
    try:
        yield
    finally:
        try:
            if pkg_status():
                run(["apt-get", "purge", "-y", "dmbackup"], env=APT_ENV, check=False)
                if pkg_status():
                    run(["dpkg", "--purge", "--force-all", "dmbackup"], check=False)
        finally:
            for p, dest in aside.items():
                if p.exists():
                    shutil.rmtree(p)
                os.rename(dest, p)


def apt_install(deb: Path) -> subprocess.CompletedProcess:
    return run(["apt-get", "install", "-y", "--no-install-recommends", f"./{deb.relative_to(REPO)}"],
               env=APT_ENV, cwd=REPO)


def adapt_config(work: Path) -> str:
    """The installed example config, pointed at a sample store and a dir target under work/.
    state_dir stays /var/lib/dmbackup (the package's), hooks_dir /etc/dmbackup/hooks."""
    text = Path("/etc/dmbackup/dmbackup.toml").read_text()
    for old, new in (('"/var/vmail"', f'"{work}/vmail"'),
                     ('"/srv/dmbackup"', f'"{work}/backups"'),
                     ('"/etc/dmbackup/passphrase"', f'"{work}/passphrase"'),
                     ('["/etc/postfix", "/etc/dovecot", "/etc/dmbackup"]', f'["{work}/etc"]')):
        assert old in text, f"the example config no longer has {old}"
        text = text.replace(old, new)
    text += "\n# edited by tests/packaging/test_deb.py\n"
    return text


def verify_installed_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        warnings.warn("systemd-analyze missing: installed units not verified")
        return
    names = []
    for u in UNITS:
        assert (UNIT_DIR / u).is_file(), u
        names.append(u.replace("@.", "@nightly.") if "@." in u else u)
    # the installed units themselves (by name, from the system unit path), templates as instances
    r = run([analyze, "verify", *names], check=False, cwd=tmp_path,
            env={"SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""})
    assert r.returncode == 0, r.stderr
    assert "is not executable" not in r.stderr and "No such file" not in r.stderr, r.stderr
    dm_lines = [x for x in r.stderr.splitlines() if "dmbackup" in x]
    assert dm_lines == [], r.stderr
    # verify checks argv[0] only (systemd-inhibit): the wrapped /usr/bin/dmbackup is checked here
    for u in UNITS:
        for line in (UNIT_DIR / u).read_text().splitlines():
            if line.startswith(("ExecStart=", "ExecReload=")):
                for word in line.split("=", 1)[1].split():
                    if word.startswith("/") and word.rsplit("/", 1)[-1] in ("dmbackup", "systemd-inhibit", "kill"):
                        assert os.access(word, os.X_OK), (u, word)
    rule = Path("/lib/udev/rules.d/99-dmbackup-usb.rules")
    assert rule.is_file() and "dmbackup-usb@%k.service" in rule.read_text()


def check_man_and_completion() -> None:
    if (REPO / "packaging/man/dmbackup.1").exists():
        r = run(["man", "-w", "dmbackup"], check=False)
        assert r.returncode == 0 and r.stdout.strip() == "/usr/share/man/man1/dmbackup.1.gz", r
    else:
        warnings.warn("packaging/man/dmbackup.1 not in the checkout: `man -w dmbackup` not checked")
    if (REPO / "packaging/man/dmbackup.toml.5").exists():
        r = run(["man", "-w", "5", "dmbackup.toml"], check=False)
        assert r.returncode == 0 and r.stdout.strip() == "/usr/share/man/man5/dmbackup.toml.5.gz", r
    else:
        warnings.warn("packaging/man/dmbackup.toml.5 not in the checkout: `man -w 5 dmbackup.toml` not checked")
    if (REPO / "packaging/bash-completion/dmbackup").exists():
        assert Path("/usr/share/bash-completion/completions/dmbackup").is_file()
        if not Path("/usr/share/bash-completion/bash_completion").exists():
            warnings.warn("bash-completion not installed: completion of `dmbackup re` not checked")
            return
        script = r'''
            source /usr/share/bash-completion/bash_completion
            _completion_loader dmbackup
            spec=$(complete -p dmbackup) || exit 3
            func=$(sed -n 's/.*-F \([^ ]*\).*/\1/p' <<<"$spec")
            [ -n "$func" ] || exit 4
            COMP_WORDS=(dmbackup re); COMP_CWORD=1; COMP_LINE="dmbackup re"; COMP_POINT=${#COMP_LINE}
            "$func" dmbackup re dmbackup
            printf '%s\n' "${COMPREPLY[@]}"
        '''
        r = run(["bash", "--norc", "--noprofile", "-c", script], check=False, cwd="/")
        assert r.returncode == 0, r
        assert "restore" in r.stdout.split(), r.stdout
    else:
        warnings.warn("packaging/bash-completion/dmbackup not in the checkout: completion not checked")


def installed_files() -> list[str]:
    return [x for x in run(["dpkg", "-L", "dmbackup"]).stdout.splitlines() if x.startswith("/")]


def leftovers(paths: list[str]) -> list[str]:
    """Paths of the package still present that no other package owns."""
    left = []
    for p in paths:
        if not os.path.lexists(p):
            continue
        if os.path.isdir(p):
            if p in ("/", "/.") or os.path.islink(p):
                continue            # the root, and merged-/usr links such as /lib -> usr/lib
            if run(["dpkg-query", "-S", p], check=False).returncode == 0:
                continue            # a directory shared with other packages (/usr/share/doc, ...)
        left.append(p)
    return left


def test_lintian_has_no_errors(debs):
    if shutil.which("lintian") is None:
        pytest.skip("lintian missing: run scripts/install-test-deps.sh")
    deb, _ = debs
    r = run(["lintian", "--tag-display-limit", "0", str(deb)], check=False)
    lines = [x for x in (r.stdout + r.stderr).splitlines() if re.match(r"^[EWIXP]: ", x)]
    print("\n".join(lines))
    errors = [x for x in lines if x.startswith("E: ")]
    assert errors == [], "\n".join(errors)
    # warnings kept on purpose (listed with reasons in packaging/deb/README.Debian's last section)
    allowed = ("maintainer-script-calls-systemctl", "non-standard-file-perm 0600 != 0644 [etc/dmbackup/dmbackup.toml]",
               "unusual-interpreter python [usr/lib/dmbackup/venv/", "no-manual-page")
    unexpected = [x for x in lines if x.startswith("W: ") and not any(a in x for a in allowed)]
    assert unexpected == [], "\n".join(unexpected)


def test_install_run_upgrade_remove_purge(debs, clean_machine, tmp_path):
    deb1, deb2 = debs
    v1, v2 = upstream_version(), f"{upstream_version()}+2"

    # --- install: nothing enabled, how to enable is said
    r = apt_install(deb1)
    assert pkg_status() == f"install ok installed {v1}"
    assert "systemctl enable --now dmbackup-job@nightly.timer" in r.stdout
    assert "dmbackup check-config" in r.stdout
    st = os.stat("/var/lib/dmbackup")
    assert oct(st.st_mode & 0o7777) == "0o700" and st.st_uid == 0
    conf = Path("/etc/dmbackup/dmbackup.toml")
    assert oct(conf.stat().st_mode & 0o7777) == "0o600" and conf.stat().st_uid == 0
    for d in ("pre-backup.d", "post-backup.d", "on-failure.d"):
        assert Path("/etc/dmbackup/hooks", d).is_dir()
    assert Path("/usr/share/doc/dmbackup/README.md").is_file()
    assert Path("/usr/share/doc/dmbackup/README.Debian").is_file()
    assert Path("/usr/share/doc/dmbackup/examples/hooks/pre-backup.d/10-dovecot-staging").is_file()
    for wants in Path("/etc/systemd/system").glob("*.wants"):
        assert not list(wants.glob("dmbackup*")), f"the package enabled something: {wants}"

    # --- the program: Debian's interpreter (not the build machine's pyenv), isolated from
    # the caller's PYTHONPATH
    assert os.path.realpath("/usr/lib/dmbackup/venv/bin/python3").startswith("/usr/bin/python3")
    assert "home = /usr/bin" in Path("/usr/lib/dmbackup/venv/pyvenv.cfg").read_text()
    decoy = tmp_path / "decoy"
    (decoy / "dmbackup").mkdir(parents=True)
    (decoy / "dmbackup" / "__init__.py").write_text("raise SystemExit('decoy dmbackup imported')\n")
    r = run(["/usr/bin/dmbackup", "--help"], env={"PYTHONPATH": str(decoy)}, cwd=decoy)
    assert "restore" in r.stdout
    # the header cut in C is in the package and used (built with Debian's python3-dev)
    r = run(["/usr/lib/dmbackup/venv/bin/python3", "-I", "-c",
             "from dmbackup.archive import headerparse as h; print(h._fields is h._fields_c)"], cwd="/")
    assert r.stdout.strip() == "True", r
    h = dm("--help")
    assert "restore" in h.stdout and "backup" in h.stdout and h.stdout.lstrip().lower().startswith("usage: dmbackup")
    v = dm("--version", check=False)
    if v.returncode == 0:
        assert v1 in v.stdout, v.stdout
    else:
        assert "no such option" in v.stderr.lower(), v.stderr
        warnings.warn("this checkout's dmbackup has no --version yet: not checked")

    # --- the installed units
    verify_installed_units(tmp_path)

    # --- man page and completion (when their sources exist)
    check_man_and_completion()

    # --- backup, verify, restore of a sample store with the installed example config
    work = tmp_path / "w"
    (work / "backups").mkdir(parents=True)
    (work / "etc").mkdir()
    (work / "etc" / "main.cf").write_text("myhostname = test.example.it\n")
    fd = os.open(work / "passphrase", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"correct horse battery staple for the package test\n")
    os.close(fd)
    generate(str(work / "vmail"), uid=5000, gid=5000)
    edited = adapt_config(work)
    conf.write_text(edited)
    dm("check-config")
    dm("init", "local")
    dm("backup", "nightly")
    snaps = dm("snapshots", "--json")
    assert '"kind": "full"' in snaps.stdout or '"full"' in snaps.stdout, snaps.stdout
    dm("verify", "--read-data")
    dm("restore", "--target", "local", "--to", str(work / "restored"))
    assert _tree(str(work / "vmail")) == _tree(str(work / "restored")), "restored tree differs"
    state_before = {p.name: p.read_bytes() for p in Path("/var/lib/dmbackup").iterdir() if p.is_file()}
    assert state_before, "the run left no state in /var/lib/dmbackup"

    # --- upgrade to a rebuilt, higher version: edited config and state kept, still works
    apt_install(deb2)
    assert pkg_status() == f"install ok installed {v2}"
    assert conf.read_text() == edited
    assert oct(conf.stat().st_mode & 0o7777) == "0o600"
    for name, data in state_before.items():
        assert (Path("/var/lib/dmbackup") / name).read_bytes() == data, name
    dm("backup", "nightly")          # the enrolment survived: an incremental on the same repository
    files = installed_files()
    assert "/usr/bin/dmbackup" in files and "/etc/dmbackup/dmbackup.toml" in files

    # --- remove: program gone, config and state kept
    run(["apt-get", "remove", "-y", "dmbackup"], env=APT_ENV)
    assert pkg_status().startswith("deinstall ok config-files")
    assert not os.path.lexists("/usr/bin/dmbackup") and not os.path.lexists("/usr/lib/dmbackup")
    assert conf.read_text() == edited
    assert (Path("/var/lib/dmbackup") / next(iter(state_before))).exists()

    # --- purge: no file of the package left; the backup target untouched
    target_before = sorted(str(p.relative_to(work)) for p in (work / "backups").rglob("*"))
    run(["apt-get", "purge", "-y", "dmbackup"], env=APT_ENV)
    assert pkg_status() == "" or "not-installed" in pkg_status()
    left = leftovers(files + ["/var/lib/dmbackup", "/etc/dmbackup"])
    assert left == [], "left behind after purge:\n" + "\n".join(left)
    assert sorted(str(p.relative_to(work)) for p in (work / "backups").rglob("*")) == target_before
