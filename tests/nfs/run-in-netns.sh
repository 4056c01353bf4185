#!/usr/bin/env bash
# Runs a command (default: the NFS tests) inside a private network + mount namespace.
#
# NFSv3 needs rpcbind, which always binds 0.0.0.0:111; it must never do that in the machine's
# own network namespace. Here we get a namespace with only `lo` (brought up) and a private
# tmpfs on /run (rpcbind's socket and state, the default /run/dmbackup mount points), so the
# rpcbind and ganesha.nfsd that tests/fixtures/ganesha.py starts, and any mount the tests
# make, vanish with the namespace, whatever happens to the test process.
#
#   tests/nfs/run-in-netns.sh                     # python3 -m pytest tests/targets/test_nfs.py
#   tests/nfs/run-in-netns.sh -k userspace -x     # extra pytest arguments
#   tests/nfs/run-in-netns.sh --cmd CMD ARGS...   # any other command in the namespace
#
# Needs root (unshare --net --mount) and scripts/install-test-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
  echo "run-in-netns: needs root (unshare --net --mount)" >&2
  exit 2
fi
if [ "${1:-}" = "--cmd" ]; then
  shift
  cmd=("$@")
else
  cmd=("${PYTHON:-python3}" -m pytest tests/targets/test_nfs.py "$@")
fi

# The namespaces we leave behind, written into the private /run: tests/fixtures/ganesha.py
# reads them there to check it really runs elsewhere (/proc/1/ns may not be readable, and
# the test suite clears DMBACKUP_* variables).
NETNS_OUTER="$(readlink /proc/self/ns/net) $(readlink /proc/self/ns/mnt)"
export NETNS_OUTER
exec unshare --net --mount --fork --propagation private -- sh -c '
  set -e
  ip link set lo up
  mount -t tmpfs -o mode=755,size=64m tmpfs /run
  mkdir -p /run/lock /run/rpcbind
  echo "$NETNS_OUTER" > /run/dmbackup-test-netns
  unset NETNS_OUTER
  exec "$@"' run-in-netns "${cmd[@]}"
