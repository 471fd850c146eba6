#!/usr/bin/env bash
# Build the unchanged Dockerfile with rootful podman and smoke-run the image as Extend
# would run it:
#   the image: grpcio-tools not shipped (`import grpc_tools` fails);
#   no database settings -> `serve` exits 2 with the one line naming DATABASE_URL / DB_HOST;
#   serve on a SQLite file asked for explicitly (DATABASE_URL=sqlite:///...) -> liveness
#   SERVING (the image's own HEALTHCHECK) and readiness SERVING -> the start line names the
#   file -> runs as the non-root user -> a login and a stat event -> the rows read back ->
#   a GDPR deletion -> the rows gone -> SIGTERM -> exit code 0;
#   serve with the config in CHALLENGES_JSON (base64, one goal, unlike the baked file) ->
#   SERVING -> a login writes that goal's row and no other;
#   then, when a Kafka broker answers on KAFKA_BOOTSTRAP_SERVERS, the Kafka worker too:
#   ready -> events produced -> row read back -> SIGTERM -> exit code 0;
#   and, when a Zipkin server answers on ZIPKIN_URL, serve with tracing on: a login's
#   OnMessage span and its flush span reach Zipkin in one trace -> SIGTERM -> exit code 0.
#
# No Docker engine and no Docker Hub here: podman, buildah, runc and mmdebstrap come from
# Debian packages (installed when missing; needs root), and `python:3.11-slim` is a
# stand-in built with mmdebstrap from Debian bookworm and imported under that tag
# (docs/deploy.md lists how it differs from the real image). Everything slow is cached:
# the stand-in's rootfs tar under IMAGE_SMOKE_CACHE, podman's layer cache in its storage
# (the dependency layer is rebuilt only when pyproject.toml changes).
#
# Knobs: IMAGE_SMOKE_CACHE (~/.cache/image-smoke), IMAGE (localhost/challenge-event-
# handler:smoke), KAFKA_BOOTSTRAP_SERVERS (127.0.0.1:9092), IMAGE_SMOKE_KAFKA (auto|0|1),
# IMAGE_SMOKE_TIMEOUT seconds per wait (120), ZIPKIN_URL (http://127.0.0.1:9411),
# IMAGE_SMOKE_TRACING (auto|0|1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${IMAGE_SMOKE_CACHE:-${HOME:-/root}/.cache/image-smoke}"
IMAGE="${IMAGE:-localhost/challenge-event-handler:smoke}"
BASE_TAGS=(docker.io/library/python:3.11-slim localhost/python:3.11-slim)
RAW_BASE=localhost/bookworm-python-rootfs:latest
KAFKA="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
KAFKA_SMOKE="${IMAGE_SMOKE_KAFKA:-auto}"
WAIT="${IMAGE_SMOKE_TIMEOUT:-120}"
ZIPKIN="${ZIPKIN_URL:-http://127.0.0.1:9411}"
TRACING_SMOKE="${IMAGE_SMOKE_TRACING:-auto}"
RUN_ID="$$-$RANDOM"
CONTAINERS=()
READINESS=(
  accelbyte.iam.account.v1.UserAuthenticationUserLoggedInService
  accelbyte.social.statistic.v1.StatisticStatItemUpdatedService
  accelbyte.iam.account.v1.DeletionAccountGdprGdprRequestDataDeletionResponseService
)

log() { printf '[image-smoke] %s\n' "$*" >&2; }
die() { printf '[image-smoke] FAILED: %s\n' "$*" >&2; exit 1; }

