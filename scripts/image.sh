#!/usr/bin/env bash
# Builds the container image from the Dockerfile with podman (in Docker format, which keeps
# the HEALTHCHECK) or docker, whichever is installed. IMAGE names it
# (default challenge-event-handler:local); extra arguments go to the build command.
# scripts/image-smoke.sh builds the same Dockerfile and smoke-runs the result.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
image="${IMAGE:-challenge-event-handler:local}"
if command -v podman >/dev/null 2>&1; then
  exec podman build --format docker -t "$image" "$@" .
elif command -v docker >/dev/null 2>&1; then
  exec docker build -t "$image" "$@" .
fi
echo "error: neither podman nor docker is installed" >&2
exit 1
