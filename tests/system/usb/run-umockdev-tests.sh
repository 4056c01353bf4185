#!/bin/sh
# Runs the tests marked "umockdev" in their own pytest process under umockdev-wrapper
# (libumockdev-preload in LD_PRELOAD). They must not share a process with the "realdev"
# tests: real losetup and mount fail under the preload. A plain `pytest` run skips them.
#   tests/system/usb/run-umockdev-tests.sh [extra pytest args]
set -eu
cd "$(dirname "$0")/../../.."
command -v umockdev-wrapper >/dev/null || {
  echo "run-umockdev-tests: umockdev-wrapper not found (scripts/install-test-deps.sh installs umockdev)" >&2
  exit 2
}
exec umockdev-wrapper "${PYTHON:-python3}" -m pytest -m umockdev tests "$@"
