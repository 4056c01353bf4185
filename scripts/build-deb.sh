#!/usr/bin/env bash
# Builds dist/dmbackup_<version>_<arch>.deb from this checkout with dpkg-deb (no debhelper).
#
#   scripts/build-deb.sh                            version from pyproject.toml
#   DMBACKUP_DEB_VERSION=0.1.0+2 scripts/build-deb.sh   another package version (upgrade tests)
#   DMBACKUP_DEB_PYTHON=/usr/bin/python3            the Python the package runs with (default)
#
# Layout (the dh-virtualenv one): dmbackup and every Python dependency in a private virtual
# environment at /usr/lib/dmbackup/venv, so the package installs with no network; it runs on
# Debian's python3 (3.11 on Debian 12), hence Depends: python3 (>= 3.11), python3 (<< 3.12).
#
# A venv is not relocatable (its scripts' #! lines and pyvenv.cfg hold its absolute path), and
# building it at the real /usr/lib/dmbackup/venv would write into this machine's /usr (and clash
# with an installed package). So it is built at <staging root>/usr/lib/dmbackup/venv and then
# every text file in it that names the staging root is rewritten to the final path (what
# dh-virtualenv does too). Only the #! lines, pyvenv.cfg and the activate scripts name it;
# byte-code is not shipped (postinst compiles, prerm removes the caches), so no stale path is
# left in .pyc files. bin/python3 stays a (relative) symlink to /usr/bin/python3 (no --copies: Debian's
# interpreter gets its security updates).
#
# Installed if present in the checkout at build time: packaging/man/dmbackup.1,
# packaging/man/dmbackup.toml.5 (gzipped), packaging/bash-completion/dmbackup.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022

PY=${DMBACKUP_DEB_PYTHON:-/usr/bin/python3}
if [ ! -x "$PY" ]; then
  echo "build-deb: $PY not found: apt-get install python3 python3-venv (or set DMBACKUP_DEB_PYTHON)" >&2
  exit 2
fi
if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
  echo "build-deb: $PY has no venv/ensurepip: apt-get install python3-venv" >&2
  exit 2
fi
for tool in dpkg-deb dpkg gzip; do
  command -v "$tool" >/dev/null || { echo "build-deb: $tool missing: apt-get install dpkg-dev" >&2; exit 2; }
done

