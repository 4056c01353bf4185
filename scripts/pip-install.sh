#!/usr/bin/env bash
# pip install that also works where Debian marks the system Python as externally managed.
set -euo pipefail
PY=${PYTHON:-python3}
if ! "$PY" -m pip --version >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
fi
"$PY" -m pip install -q --disable-pip-version-check "$@" 2>/tmp/dmbackup-pip.err || {
  if grep -q externally-managed /tmp/dmbackup-pip.err; then
    "$PY" -m pip install -q --disable-pip-version-check --break-system-packages "$@"
  else
    cat /tmp/dmbackup-pip.err >&2; exit 1
  fi
}
