# Setup functions shared by run.sh and stack.sh (sourced, not run): the system packages ffcv
# builds against, and the virtual environment with arinv and every extra. Callers set nothing;
# they get ROOT, VENV, log, ensure_apt_packages [extra packages...] and ensure_venv.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${ARINV_VENV:-$ROOT/.venv}
APT_PACKAGES=(pkg-config libopencv-dev libturbojpeg0-dev)
TORCH_PAIR=("torch==2.14.1" "torchvision==0.29.1")   # a matched pair; keep them together

log() { printf '\033[1m[arinv setup]\033[0m %s\n' "$*" >&2; }

pick_python() {
  for py in "${PYTHON:-}" python3.11 python3.12 python3.10 python3; do
    [ -n "$py" ] && command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  log "no Python >= 3.10 found; install python3.11 (apt-get install python3.11 python3.11-venv)"
  return 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# pip_step WHAT PIP-ARGS...: run pip in the venv, output kept in $PIP_LOG and shown without the
# "WARNING: Location" noise; setup stops at once, naming WHAT, when pip itself fails.
pip_step() {
  local what=$1 rc=0; shift
  printf '\n$ pip %s\n' "$*" >> "$PIP_LOG"
  "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" >> "$PIP_LOG.step" 2>&1 || rc=$?
  cat "$PIP_LOG.step" >> "$PIP_LOG"
  grep -v "^WARNING: Location" "$PIP_LOG.step" >&2 || true   # grep's status only: none left
  rm -f "$PIP_LOG.step"
  if [ "$rc" -ne 0 ]; then
    log "pip install of $what failed (exit $rc): see pip's messages above (also in $PIP_LOG)"
    exit 1
  fi
}

ensure_apt_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    log "missing system packages ${missing[*]} and no apt-get: install their equivalents by hand"
    return 1
  fi
  log "installing system packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

ensure_venv() {
  local py; py=$(pick_python)
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV with $py"
    if ! "$py" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      ensure_apt_packages "python3-venv" "$(basename "$py")-venv" || true
      "$py" -m venv "$VENV"
    fi
  fi
  local stamp; stamp=$(cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$VENV/.arinv-stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  ensure_apt_packages   # ffcv compiles against them, whichever script asked for the venv
  log "installing arinv and its dependencies into $VENV (first run: a few minutes)"
  PIP_LOG=$VENV/.arinv-pip.log
  : > "$PIP_LOG"
  pip_step "pip, setuptools and wheel" install --upgrade pip setuptools wheel
  pip_step "${TORCH_PAIR[*]}" install "${TORCH_PAIR[@]}"
  pip_step "arinv[all,test,dev]" install -e "$ROOT[all,test,dev]"
  "$VENV/bin/python" -c "import torch, torchvision, arinv, ray, mlflow, ffcv" \
    || { log "pip succeeded, but importing torch, torchvision, arinv, ray, mlflow, ffcv fails: see the traceback above"; exit 1; }
  echo "$stamp" > "$VENV/.arinv-stamp"
}

