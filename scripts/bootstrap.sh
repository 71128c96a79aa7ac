#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install the project with its dev extras; skipped when
# pyproject.toml has not changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [[ -n $candidate ]] || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "bootstrap: Python >= 3.11 is required" >&2
  return 1
}

stamp=.venv/.installed
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ -x .venv/bin/python && -f $stamp && $(cat "$stamp") == "$wanted" ]]; then
  exit 0
fi
python=$(pick_python)
echo "bootstrap: installing into .venv with $($python --version)" >&2
"$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>.venv-install.log || true
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>>.venv-install.log \
  || { cat .venv-install.log >&2; exit 1; }
rm -f .venv-install.log
echo "$wanted" >"$stamp"
