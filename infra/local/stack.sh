#!/usr/bin/env bash
# Rehearse a cluster on one machine (loopback only):
#
#   bash infra/local/stack.sh up       # Ray head (token auth), MLflow (basic auth, PostgreSQL),
#                                      # S3 server; prints the addresses and what to source
#   bash infra/local/stack.sh status   # what runs, and whether it answers
#   bash infra/local/stack.sh down     # stop everything it started (--purge: delete the data)
#
# Installs Debian's postgresql package when missing (as root or with sudo) and sets up the
# virtual environment like run.sh; $ARINV_STACK_PYTHON skips the latter and uses the given Python
# (one that has arinv[all] installed). Details: infra/local/stack.py.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/lib.sh"
if [ "${1:-}" = "up" ]; then
  ensure_apt_packages postgresql
fi
if [ -n "${ARINV_STACK_PYTHON:-}" ]; then
  PY=$ARINV_STACK_PYTHON
else
  ensure_venv
  PY=$VENV/bin/python
fi
exec "$PY" "$HERE/stack.py" "$@"
