#!/usr/bin/env bash
# Quick start, command 2: install everything the tests need (Debian packages for the real
# servers, Python packages) and run every test suite. Exit status is non-zero if any fails.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh || { echo "install-test-deps failed" >&2; exit 2; }
PY=${PYTHON:-python3}
status=0
# the package's byte-code, written once: the suites start many dmbackup processes, and
# where PYTHONDONTWRITEBYTECODE=1 is set (as in some CI images) each would compile the package
# again first (~0.25 s a process). __pycache__/ is git-ignored; an installed package has it too.
"$PY" -m compileall -q dmbackup >/dev/null || { echo "dmbackup does not compile" >&2; exit 1; }
run() { echo "== $*"; "$@" || status=1; }

# 1. the main suite (real smbd, Dovecot, SMTP, loop devices; umockdev/netns tests skip here);
#    the 25 slowest tests are listed at the end (CI must stay under 30 minutes on slow machines)
run "$PY" -m pytest -q -p no:cacheprovider --durations=25 tests
# 2. the udev-emulation suite runs under umockdev's LD_PRELOAD, in a process of its own
#    (the NFS suite needs a private network namespace: tests/nfs/test_in_netns.py runs it
#    from step 1)
run tests/system/usb/run-umockdev-tests.sh -q
# 3. no import cycles, and the layers kept (cli/ > daemon/ > engine/ > archive/ source/ system/ ...)
run "$PY" scripts/check-imports.py
exit $status
