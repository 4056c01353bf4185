#!/bin/sh
# Install the tools bench/run.py compares dmbackup against: GNU tar + zstd,
# restic, borg (borgbackup) and GNU time (for peak RSS). Debian packages only;
# run.py itself never installs anything, it only reports what is missing.
set -eu
if [ "$(id -u)" -ne 0 ]; then
    echo "install-peers.sh: run as root (apt-get install)" >&2
    exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends tar zstd restic borgbackup time
for t in tar zstd restic borg /usr/bin/time; do
    printf '%-14s ' "$t"
    case "$t" in
        /usr/bin/time) "$t" --version 2>&1 | head -n1 ;;
        *) "$t" --version 2>&1 | head -n1 ;;
    esac
done
