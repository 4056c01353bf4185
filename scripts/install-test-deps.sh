#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine (run as root).
# Debian packages provide the real servers the tests start on 127.0.0.1 (smbd, Dovecot,
# nfs-ganesha), the USB emulation (umockdev) and the file-system tools for loop devices.
# policy-rc.d keeps apt from starting any system service: the tests start their own.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "install-test-deps: run as root (apt-get and loop devices need it)" >&2
  exit 2
fi

if [ ! -x /usr/sbin/policy-rc.d ] || ! grep -q 'exit 101' /usr/sbin/policy-rc.d; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
fi

DEBS=(
  samba                                   # smbd for the SMB target tests
  dovecot-core dovecot-imapd              # real IMAP server, doveadm, dovecot-lda
  isync                                   # mbsync: a real IMAP client keeping UID state (client-fidelity tests)
  umockdev gir1.2-umockdev-1.0            # udev emulation for USB detection tests
  libgirepository1.0-dev libcairo2-dev pkg-config   # to build PyGObject for hot-plug tests
  e2fsprogs dosfstools exfatprogs exfat-fuse fusefat mtools fuse3   # loop-device file systems
  nfs-ganesha nfs-ganesha-vfs libnfs13 libnfs-utils rpcbind        # NFS server + userspace client
  iproute2 util-linux openssl systemd zstd tar procps              # tools used by tests
  shellcheck curl tzdata                                           # hook script checks, DST tests
  dpkg-dev binutils python3 python3-venv lintian man-db bash-completion   # .deb build + install test (tests/packaging)
  gcc python3-dev                                                   # the .deb's compiled module (dmbackup.archive._hscan)
  systemd-container debootstrap                                    # boot a real systemd with the .deb (tests/packaging)
  mariadb-server mariadb-client postgresql sqlite3 slapd ldap-utils  # user databases in config bundles (tests/source)
  dovecot-mysql dovecot-pgsql dovecot-sqlite dovecot-ldap          # Dovecot authenticating against a restored database
)
need=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
