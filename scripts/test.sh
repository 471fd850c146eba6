#!/usr/bin/env bash
# README command 2: set up, start the real services (PostgreSQL 15, Kafka 4.3.1), check
# format, lint, import layers and types, and run the whole test suite against them.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
bash scripts/services.sh up >&2
export DATABASE_URL="${TEST_DATABASE_URL:-postgresql://postgres:postgres@127.0.0.1:5432/challenge_test}"
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
.venv/bin/ruff format --check . >&2
.venv/bin/ruff check . >&2
.venv/bin/lint-imports --no-cache >&2
.venv/bin/mypy >&2
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
