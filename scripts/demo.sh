#!/usr/bin/env bash
# README command 1: set up, then run the main job on the embedded default (SQLite; no
# Kafka, no PostgreSQL): sample events -> engine -> data/demo.db, and print the progress.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m app demo "$@"