UPSTREAM=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
VERSION=${DMBACKUP_DEB_VERSION:-$UPSTREAM}
ARCH=$(dpkg --print-architecture)
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
NEXTPY=$("$PY" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
MAINTAINER=${DMBACKUP_DEB_MAINTAINER:-dmbackup maintainers <dmbackup@example.org>}
DEB=dist/dmbackup_${VERSION}_${ARCH}.deb

WORK=$(mktemp -d /tmp/dmbackup-deb.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
SRC=$WORK/src
VENV=/usr/lib/dmbackup/venv
echo "build-deb: dmbackup $VERSION for $ARCH with $PY ($PYVER) in $WORK" >&2

# 1. the source, copied so that the build leaves nothing (build/, *.egg-info) in the checkout
mkdir -p "$SRC"
cp -a pyproject.toml setup.py README.md dmbackup "$SRC"/
rm -f "$SRC"/dmbackup/archive/*.so      # built again below, for the package's Python
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$SRC"/*.egg-info

# 2. the private venv, at its final path inside the staging root
"$PY" -m venv "$ROOT$VENV"
"$ROOT$VENV/bin/python3" -m pip install -q --disable-pip-version-check --no-compile "$SRC" \
  -r packaging/deb/requirements-extra.txt
"$ROOT$VENV/bin/python3" -m pip uninstall -q -y pip setuptools >/dev/null
# No console script is shipped (their #! lines would name the venv's python, which Debian's
# tools reject): /usr/bin/dmbackup below starts the venv's interpreter itself.
find "$ROOT$VENV/bin" -maxdepth 1 -type f ! -name 'activate*' -delete
rm -f "$ROOT$VENV"/bin/Activate.ps1
find "$ROOT$VENV" -name __pycache__ -prune -exec rm -rf {} +
find "$ROOT$VENV" -name '*.pyc' -delete
# the program must import in the venv alone (nothing from the build machine's site-packages)
"$ROOT$VENV/bin/python3" -I -c 'import dmbackup.cli.main' || {
  echo "build-deb: dmbackup does not import in its venv: a dependency is missing" >&2; exit 1; }
"$ROOT$VENV/bin/python3" -I -c 'import dmbackup.archive._hscan' 2>/dev/null || \
  echo "build-deb: warning: built without the compiled header scanner (the same code in Python runs," \
       "slower): apt-get install gcc python3-dev and build again" >&2
find "$ROOT$VENV" -name __pycache__ -prune -exec rm -rf {} +
# rewrite the staging path to the final one in every text file that names it
grep -rlIF "$ROOT" "$ROOT$VENV" | while read -r f; do
  sed -i "s|$ROOT||g" "$f"
done
if grep -rqF "$ROOT" "$ROOT$VENV"; then
  echo "build-deb: the staging path is still named in:" >&2
  grep -rlF "$ROOT" "$ROOT$VENV" >&2
  exit 1
fi
# relative, so it also resolves inside the staging root (lintian: no absolute symlinks)
ln -sfn ../../../../bin/python3 "$ROOT$VENV/bin/python3"
# shared objects from wheels are already stripped; strip debug info again where possible
find "$ROOT$VENV" -name '*.so*' -type f -exec strip --strip-unneeded {} + 2>/dev/null || true
find "$ROOT$VENV" -type f -exec chmod go-w {} +

# 3. the program: the venv's interpreter in isolated mode (-I: no current directory or
# PYTHON* variables on its path; dmbackup runs as root), argv[0] "dmbackup" for --help
install -d "$ROOT/usr/bin"
cat > "$ROOT/usr/bin/dmbackup" <<'WRAP'
#!/bin/sh
# dmbackup: runs the program from its private virtual environment (Debian package).
exec /usr/lib/dmbackup/venv/bin/python3 -I -c 'import sys; sys.argv[0] = "dmbackup"; from dmbackup.cli.main import main; sys.exit(main())' "$@"
WRAP
chmod 0755 "$ROOT/usr/bin/dmbackup"

# 4. systemd units and the udev rule
install -d "$ROOT/lib/systemd/system" "$ROOT/lib/udev/rules.d"
for u in systemd/*.service systemd/*.timer; do
  install -m 0644 "$u" "$ROOT/lib/systemd/system/"
done
install -m 0644 systemd/99-dmbackup-usb.rules "$ROOT/lib/udev/rules.d/"

# 5. configuration (conffile, 0600) and the hook directories
install -d -m 0755 "$ROOT/etc/dmbackup"
install -m 0600 packaging/deb/dmbackup.toml "$ROOT/etc/dmbackup/dmbackup.toml"
for d in pre-backup.d post-backup.d on-failure.d; do
  install -d -m 0755 "$ROOT/etc/dmbackup/hooks/$d"
done

# 6. documentation, hook examples, man pages, completion
DOC=$ROOT/usr/share/doc/dmbackup
install -d "$DOC/examples"
install -m 0644 README.md packaging/deb/README.Debian packaging/deb/copyright "$DOC/"
cp -a hooks "$DOC/examples/hooks"
find "$DOC/examples/hooks" -exec chmod go-w {} +      # files and directories: the checkout may be 0775
# a version without a Debian revision (0.1.0, 0.1.0+2) is a native package: changelog.gz
case "$VERSION" in *-*) CHANGELOG=changelog.Debian.gz ;; *) CHANGELOG=changelog.gz ;; esac
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
  echo "dmbackup ($VERSION) unstable; urgency=medium"
  echo
  echo "  * Built from the dmbackup checkout (git $COMMIT) by scripts/build-deb.sh."
  echo
  echo " -- $MAINTAINER  $(date -R)"
} | gzip -9n > "$DOC/$CHANGELOG"
chmod 0644 "$DOC/$CHANGELOG"

for page in packaging/man/dmbackup.1 packaging/man/dmbackup.toml.5; do
  if [ -f "$page" ]; then
    sec=${page##*.}
    install -d "$ROOT/usr/share/man/man$sec"
    gzip -9n < "$page" > "$ROOT/usr/share/man/man$sec/$(basename "$page").gz"
    chmod 0644 "$ROOT/usr/share/man/man$sec/$(basename "$page").gz"
  else
    echo "build-deb: $page not in the checkout: package built without it" >&2
  fi
done
if [ -f packaging/bash-completion/dmbackup ]; then
  install -d "$ROOT/usr/share/bash-completion/completions"
  install -m 0644 packaging/bash-completion/dmbackup "$ROOT/usr/share/bash-completion/completions/dmbackup"
else
  echo "build-deb: packaging/bash-completion/dmbackup not in the checkout: package built without it" >&2
fi

# 7. control area
install -d -m 0755 "$ROOT/DEBIAN"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s|@VERSION@|$VERSION|" -e "s|@MAINTAINER@|$MAINTAINER|" -e "s|@ARCH@|$ARCH|" -e "s|@SIZE@|$SIZE|" \
    -e "s|python3 (>= 3.11), python3 (<< 3.12)|python3 (>= $PYVER), python3 (<< $NEXTPY)|" \
    packaging/deb/control.in > "$ROOT/DEBIAN/control"
echo /etc/dmbackup/dmbackup.toml > "$ROOT/DEBIAN/conffiles"
for s in postinst prerm postrm; do
  install -m 0755 "packaging/deb/$s" "$ROOT/DEBIAN/$s"
done
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
   | xargs -0 md5sum) > "$ROOT/DEBIAN/md5sums"
chmod 0644 "$ROOT/DEBIAN/control" "$ROOT/DEBIAN/conffiles" "$ROOT/DEBIAN/md5sums"

mkdir -p dist
dpkg-deb --root-owner-group -Zxz -z6 --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
