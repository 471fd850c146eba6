#!/usr/bin/env bash
# Real backing services for local development, tests and CI, without Docker:
#   - PostgreSQL 15: our own cluster in ${SERVICES_DIR}/pg (not the Debian default one)
#   - Kafka 4.3.1: single-node KRaft (broker+controller), jars from Maven Central
#   - Zipkin 3.6.1: the trace receiver (in-memory storage), its exec jar from Maven Central
#
# Usage:
#   scripts/services.sh up [pg|kafka|zipkin]      start (idempotent; no-op if already up)
#   scripts/services.sh down [pg|kafka|zipkin]    stop (idempotent)
#   scripts/services.sh start pg|kafka|zipkin     same as up, for one service
#   scripts/services.sh stop pg|kafka|zipkin      same as down, for one service
#   scripts/services.sh restart pg|kafka|zipkin
#   scripts/services.sh status [pg|kafka|zipkin]  exit 0 if (all requested) up, else 1
#   scripts/services.sh env                 print DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS
#
# Environment knobs (all optional):
#   SERVICES_DIR (default $HOME/.cache/challenge-services), PG_PORT (5432),
#   KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_HEAP (512m),
#   PG_WAIT (60), KAFKA_WAIT (90) seconds, KAFKA_STOP_TIMEOUT (30) seconds,
#   ZIPKIN_PORT (9411), ZIPKIN_HEAP (384m), ZIPKIN_MAX_SPANS (200000), ZIPKIN_WAIT (90).
# Progress goes to stderr; `up` prints the two connection lines on stdout (Zipkin, when
# up, is http://127.0.0.1:${ZIPKIN_PORT}; spans go to /api/v2/spans).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVICES_DIR="${SERVICES_DIR:-${HOME:-/root}/.cache/challenge-services}"
PG_PORT="${PG_PORT:-5432}"
PG_VERSION=15
PG_BIN="${PG_BIN:-/usr/lib/postgresql/${PG_VERSION}/bin}"
PG_DIR="${SERVICES_DIR}/pg"
PG_DATA="${PG_DIR}/data"
PG_LOG="${PG_DIR}/postgres.log"
PG_WAIT="${PG_WAIT:-60}"
PG_USER=postgres
PG_PASSWORD=postgres
PG_DATABASES=(challenge_db challenge_test)

KAFKA_VERSION=4.3.1
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
KAFKA_WAIT="${KAFKA_WAIT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_DIR="${SERVICES_DIR}/kafka"
KAFKA_LIBS="${KAFKA_DIR}/libs"
KAFKA_POM="${SCRIPT_DIR}/kafka-pom.xml"
KAFKA_MARKER="${KAFKA_LIBS}/.complete"
KAFKA_DATA="${KAFKA_DIR}/data"
KAFKA_CONF="${KAFKA_DIR}/config"
KAFKA_LOGS="${KAFKA_DIR}/logs"
KAFKA_PID="${KAFKA_DIR}/kafka.pid"
KAFKA_OUT="${KAFKA_LOGS}/kafka.out"

ZIPKIN_VERSION=3.6.1
ZIPKIN_PORT="${ZIPKIN_PORT:-9411}"
ZIPKIN_HEAP="${ZIPKIN_HEAP:-384m}"
ZIPKIN_MAX_SPANS="${ZIPKIN_MAX_SPANS:-20000}"  # in memory: more outgrows the heap under a tracing bench
ZIPKIN_WAIT="${ZIPKIN_WAIT:-90}"
ZIPKIN_STOP_TIMEOUT=20
ZIPKIN_DIR="${SERVICES_DIR}/zipkin"
ZIPKIN_JAR="${ZIPKIN_DIR}/zipkin-server-${ZIPKIN_VERSION}-exec.jar"
ZIPKIN_PID="${ZIPKIN_DIR}/zipkin.pid"
ZIPKIN_OUT="${ZIPKIN_DIR}/zipkin.out"

IS_ROOT=0
[[ "$(id -u)" == 0 ]] && IS_ROOT=1

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  # prefer the system interpreter (fast start, no shims); the probe is stdlib-only
  if [[ -x /usr/bin/python3 ]]; then PYTHON=/usr/bin/python3
  elif command -v python3 >/dev/null 2>&1; then PYTHON=python3
  else PYTHON=""; fi
