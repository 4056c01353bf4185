#!/usr/bin/env bash
# Quick start, command 1: install dmbackup and run a backup of a sample Maildir to a local
# directory on the embedded default config, then verify and restore it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/pip-install.sh -e .
exec "${PYTHON:-python3}" -m dmbackup.quickstart.demo "$@"
