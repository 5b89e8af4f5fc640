# Sourced by scripts/run, scripts/test and scripts/build-binary: make .venv usable.
# Creates .venv if absent and (re)installs the project when its build inputs
# changed, so a fresh clone needs nothing but a Python >= 3.11 with venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

# Any Python >= 3.11. The first python3.11 found wins (development and the recorded
# benchmarks use it); 3.12 and 3.13 also pass the suite.
find_python() {
  local pyenv_root
  pyenv_root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
  for py in "${PYTHON:-}" python3.11 "$pyenv_root"/versions/3.11*/bin/python3.11 python3 \
            python3.12 python3.13; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "outpost needs Python >= 3.11 with venv (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py="$(find_python)"
  echo "creating .venv with $($py --version)" >&2
  "$py" -m venv .venv
fi

stamp_inputs() { cat pyproject.toml setup.py native/*; }
want="$(stamp_inputs | sha256sum | cut -c1-16)"
have="$(cat .venv/.outpost-installed 2>/dev/null || true)"
if [ "$want" != "$have" ] || ! ls shm/_native*.so >/dev/null 2>&1; then
  echo "installing outpost into .venv (editable, with test and build extras)" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,build]' \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  echo "$want" > .venv/.outpost-installed
fi