fi

# ---------------------------------------------------------------- apt helpers
APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not available; please install: $*"
  local sudo=()
  if [[ $IS_ROOT == 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: $*"
    sudo=(sudo -n)
  fi
  if [[ $APT_UPDATED == 0 ]]; then
    log "apt-get update"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 </dev/null
    APT_UPDATED=1
  fi
  log "apt-get install -y $*"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2 </dev/null
}

# run a command as the OS user that owns the postgres cluster
as_pg() {
  if [[ $IS_ROOT == 1 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# ================================================================ PostgreSQL
pg_ensure_installed() {
  [[ -x "${PG_BIN}/postgres" ]] && return 0
  log "PostgreSQL ${PG_VERSION} not found at ${PG_BIN}; installing"
  # Do not let the Debian package create/start its own 'main' cluster on 5432.
  if [[ $IS_ROOT == 1 && ! -e /etc/postgresql-common/createcluster.d/challenge.conf ]]; then
    mkdir -p /etc/postgresql-common/createcluster.d
    echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/challenge.conf
  fi
  apt_install "postgresql-${PG_VERSION}" "postgresql-client-${PG_VERSION}" ||
    apt_install postgresql
  [[ -x "${PG_BIN}/postgres" ]] || die "PostgreSQL install did not provide ${PG_BIN}/postgres"
}

# The postgres OS user must be able to traverse down to PG_DIR (e.g. /root is 0700).
pg_fix_traverse() {
  [[ $IS_ROOT == 1 ]] || return 0
  local d
  d="$(dirname "$PG_DIR")"
  while [[ "$d" != "/" ]]; do
    if ! runuser -u postgres -- test -x "$d" 2>/dev/null; then
      log "granting search (o+x) permission on $d so the postgres user can reach ${PG_DIR}"
      chmod o+x "$d"
    fi
    d="$(dirname "$d")"
  done
}

pg_socket_dir() {
  local s="${PG_DIR}/run"
  # unix socket paths are limited to ~107 bytes
  if (( ${#s} > 80 )); then s=/tmp; fi
  printf '%s' "$s"
}

pg_psql() {  # pg_psql DB args...
  local db="$1"; shift
  PGPASSWORD="$PG_PASSWORD" PGCONNECT_TIMEOUT=3 "${PG_BIN}/psql" -X -w -q -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$db" "$@" </dev/null
}

pg_is_ours_running() {
  [[ -f "${PG_DATA}/PG_VERSION" ]] || return 1
  local pid; pid="$(head -n 1 "${PG_DATA}/postmaster.pid" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  # A killed postmaster can linger as a zombie (kill -0 still succeeds, so pg_ctl and the
  # server's own lock-file check think it runs): require a live postgres process.
  [[ "$(awk '{print $3}' "/proc/${pid}/stat" 2>/dev/null)" =~ ^[^Z]$ ]] || return 1
  [[ "$(cat "/proc/${pid}/comm" 2>/dev/null)" == postgres ]] || return 1
  as_pg "${PG_BIN}/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

pg_clear_stale_lock() {  # only called when pg_is_ours_running said no
  local stale
  for stale in "${PG_DATA}/postmaster.pid" "${PG_DIR}/run/.s.PGSQL.${PG_PORT}.lock" \
      "${PG_DIR}/run/.s.PGSQL.${PG_PORT}"; do
    if [[ -e "$stale" ]]; then
      log "removing ${stale} left by a killed server"
      rm -f "$stale"
    fi
  done
}

pg_answers() {
  "${PG_BIN}/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 >/dev/null 2>&1 &&
    pg_psql postgres -tAc 'select 1' >/dev/null 2>&1
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") >/dev/null 2>&1
}

pg_init() {
  [[ -f "${PG_DATA}/PG_VERSION" ]] && return 0
  log "initdb ${PG_DATA}"
  rm -rf "$PG_DATA"
  mkdir -p "$PG_DIR"
  local pwfile="${PG_DIR}/.pwfile"
  printf '%s\n' "$PG_PASSWORD" > "$pwfile"
  [[ $IS_ROOT == 1 ]] && chown -R postgres:postgres "$PG_DIR"
  chmod 700 "$PG_DIR"
  as_pg "${PG_BIN}/initdb" -D "$PG_DATA" -U "$PG_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"${PG_DIR}/initdb.log" 2>&1 </dev/null ||
    { cat "${PG_DIR}/initdb.log" >&2; rm -f "$pwfile"; die "initdb failed"; }
  rm -f "$pwfile"
}

pg_write_conf() {
  local sock; sock="$(pg_socket_dir)"
  mkdir -p "$sock" 2>/dev/null || true
  if [[ $IS_ROOT == 1 && "$sock" != /tmp ]]; then chown postgres:postgres "$sock"; fi
  # included last by postgresql.conf -> our values win; rewritten on every start
  local conf="${PG_DATA}/challenge.conf"
  cat > "$conf" <<EOF
# managed by scripts/services.sh -- rewritten on every start
listen_addresses = '127.0.0.1'
port = ${PG_PORT}
unix_socket_directories = '${sock}'
max_connections = 200
shared_buffers = 128MB
fsync = on
synchronous_commit = on
password_encryption = 'scram-sha-256'
log_destination = 'stderr'
logging_collector = off
log_min_messages = warning
log_line_prefix = '%m [%p] '
timezone = 'UTC'
EOF
  grep -q "^include_if_exists = 'challenge.conf'" "${PG_DATA}/postgresql.conf" ||
    echo "include_if_exists = 'challenge.conf'" >> "${PG_DATA}/postgresql.conf"
  [[ $IS_ROOT == 1 ]] && chown postgres:postgres "$conf" "${PG_DATA}/postgresql.conf"
  return 0
}

pg_create_dbs() {
  local db
  for db in "${PG_DATABASES[@]}"; do
    if [[ "$(pg_psql postgres -tAc "select 1 from pg_database where datname='${db}'")" != 1 ]]; then
      log "creating database ${db}"
      pg_psql postgres -c "create database \"${db}\"" >/dev/null
    fi
  done
}

pg_wait_ready() {
  local deadline=$((SECONDS + PG_WAIT))
  until pg_answers; do
    if (( SECONDS >= deadline )); then
      tail -n 30 "$PG_LOG" >&2 2>/dev/null || true
      die "PostgreSQL did not become ready within ${PG_WAIT}s (log: ${PG_LOG})"
    fi
    sleep 0.3
  done
}

pg_up() {
  if pg_is_ours_running; then
    pg_wait_ready
    pg_create_dbs
    log "postgres: already running (${PG_DATA}, port ${PG_PORT})"
    return 0
  fi
  if port_in_use "$PG_PORT"; then
    # Someone else (e.g. a CI service container) listens there. Accept it if it
    # takes our credentials, otherwise refuse.
    pg_ensure_installed
    if pg_answers; then
      pg_create_dbs
      log "postgres: using the existing server on 127.0.0.1:${PG_PORT} (not managed by this script)"
      return 0
    fi
    die "port ${PG_PORT} is in use by something that is not our cluster and does not accept postgres/postgres (Debian's default cluster? try 'pg_ctlcluster ${PG_VERSION} main stop' or set PG_PORT)"
  fi
  pg_ensure_installed
  mkdir -p "$SERVICES_DIR"
  pg_fix_traverse
  pg_init
  pg_write_conf
  pg_clear_stale_lock
  log "starting postgres on 127.0.0.1:${PG_PORT}"
  [[ $IS_ROOT == 1 ]] && { touch "$PG_LOG"; chown postgres:postgres "$PG_LOG"; }
  # setsid: survive the caller's process group being killed; 9>&-: do not inherit our lock
  if ! as_pg setsid -w "${PG_BIN}/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$PG_WAIT" \
      >/dev/null 2>&1 </dev/null 9>&-; then
    tail -n 30 "$PG_LOG" >&2 2>/dev/null || true
    die "pg_ctl start failed (log: ${PG_LOG})"
  fi
  pg_wait_ready
  pg_create_dbs
  log "postgres: up"
}

pg_down() {
  if [[ -x "${PG_BIN}/pg_ctl" ]] && pg_is_ours_running; then
    log "stopping postgres"
    as_pg "${PG_BIN}/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null 2>&1 </dev/null ||
      die "pg_ctl stop failed (log: ${PG_LOG})"
    log "postgres: stopped"
  else
    log "postgres: not running"
  fi
}

pg_status() {
  if [[ -x "${PG_BIN}/pg_isready" ]] && pg_answers; then
    if pg_is_ours_running; then echo "postgres: up (127.0.0.1:${PG_PORT}, ${PG_DATA})"
    else echo "postgres: up (127.0.0.1:${PG_PORT}, external server)"; fi
    return 0
  fi
  echo "postgres: down"
  return 1
}

# ===================================================================== Kafka
# stdlib-only readiness probe: a Metadata v4 request must list >= 1 live broker
# (i.e. the KRaft broker registered and got unfenced).
KAFKA_PROBE='
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((host, port), timeout=2)
    s.settimeout(3)
    cid = b"services-probe"
    # header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id
    # body v4: topics = [] (none), allow_auto_topic_creation = false
    body = struct.pack(">hhih", 3, 4, 42, len(cid)) + cid + struct.pack(">ib", 0, 0)
    s.sendall(struct.pack(">i", len(body)) + body)
    def rd(n):
        b = b""
        while len(b) < n:
            c = s.recv(n - len(b))
            if not c:
                raise EOFError("connection closed")
            b += c
        return b
    size = struct.unpack(">i", rd(4))[0]
    resp = rd(size)
    corr, _throttle, nbrokers = struct.unpack(">iii", resp[:12])
    sys.exit(0 if corr == 42 and nbrokers >= 1 else 1)
except Exception:
    sys.exit(1)
'

kafka_answers() {
  if [[ -n "$PYTHON" ]]; then
    "$PYTHON" -c "$KAFKA_PROBE" 127.0.0.1 "$KAFKA_PORT" </dev/null >/dev/null 2>&1
  else
    port_in_use "$KAFKA_PORT"
  fi
}

kafka_pid() {  # prints pid of our running broker, or fails
  [[ -f "$KAFKA_PID" ]] || return 1
  local pid; pid="$(cat "$KAFKA_PID" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  local cmdline; cmdline="$(tr '\0' ' ' < "/proc/${pid}/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *kafka.Kafka* ]] || return 1
  printf '%s' "$pid"
}

kafka_ensure_tools() {
  if ! command -v java >/dev/null 2>&1; then
    apt_install openjdk-17-jre-headless
  fi
}

kafka_ensure_libs() {
  local want; want="$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
  if [[ -f "$KAFKA_MARKER" && "$(cat "$KAFKA_MARKER")" == "$want" ]]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || apt_install maven
  log "downloading Kafka ${KAFKA_VERSION} jars with Maven into ${KAFKA_LIBS} (one-off)"
  local tmp="${KAFKA_DIR}/libs.tmp"
  rm -rf "$tmp"
  mkdir -p "$KAFKA_DIR"
  if ! mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime </dev/null >"${KAFKA_DIR}/mvn.log" 2>&1; then
    tail -n 40 "${KAFKA_DIR}/mvn.log" >&2
    die "mvn dependency:copy-dependencies failed (log: ${KAFKA_DIR}/mvn.log)"
  fi
  [[ -f "${tmp}/kafka_2.13-${KAFKA_VERSION}.jar" ]] || die "Maven did not produce kafka_2.13-${KAFKA_VERSION}.jar"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
  echo "$want" > "$KAFKA_MARKER"
  log "kafka jars: $(find "$KAFKA_LIBS" -name "*.jar" | wc -l) files, $(du -sh "$KAFKA_LIBS" | cut -f1)"
}

kafka_write_conf() {
  mkdir -p "$KAFKA_CONF" "$KAFKA_LOGS" "$KAFKA_DATA"
  cat > "${KAFKA_CONF}/server.properties" <<EOF
# managed by scripts/services.sh -- rewritten on every start
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${KAFKA_CONTROLLER_PORT}
listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT},CONTROLLER://127.0.0.1:${KAFKA_CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=${KAFKA_DATA}
metadata.log.dir=${KAFKA_DATA}
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
log.segment.bytes=104857600
EOF
  cat > "${KAFKA_CONF}/log4j2.properties" <<EOF
# managed by scripts/services.sh
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${KAFKA_LOGS}/server.log
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF
}

kafka_java() {  # run a kafka main class in the foreground
  java -Xmx256m -Dlog4j2.configurationFile="${KAFKA_CONF}/log4j2.properties" \
    -cp "${KAFKA_LIBS}/*" "$@" </dev/null
}

kafka_format() {
  [[ -f "${KAFKA_DATA}/meta.properties" ]] && return 0
  local cid_file="${KAFKA_DIR}/cluster-id" cid
  if [[ ! -s "$cid_file" ]]; then
    kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 > "${cid_file}.tmp"
    mv "${cid_file}.tmp" "$cid_file"
  fi
  cid="$(cat "$cid_file")"
  [[ "$cid" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "bad Kafka cluster id '${cid}' in ${cid_file}"
  log "formatting Kafka storage (cluster id ${cid})"
  kafka_java kafka.tools.StorageTool format -t "$cid" -c "${KAFKA_CONF}/server.properties" \
    --ignore-formatted >"${KAFKA_LOGS}/format.log" 2>&1 ||
    { cat "${KAFKA_LOGS}/format.log" >&2; die "kafka storage format failed"; }
}

kafka_up() {
  local pid
  if pid="$(kafka_pid)"; then
    kafka_wait_ready "$pid"
    log "kafka: already running (pid ${pid}, 127.0.0.1:${KAFKA_PORT})"
    return 0
  fi
  if port_in_use "$KAFKA_PORT"; then
    if kafka_answers; then
      log "kafka: using the existing broker on 127.0.0.1:${KAFKA_PORT} (not managed by this script)"
      return 0
    fi
    die "port ${KAFKA_PORT} is in use by something that is not our Kafka broker (set KAFKA_PORT?)"
  fi
  kafka_ensure_tools
  kafka_ensure_libs
  kafka_write_conf
  kafka_format
  log "starting kafka ${KAFKA_VERSION} (KRaft) on 127.0.0.1:${KAFKA_PORT}"
  # setsid+nohup: keep running after this script / its process group is gone
  # 9>&-: do not inherit our lock fd
  setsid nohup java -Xms128m -Xmx"${KAFKA_HEAP}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="${KAFKA_CONF}/log4j2.properties" \
    -Dkafka.logs.dir="${KAFKA_LOGS}" \
    -cp "${KAFKA_LIBS}/*" kafka.Kafka "${KAFKA_CONF}/server.properties" \
    </dev/null >>"$KAFKA_OUT" 2>&1 9>&- &
  pid=$!
  echo "$pid" > "$KAFKA_PID"
  kafka_wait_ready "$pid"
  log "kafka: up (pid ${pid})"
}

kafka_wait_ready() {
  local pid="$1" deadline=$((SECONDS + KAFKA_WAIT))
  until kafka_answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$KAFKA_OUT" "${KAFKA_LOGS}/server.log" >&2 2>/dev/null || true
      die "kafka exited during startup (logs: ${KAFKA_LOGS})"
    fi
    if (( SECONDS >= deadline )); then
      tail -n 30 "${KAFKA_LOGS}/server.log" >&2 2>/dev/null || true
      die "kafka did not become ready within ${KAFKA_WAIT}s (logs: ${KAFKA_LOGS})"
    fi
    sleep 0.3
  done
}

# stop_process NAME PID PID_FILE TIMEOUT: SIGTERM, then SIGKILL after TIMEOUT seconds
stop_process() {
  local name="$1" pid="$2" pid_file="$3" timeout="$4"
  log "stopping ${name} (pid ${pid})"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + timeout))
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS >= deadline )); then
      log "${name} did not stop within ${timeout}s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  rm -f "$pid_file"
  log "${name}: stopped"
}

kafka_down() {
  local pid
  if ! pid="$(kafka_pid)"; then
    rm -f "$KAFKA_PID"
    log "kafka: not running"
    return 0
  fi
  stop_process kafka "$pid" "$KAFKA_PID" "$KAFKA_STOP_TIMEOUT"
}

kafka_status() {
  local pid
  if kafka_answers; then
    if pid="$(kafka_pid)"; then echo "kafka: up (127.0.0.1:${KAFKA_PORT}, pid ${pid})"
    else echo "kafka: up (127.0.0.1:${KAFKA_PORT}, external broker)"; fi
    return 0
  fi
  if pid="$(kafka_pid)"; then echo "kafka: starting/not answering (pid ${pid})"
  else echo "kafka: down"; fi
  return 1
}

# ==================================================================== Zipkin
# The trace receiver of docs/tracing.md: Zipkin's own server, one exec jar (Java 17),
# spans kept in memory (the newest ZIPKIN_MAX_SPANS), listening on 127.0.0.1 only.
ZIPKIN_PROBE='
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as reply:
        sys.exit(0 if json.load(reply).get("status") == "UP" else 1)
except Exception:
    sys.exit(1)
'

zipkin_answers() {
  if [[ -n "$PYTHON" ]]; then
    "$PYTHON" -c "$ZIPKIN_PROBE" "http://127.0.0.1:${ZIPKIN_PORT}/health" </dev/null >/dev/null 2>&1
  else
    port_in_use "$ZIPKIN_PORT"
  fi
}

zipkin_pid() {  # prints pid of our running Zipkin, or fails
  [[ -f "$ZIPKIN_PID" ]] || return 1
  local pid; pid="$(cat "$ZIPKIN_PID" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  local cmdline; cmdline="$(tr '\0' ' ' < "/proc/${pid}/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *zipkin-server-* ]] || return 1
  printf '%s' "$pid"
}

zipkin_ensure_jar() {  # downloaded once, with Maven (checksums checked), into the cache
  [[ -s "$ZIPKIN_JAR" ]] && return 0
  command -v mvn >/dev/null 2>&1 || apt_install maven
  log "downloading zipkin-server ${ZIPKIN_VERSION} (exec jar, ~135 MB) with Maven into ${ZIPKIN_DIR} (one-off)"
  local tmp="${ZIPKIN_DIR}/jar.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! (cd "$tmp" && mvn -q -B dependency:copy \
        -Dartifact="io.zipkin:zipkin-server:${ZIPKIN_VERSION}:jar:exec" \
        -DoutputDirectory="$tmp" </dev/null >"${ZIPKIN_DIR}/mvn.log" 2>&1); then
    tail -n 40 "${ZIPKIN_DIR}/mvn.log" >&2
    die "mvn dependency:copy of zipkin-server failed (log: ${ZIPKIN_DIR}/mvn.log)"
  fi
  [[ -s "${tmp}/zipkin-server-${ZIPKIN_VERSION}-exec.jar" ]] || die "Maven did not produce the zipkin-server exec jar"
  mv "${tmp}/zipkin-server-${ZIPKIN_VERSION}-exec.jar" "$ZIPKIN_JAR"
  rm -rf "$tmp"
}

zipkin_up() {
  local pid
  if pid="$(zipkin_pid)"; then
    zipkin_wait_ready "$pid"
    log "zipkin: already running (pid ${pid}, http://127.0.0.1:${ZIPKIN_PORT})"
    return 0
  fi
  if port_in_use "$ZIPKIN_PORT"; then
    if zipkin_answers; then
      log "zipkin: using the existing server on 127.0.0.1:${ZIPKIN_PORT} (not managed by this script)"
      return 0
    fi
    die "port ${ZIPKIN_PORT} is in use by something that is not a Zipkin server (set ZIPKIN_PORT?)"
  fi
  kafka_ensure_tools  # Java 17
  mkdir -p "$ZIPKIN_DIR"
  zipkin_ensure_jar
  log "starting zipkin ${ZIPKIN_VERSION} on 127.0.0.1:${ZIPKIN_PORT} (in-memory, ${ZIPKIN_MAX_SPANS} spans)"
  # setsid+nohup: keep running after this script; 9>&-: do not inherit our lock
  STORAGE_TYPE=mem MEM_MAX_SPANS="$ZIPKIN_MAX_SPANS" QUERY_PORT="$ZIPKIN_PORT" \
    setsid nohup java -Xms64m -Xmx"${ZIPKIN_HEAP}" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Djava.awt.headless=true -jar "$ZIPKIN_JAR" \
    "--armeria.ports[0].ip=127.0.0.1" "--armeria.ports[0].port=${ZIPKIN_PORT}" \
    "--armeria.ports[0].protocols[0]=http" \
    </dev/null >>"$ZIPKIN_OUT" 2>&1 9>&- &
  pid=$!
  echo "$pid" > "$ZIPKIN_PID"
  zipkin_wait_ready "$pid"
  log "zipkin: up (pid ${pid})"
}

zipkin_wait_ready() {
  local pid="$1" deadline=$((SECONDS + ZIPKIN_WAIT))
  until zipkin_answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$ZIPKIN_OUT" >&2 2>/dev/null || true
      die "zipkin exited during startup (log: ${ZIPKIN_OUT})"
    fi
    if (( SECONDS >= deadline )); then
      tail -n 30 "$ZIPKIN_OUT" >&2 2>/dev/null || true
      die "zipkin did not answer /health within ${ZIPKIN_WAIT}s (log: ${ZIPKIN_OUT})"
    fi
    sleep 0.3
  done
}

zipkin_down() {
  local pid
  if ! pid="$(zipkin_pid)"; then
    rm -f "$ZIPKIN_PID"
    log "zipkin: not running"
    return 0
  fi
  stop_process zipkin "$pid" "$ZIPKIN_PID" "$ZIPKIN_STOP_TIMEOUT"
}

zipkin_status() {
  local pid
  if zipkin_answers; then
    if pid="$(zipkin_pid)"; then echo "zipkin: up (http://127.0.0.1:${ZIPKIN_PORT}, pid ${pid})"
    else echo "zipkin: up (http://127.0.0.1:${ZIPKIN_PORT}, external server)"; fi
    return 0
  fi
  if pid="$(zipkin_pid)"; then echo "zipkin: starting/not answering (pid ${pid})"
  else echo "zipkin: down"; fi
  return 1
}

# ====================================================================== main
print_env() {
  echo "DATABASE_URL=postgresql://${PG_USER}:${PG_PASSWORD}@127.0.0.1:${PG_PORT}/challenge_db"
  echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${KAFKA_PORT}"
}

with_lock() {
  mkdir -p "$SERVICES_DIR"
  exec 9>"${SERVICES_DIR}/.lock"
  flock -w 600 9 || die "could not lock ${SERVICES_DIR}/.lock"
}

usage() {
  sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

which_services() {  # which_services [pg|kafka|zipkin|postgres|all]
  case "${1:-all}" in
    pg|postgres|postgresql) echo pg ;;
    kafka) echo kafka ;;
    zipkin) echo zipkin ;;
    all|"") echo "pg kafka zipkin" ;;
    *) die "unknown service '$1' (pg|kafka|zipkin)" ;;
  esac
}

main() {
  local cmd="${1:-}"; shift || true
  local svc s rc=0
  case "$cmd" in
    up|start)
      [[ "$cmd" == start && -z "${1:-}" ]] && usage
      svc="$(which_services "${1:-all}")"
      with_lock
      local t0=$SECONDS
      for s in $svc; do "${s}_up"; done
      log "done in $((SECONDS - t0))s"
      if [[ "$cmd" == up ]]; then print_env; fi
      ;;
    down|stop)
      [[ "$cmd" == stop && -z "${1:-}" ]] && usage
      svc="$(which_services "${1:-all}")"
      with_lock
      # stop kafka before postgres for a full 'down'
      for s in zipkin kafka pg; do
        if [[ " $svc " == *" $s "* ]]; then "${s}_down"; fi
      done
      ;;
    restart)
      [[ -z "${1:-}" ]] && usage
      svc="$(which_services "$1")"
      with_lock
      for s in $svc; do "${s}_down"; "${s}_up"; done
      ;;
    status)
      svc="$(which_services "${1:-all}")"
      for s in $svc; do "${s}_status" || rc=1; done
      return $rc
      ;;
    env) print_env ;;
    *) usage ;;
  esac
}

main "$@"
