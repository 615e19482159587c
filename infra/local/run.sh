#!/usr/bin/env bash
# One entry point for a fresh Debian machine (root or sudo) with Python >= 3.10:
#
#   bash infra/local/run.sh quickstart [arinv quickstart options]   # set up, run the main job
#   bash infra/local/run.sh test [pytest options]                    # set up, run the tests
#     (no options: the whole suite, in two phases: see "test)" below)
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
  test)
    if [ $# -gt 0 ]; then exec python -m pytest "$@"; fi
    # The whole suite: the tests not marked serial in $ARINV_TEST_PROCESSES processes (default
    # 2), each taking whole test files (a file's Ray cluster and servers stay in one process),
    # then the serial ones (they time or kill processes of their cluster) on their own.
    status=0
    python -m pytest -m "not serial" -n "${ARINV_TEST_PROCESSES:-2}" --dist loadfile || status=$?
    log "the serial tests, on their own"
    python -m pytest -m serial || status=$?
    exit "$status" ;;
  *) log "unknown command '$cmd' (use: setup | quickstart | test)"; exit 2 ;;
esac
