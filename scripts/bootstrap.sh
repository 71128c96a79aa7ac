#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install the project with its dev extras; skipped (silently) when
# pyproject.toml has not changed since the last install. While pip works (about a minute on a fresh
# machine) a progress line goes to stderr every $BOOTSTRAP_TICK_SECONDS (default 10): the time so
# far, the packages found, and what pip is doing. pip's whole output is in .venv-install.log, printed
# if the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."

TICK=${BOOTSTRAP_TICK_SECONDS:-10}
LOG=.venv-install.log

say() { printf 'bootstrap: %s\n' "$*" >&2; }

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

# One progress line: seconds so far, packages pip has found, the last thing it said it is doing.
progress() {
  local found doing
  found=$(grep -c '^Collecting ' "$LOG" 2>/dev/null || true)
  doing=$(grep -E '^(Collecting|Downloading|Using cached|Building|Installing|Successfully)' "$LOG" 2>/dev/null \
    | tail -n 1 | cut -c 1-90 || true)
  say "$(( SECONDS - started )) s: ${found:-0} packages found${doing:+; $doing}"
}

stamp=.venv/.installed
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ -x .venv/bin/python && -f $stamp && $(cat "$stamp") == "$wanted" ]]; then
  exit 0
fi
started=$SECONDS
python=$(pick_python)
say "creating .venv with $($python --version 2>&1) (pyproject.toml is new or changed)"
"$python" -m venv .venv
say "upgrading pip"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>"$LOG" || true
say "installing the project and its dev tools into .venv (about a minute; pip's log: $LOG)"
.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off -e '.[dev]' >>"$LOG" 2>&1 </dev/null &
pip_pid=$!
trap 'kill "$pip_pid" 2>/dev/null || true' EXIT   # Ctrl-C: do not leave pip running
next=$(( SECONDS + TICK ))
while kill -0 "$pip_pid" 2>/dev/null; do
  sleep 1
  if (( SECONDS >= next )) && kill -0 "$pip_pid" 2>/dev/null; then
    progress
    next=$(( SECONDS + TICK ))
  fi
done
if ! wait "$pip_pid"; then
  cat "$LOG" >&2
  say "pip install failed after $(( SECONDS - started )) s (output above, and in $LOG)"
  exit 1
fi
trap - EXIT
rm -f "$LOG"
echo "$wanted" >"$stamp"
say ".venv ready in $(( SECONDS - started )) s"
