#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs the project with its test tools and the proto
# generator (the `proto` extra: grpcio-tools, a build tool the image does not ship), then
# generates the gRPC modules from proto/. Idempotent and quiet.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  python_bin="$(pick_python)"
  echo "creating .venv with $python_bin" >&2
  "$python_bin" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing dependencies into .venv (pinned in pyproject.toml)" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,proto]'
  touch "$stamp"
fi
if [ -f scripts/gen_protos.py ]; then
  .venv/bin/python scripts/gen_protos.py >&2
fi
