# Challenge event handler — the AccelByte Extend event handler image (gRPC bridge mode).
#   make image   (= podman/docker build --format docker -t challenge-event-handler .;
#                 --format docker keeps the HEALTHCHECK)
#   docker run -e AB_NAMESPACE=mygame -e DATABASE_URL=postgresql://... -p 6565:6565 -p 8080:8080 \
#     challenge-event-handler
# `serve` needs a database: without DATABASE_URL / DB_HOST it exits 2 (it never writes to
# a file inside the container). The challenge config is CHALLENGES_JSON (the JSON, or base64
# of it: Extend apps take variables and secrets, not files), else the file baked at
# /app/config/challenges.json (CONFIG_PATH). The same image runs the Kafka worker or a replay
# with a different command (python -m app worker / replay ...). docs/deploy.md has the rest.

# ---- stage 1: generate the gRPC code (grpcio-tools is a build tool, not shipped) ----
FROM python:3.11-slim AS protos

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml ./
# the pins of pyproject.toml for protoc (the `proto` extra) and for importing its output
RUN python -c "import tomllib; p=tomllib.load(open('pyproject.toml','rb'))['project']; d=[x for x in p['dependencies'] if x.split('==')[0] in ('grpcio','protobuf')]; print('\n'.join(d+p['optional-dependencies']['proto']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY proto/ proto/
COPY scripts/gen_protos.py scripts/
RUN python scripts/gen_protos.py

# ---- stage 2: the runtime image ----
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (cached while only the source changes): the pinned run-time
# requirements of pyproject.toml (grpcio-tools is not one of them: only stage 1 runs protoc).
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The app runs from this source tree (Alembic reads migrations/ and alembic.ini here).
COPY . .
COPY --from=protos /src/proto/gen proto/gen
# Prove the generated code imports without grpcio-tools, and fail the build early when
# the baked config is invalid.
RUN python -c "import importlib.util, sys; from proto.build import load; load(); sys.exit(importlib.util.find_spec('grpc_tools') is not None)" \
    && python -m app config check /app/config/challenges.json

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /app/data \
    && chown app /app/data
USER app

ENV CONFIG_PATH=/app/config/challenges.json \
    GRPC_PORT=6565 \
    METRICS_PORT=8080 \
    LOG_FORMAT=json

# 6565: gRPC (Extend event bridge, health, reflection); 8080: Prometheus /metrics
EXPOSE 6565 8080

# Liveness: the overall gRPC health status (service name ""), SERVING while the process
# serves calls, whatever the database does; NOT_SERVING (or no answer) once it drains.
# Readiness is the event services' names (database reachable, writes not stuck): a
# platform takes a replica out of traffic on it, never restarts it (docs/deploy.md).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import grpc,os,sys;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;c=grpc.insecure_channel('127.0.0.1:'+os.environ.get('GRPC_PORT','6565'));sys.exit(0 if g.HealthStub(c).Check(h.HealthCheckRequest(service=''),timeout=2).status==h.HealthCheckResponse.SERVING else 1)"]

STOPSIGNAL SIGTERM
CMD ["python", "-m", "app", "serve"]