cleanup() {
  local name
  for name in "${CONTAINERS[@]}"; do
    podman rm -f -t 5 "$name" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# ------------------------------------------------------------------ tools and config
ensure_tools() {
  local missing=() tool
  for tool in podman buildah runc mmdebstrap curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  ((${#missing[@]} == 0)) && return 0
  [[ "$(id -u)" == 0 ]] || die "need root to install: ${missing[*]}"
  log "installing ${missing[*]} (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 </dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah runc mmdebstrap curl >&2 </dev/null
}

# Our own containers.conf (not the system one): runc (crun fails on these hybrid
# cgroups) and explicit ulimits (without them every start fails with `setrlimit ...
# Operation not permitted`).
write_containers_conf() {
  mkdir -p "$CACHE"
  cat >"${CACHE}/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
  export CONTAINERS_CONF="${CACHE}/containers.conf"
}

# ---------------------------------------------------------- python:3.11-slim stand-in
ensure_base() {
  local tag missing=0
  for tag in "${BASE_TAGS[@]}"; do podman image exists "$tag" || missing=1; done
  ((missing == 0)) && { log "base image: cached stand-in ${BASE_TAGS[0]}"; return 0; }
  local tar="${CACHE}/bookworm-python.tar"
  if [[ ! -f "$tar" || ! -s "$tar" ]]; then
    log "building the python:3.11-slim stand-in with mmdebstrap (one-off, a few minutes)"
    # --format: mmdebstrap picks the format from the name's extension, and `.tmp` would
    # make it a directory; a leftover of an interrupted build (file or directory) goes.
    rm -rf "$tar" "${tar}.tmp"
    mmdebstrap --variant=minbase --format=tar \
      --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "${tar}.tmp" >&2 </dev/null
    mv "${tar}.tmp" "$tar"
  fi
  podman import "$tar" "$RAW_BASE" >/dev/null
  # What the real image offers that Debian's python3 does not: `python` and `pip` on
  # PATH, pip allowed to install into the system interpreter (no PEP 668 marker), UTF-8.
  podman build --pull=never --format docker -t "${BASE_TAGS[0]}" -f - "$CACHE" >&2 <<EOF
FROM ${RAW_BASE}
RUN ln -sf /usr/bin/python3 /usr/bin/python && ln -sf /usr/bin/pip3 /usr/bin/pip \\
    && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8
CMD ["python3"]
EOF
  for tag in "${BASE_TAGS[@]:1}"; do podman tag "${BASE_TAGS[0]}" "$tag"; done
}

build_image() {
  log "building ${IMAGE} from the unchanged Dockerfile"
  local started=$SECONDS
  # The host CA bundle is mounted for the build only (pip behind this network's proxy);
  # --format docker keeps the HEALTHCHECK (OCI images have none).
  podman build --pull=never --format docker \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    -t "$IMAGE" "$ROOT" >&2 </dev/null
  log "image built in $((SECONDS - started))s ($(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
}

# ------------------------------------------------------------------------- helpers
in_container() {  # in_container NAME CMD... : run inside a running container
  local name="$1"; shift
  podman exec "$name" "$@" </dev/null
}

wait_until() {  # wait_until DESCRIPTION CMD... : retry CMD until it succeeds or WAIT passes
  local what="$1"; shift
  local deadline=$((SECONDS + WAIT))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
  log "ok: ${what}"
}

running() { [[ "$(podman inspect "$1" --format '{{.State.Running}}' 2>/dev/null)" == true ]]; }

show_logs_and_die() {
  podman logs --tail 40 "$1" >&2 2>&1 || true
  die "$2"
}

stop_and_check_exit() {  # SIGTERM, then the exit code must be 0
  local name="$1"
  podman kill --signal TERM "$name" >/dev/null
  local deadline=$((SECONDS + WAIT))
  while running "$name"; do
    ((SECONDS < deadline)) || show_logs_and_die "$name" "${name} did not stop within ${WAIT}s of SIGTERM"
    sleep 0.3
  done
  local code
  code="$(podman inspect "$name" --format '{{.State.ExitCode}}')"
  [[ "$code" == 0 ]] || show_logs_and_die "$name" "${name} exited with ${code} after SIGTERM"
  log "ok: ${name} stopped by SIGTERM with exit code 0"
}

check_non_root() {
  local name="$1" uid user
  uid="$(in_container "$name" id -u)"
  [[ "$uid" != 0 ]] || die "${name}: processes run as root"
  user="$(podman top "$name" user | tail -n +2 | sort -u | tr -d ' ')"
  [[ "$user" == app ]] || die "${name}: main process runs as '${user}', expected app"
  log "ok: ${name} runs as the non-root user app (uid ${uid})"
}

progress_shows() {  # progress_shows NAME USER GOAL TEXT: a row "<challenge>  GOAL  TEXT"
  in_container "$1" python -m app progress "$2" 2>/dev/null | grep -E "^[^ ]+ +$3 +$4( |\$)" >/dev/null
}

health_of() {  # health_of NAME PORT SERVICE: the gRPC health status of SERVICE ("" = liveness)
  in_container "$1" python -c "import grpc,sys;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;c=grpc.insecure_channel('127.0.0.1:$2');print(h.HealthCheckResponse.ServingStatus.Name(g.HealthStub(c).Check(h.HealthCheckRequest(service=sys.argv[1]),timeout=2).status))" "$3"
}

ready() {  # ready NAME PORT: every readiness name (the event and GDPR services) SERVING
  local service
  for service in "${READINESS[@]}"; do
    [[ "$(health_of "$1" "$2" "$service")" == SERVING ]] || return 1
  done
}

start_line_field() {  # start_line_field NAME FIELD: FIELD of the "gRPC server started" line
  podman logs "$1" 2>&1 | grep '"event":"gRPC server started"' | head -1 |
    python3 -c "import json,sys;print(json.loads(sys.stdin.read())[sys.argv[1]])" "$2"
}

# ------------------------------------------------------------------------- image
smoke_image() {
  if podman run --rm "$IMAGE" python -c "import grpc_tools" >/dev/null 2>&1; then
    die "the image ships grpcio-tools (a build tool)"
  fi
  log "ok: grpcio-tools is not in the image"
  local out code=0 errors
  out="$(podman run --rm -e AB_NAMESPACE=mygame "$IMAGE" 2>&1 </dev/null)" || code=$?
  [[ "$code" == 2 ]] || die "serve without database settings exited ${code}, expected 2: ${out}"
  errors="$(grep '^error: ' <<<"$out" || true)"  # (podman may add warnings of its own)
  [[ "$(wc -l <<<"$errors")" == 1 && "$errors" == "error: DATABASE_URL / DB_HOST: "* &&
    "$errors" == *"DATABASE_URL=sqlite:///path"* && "$out" != *Traceback* ]] ||
    die "serve without database settings did not say which variables to set: ${out}"
  log "ok: serve without database settings exits 2 naming DATABASE_URL / DB_HOST"
}

# ------------------------------------------------------------------------- serve
smoke_serve() {
  local name="smoke-serve-${RUN_ID}" grpc metrics user="smoke-${RUN_ID}"
  local database=/app/data/smoke.db
  grpc="$(free_port)"; metrics="$(free_port)"
  log "serve: starting on the SQLite file ${database} asked for explicitly (gRPC ${grpc}, metrics ${metrics})"
  podman run -d --name "$name" --network=host \
    -e AB_NAMESPACE=mygame -e DATABASE_URL="sqlite:///${database}" \
    -e GRPC_PORT="$grpc" -e METRICS_PORT="$metrics" \
    -e BUFFER_FLUSH_INTERVAL=100ms "$IMAGE" >/dev/null
  CONTAINERS+=("$name")
  # the image's own HEALTHCHECK: liveness (the overall gRPC health status) SERVING
  wait_until "serve: liveness SERVING (image HEALTHCHECK)" podman healthcheck run "$name" ||
    show_logs_and_die "$name" "serve never became healthy"
  wait_until "serve: readiness SERVING (event and GDPR services)" ready "$name" "$grpc" ||
    show_logs_and_die "$name" "serve never became ready"
  [[ "$(start_line_field "$name" database)" == "$database" ]] ||
    show_logs_and_die "$name" "the start line does not name ${database}"
  log "ok: serve's start line names its database ${database}"
  check_non_root "$name"
  local sent
  sent="$(in_container "$name" python -m app send --target "127.0.0.1:${grpc}" login --user "$user")"
  [[ "$sent" == OK* ]] || show_logs_and_die "$name" "login refused: ${sent}"
  sent="$(in_container "$name" python -m app send --target "127.0.0.1:${grpc}" \
    stat --user "$user" --code match_wins --value 4)"
  [[ "$sent" == OK* ]] || show_logs_and_die "$name" "stat refused: ${sent}"
  log "ok: serve acknowledged a login and a stat event (durable acks)"
  progress_shows "$name" "$user" daily-login "1 +completed" ||
    show_logs_and_die "$name" "daily-login row of ${user} not found"
  progress_shows "$name" "$user" win-1 "4 +completed" ||
    show_logs_and_die "$name" "win-1 row of ${user} not found"
  log "ok: serve rows read back (daily-login 1 completed, win-1 4 completed)"
  # read the page whole first: with pipefail, `curl | grep -q` fails when grep stops
  # reading at the match before curl has written everything (SIGPIPE)
  local scraped
  scraped="$(curl -fsS "http://127.0.0.1:${metrics}/metrics")" || scraped=""
  grep -q '^challenge_event_handler_events_total{source="grpc"} 2.0' <<<"$scraped" ||
    show_logs_and_die "$name" "metrics do not count the two events"
  sent="$(in_container "$name" python -m app send --target "127.0.0.1:${grpc}" gdpr --user "$user")"
  [[ "$sent" == OK* ]] || show_logs_and_die "$name" "GDPR deletion refused: ${sent}"
  in_container "$name" python -m app progress "$user" | grep -q "no progress rows" ||
    show_logs_and_die "$name" "rows of ${user} still there after the GDPR deletion"
  log "ok: serve GDPR deletion answered OK and the user's rows are gone"
  stop_and_check_exit "$name"
  podman logs "$name" 2>&1 | grep -q '"shutdown complete"' ||
    show_logs_and_die "$name" "no 'shutdown complete' log line"
}

# ------------------------------------------------------------- CHALLENGES_JSON
smoke_challenges_json() {
  local name="smoke-config-${RUN_ID}" grpc metrics user="config-${RUN_ID}" config
  grpc="$(free_port)"; metrics="$(free_port)"
  # one goal, unlike the baked file's eleven: the rows show which config was used
  config="$(printf '%s' '{"challenges":[{"challengeId":"from-env","name":"From the environment","goals":[{"goalId":"env-logins","eventSource":"login","type":"increment","requirement":{"targetValue":1000,"operator":">="}}]}]}' | base64 -w0)"
  log "serve: starting with the config in CHALLENGES_JSON (gRPC ${grpc})"
  podman run -d --name "$name" --network=host \
    -e AB_NAMESPACE=mygame -e DATABASE_URL=sqlite:////app/data/config.db \
    -e CHALLENGES_JSON="$config" -e GRPC_PORT="$grpc" -e METRICS_PORT="$metrics" \
    -e BUFFER_FLUSH_INTERVAL=100ms "$IMAGE" >/dev/null
  CONTAINERS+=("$name")
  wait_until "serve with CHALLENGES_JSON: liveness SERVING" podman healthcheck run "$name" ||
    show_logs_and_die "$name" "serve with CHALLENGES_JSON never became healthy"
  wait_until "serve with CHALLENGES_JSON: readiness SERVING" ready "$name" "$grpc" ||
    show_logs_and_die "$name" "serve with CHALLENGES_JSON never became ready"
  [[ "$(start_line_field "$name" config)" == CHALLENGES_JSON &&
    "$(start_line_field "$name" goals)" == 1 ]] ||
    show_logs_and_die "$name" "the start line does not show the one goal of CHALLENGES_JSON"
  local sent
  sent="$(in_container "$name" python -m app send --target "127.0.0.1:${grpc}" login --user "$user")"
  [[ "$sent" == OK* ]] || show_logs_and_die "$name" "login refused: ${sent}"
  progress_shows "$name" "$user" env-logins "1 +in_progress" ||
    show_logs_and_die "$name" "env-logins row of ${user} not found"
  # the table's two header lines, then one row: no goal of the baked file was moved
  [[ "$(in_container "$name" python -m app progress "$user" | tail -n +3 | wc -l)" == 1 ]] ||
    show_logs_and_die "$name" "rows of goals other than CHALLENGES_JSON's written for ${user}"
  log "ok: serve used CHALLENGES_JSON's config (one env-logins row, no goal of the baked file)"
  podman logs "$name" 2>&1 | grep -qF "$config" &&
    show_logs_and_die "$name" "CHALLENGES_JSON's value appears in the log"
  stop_and_check_exit "$name"
}

# ------------------------------------------------------------------- tracing
# (OpenTelemetry: its smoke steps go here, as their own function called from main)

# ------------------------------------------------------------------------ worker
kafka_answers() {
  local host="${KAFKA%%,*}"
  timeout 3 bash -c "exec 3<>/dev/tcp/${host%:*}/${host##*:}" 2>/dev/null
}

smoke_worker() {
  local name="smoke-worker-${RUN_ID}" metrics namespace="smoke${RUN_ID//-/}" user="kafka-${RUN_ID}"
  metrics="$(free_port)"
  log "worker: starting against Kafka ${KAFKA} (namespace ${namespace})"
  podman run -d --name "$name" --network=host \
    -e AB_NAMESPACE="$namespace" -e DATABASE_URL=sqlite:////app/data/worker.db \
    -e KAFKA_BOOTSTRAP_SERVERS="$KAFKA" \
    -e KAFKA_CONSUMER_GROUP="smoke-${RUN_ID}" -e METRICS_PORT="$metrics" \
    -e BUFFER_FLUSH_INTERVAL=100ms "$IMAGE" python -m app worker >/dev/null
  CONTAINERS+=("$name")
  wait_until "worker: consuming (challenge_event_handler_kafka_ready 1)" \
    bash -c "curl -fsS http://127.0.0.1:${metrics}/metrics | grep -q '^challenge_event_handler_kafka_ready 1.0'" ||
    show_logs_and_die "$name" "worker never became ready"
  check_non_root "$name"
  printf '%s\n' \
    "{\"id\":\"${RUN_ID}-1\",\"namespace\":\"${namespace}\",\"userId\":\"${user}\",\"payload\":{}}" \
    "{\"id\":\"${RUN_ID}-2\",\"payload\":{\"userId\":\"${user}\",\"namespace\":\"${namespace}\",\"statCode\":\"match_wins\",\"value\":2}}" |
    podman exec -i "$name" sh -c 'cat > /tmp/smoke-events.jsonl'
  in_container "$name" env AB_NAMESPACE="$namespace" python -m app produce /tmp/smoke-events.jsonl >&2
  wait_until "worker: rows read back (daily-login 1 completed, win-1 2 completed)" \
    bash -c "$(declare -f in_container progress_shows); progress_shows $name $user daily-login '1 +completed' && progress_shows $name $user win-1 '2 +completed'" ||
    show_logs_and_die "$name" "worker rows of ${user} never appeared"
  stop_and_check_exit "$name"
}

# ----------------------------------------------------------------------- tracing
zipkin_answers() { curl -fsS --max-time 3 "${ZIPKIN}/health" 2>/dev/null | grep -q '"UP"'; }

# exit 0 when Zipkin holds a trace of SERVICE with an OnMessage span and a flush span
# that is its child (the flush acknowledged that call)
ZIPKIN_TRACE_CHECK='
import json, sys, urllib.request
base, service = sys.argv[1], sys.argv[2]
url = f"{base}/api/v2/traces?serviceName={service}&limit=20"
with urllib.request.urlopen(url, timeout=5) as reply:
    traces = json.load(reply)
for spans in traces:
    calls = {s["id"] for s in spans if s.get("name", "").endswith("/onmessage")}
    if any(s.get("name") == "flush" and s.get("parentId") in calls for s in spans):
        sys.exit(0)
sys.exit(1)
'

smoke_tracing() {
  local name="smoke-tracing-${RUN_ID}" grpc metrics service="smoke-${RUN_ID}" sent
  grpc="$(free_port)"; metrics="$(free_port)"
  log "tracing: serve with OTEL_EXPORTER_ZIPKIN_ENDPOINT=${ZIPKIN}/api/v2/spans (service ${service})"
  podman run -d --name "$name" --network=host \
    -e AB_NAMESPACE=mygame -e DATABASE_URL=sqlite:////app/data/tracing.db \
    -e GRPC_PORT="$grpc" -e METRICS_PORT="$metrics" \
    -e BUFFER_FLUSH_INTERVAL=100ms -e OTEL_EXPORTER_ZIPKIN_ENDPOINT="${ZIPKIN}/api/v2/spans" \
    -e OTEL_SERVICE_NAME="$service" -e OTEL_BSP_SCHEDULE_DELAY=200 "$IMAGE" >/dev/null
  CONTAINERS+=("$name")
  wait_until "tracing: serve healthy" podman healthcheck run "$name" ||
    show_logs_and_die "$name" "traced serve never became healthy"
  sent="$(in_container "$name" python -m app send --target "127.0.0.1:${grpc}" login --user "$service")"
  [[ "$sent" == OK* ]] || show_logs_and_die "$name" "login refused: ${sent}"
  wait_until "tracing: OnMessage span and its flush span in Zipkin" \
    python3 -c "$ZIPKIN_TRACE_CHECK" "$ZIPKIN" "$service" ||
    show_logs_and_die "$name" "no trace of ${service} with an OnMessage and a flush span in ${ZIPKIN}"
  stop_and_check_exit "$name"
}

main() {
  local started=$SECONDS
  ensure_tools
  write_containers_conf
  ensure_base
  build_image
  smoke_image
  smoke_serve
  smoke_challenges_json
  # (tracing: its smoke step is called here)
  case "$KAFKA_SMOKE" in
    0) log "worker: skipped (IMAGE_SMOKE_KAFKA=0)" ;;
    1) smoke_worker ;;
    *) if kafka_answers; then smoke_worker; else log "worker: skipped (no broker on ${KAFKA})"; fi ;;
  esac
  case "$TRACING_SMOKE" in
    0) log "tracing: skipped (IMAGE_SMOKE_TRACING=0)" ;;
    1) smoke_tracing ;;
    *) if zipkin_answers; then smoke_tracing; else log "tracing: skipped (no Zipkin on ${ZIPKIN})"; fi ;;
  esac
  log "passed in $((SECONDS - started))s"
}

main "$@"
