#!/usr/bin/env bash
# One entry point for a fresh Debian machine (root or sudo) with Python >= 3.10:
#
#   bash infra/local/run.sh quickstart [arinv quickstart options]   # set up, run the main job
#   bash infra/local/run.sh test [pytest options]                    # set up, run the tests
#   bash infra/local/run.sh setup                                    # set up only
#
# Setting up = install the system packages ffcv builds against when missing (for the tests also
# PostgreSQL, which infra/local/stack.sh runs), create or refresh the virtual environment .venv
# (or $ARINV_VENV), install arinv with every extra. Safe to re-run: the environment is
# reinstalled only when pyproject.toml or lib.sh changed.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmd=${1:-quickstart}; shift || true
if [ "$cmd" = test ]; then
  ensure_apt_packages postgresql   # tests/integration/test_stack.py runs infra/local/stack.sh
else
  ensure_apt_packages
fi
ensure_venv
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
case "$cmd" in
  setup) log "ready: activate with 'source $VENV/bin/activate'" ;;
  quickstart) exec arinv quickstart "$@" ;;
  test) exec python -m pytest "$@" ;;
  *) log "unknown command '$cmd' (use: setup | quickstart | test)"; exit 2 ;;
esac
