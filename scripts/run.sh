#!/usr/bin/env bash
# Runs `python -m app serve` locally with the settings of .env (copy .env.template and fill
# in AB_NAMESPACE and DATABASE_URL; `bash scripts/services.sh up pg` starts a PostgreSQL).
# Variables already set in the shell win over .env, as with docker compose. Extra arguments
# replace `serve` (e.g. `scripts/run.sh worker`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
if [ -f .env ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    [[ "$line" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || continue  # comments, blank lines
    name="${line%%=*}"
    [ -z "${!name+set}" ] && export "$line"
  done < .env
fi
if [ "$#" -eq 0 ]; then set -- serve; fi
exec .venv/bin/python -m app "$@"
