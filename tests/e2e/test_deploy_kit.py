"""The operator's kit under deploy/: every metric the Grafana dashboard and the alert rules
use is exported by a running `serve` or `worker` (scraped, not assumed), and the rules
pass `promtool check rules`."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.deploy_kit import RULES, used_metrics
from tests.helpers.grpc import SERVING, Server, server_env, write_config
from tests.helpers.kafka import (
    Record,
    Worker,
    create_topics,
    login_json,
    login_topic,
    new_namespace,
    produce,
    wait_for,
)
from tests.helpers.kafka import write_config as write_kafka_config
from tests.helpers.process import samples, scrape

# Metrics the kit already charts that another branch adds right now; remove each entry
# once that branch is merged (the test then proves the real metric exists).
PENDING_METRICS: set[str] = set()  # metrics the kit may use before the service has them


def exported(body: str) -> set[str]:
    """Sample names a scrape can return, from its `# TYPE` lines (labelled metrics have
    a TYPE line before their first child exists)."""
    names: set[str] = set()
    for line in body.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(" ", 3)
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


@pytest.mark.postgres
@pytest.mark.kafka
async def test_every_metric_of_the_kit_exists_on_a_running_serve_and_worker(
    pg_url, kafka_bootstrap, tmp_path
):
    server = Server(
        server_env(f"sqlite:///{tmp_path / 'kit.db'}", write_config(tmp_path)),
        tmp_path / "serve.log",
    ).start()
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns)
    kafka_dir = tmp_path / "kafka"
    kafka_dir.mkdir()
    worker = Worker(
        pg_url, kafka_bootstrap, ns, write_kafka_config(kafka_dir), tmp_path / "worker.log"
    ).start()
    try:
        await server.wait_health(SERVING)
        await worker.wait_ready()
        available = exported(await server.metrics())
        available |= exported(await asyncio.to_thread(scrape, worker.port))
    finally:
        server.stop_quietly()
        worker.stop_quietly()
    used = used_metrics()
    assert len(used) >= 15, sorted(used)
    missing = used - available - PENDING_METRICS
    assert not missing, f"the kit uses metrics nobody exports: {sorted(missing)}"
    assert used >= PENDING_METRICS, "an allow-listed metric is no longer used: drop it"


def promtool() -> str | None:
    for candidate in (
        os.environ.get("PROMTOOL"),
        shutil.which("promtool"),
        str(Path(os.environ.get("GOBIN") or Path.home() / "go" / "bin") / "promtool"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.mark.skipif(
    promtool() is None,
    reason="promtool not installed (.ci/run builds it with `go install` and runs "
    "`promtool check rules` itself)",
)
def test_rules_pass_promtool(tmp_path):
    tool = promtool()
    assert tool is not None
    done = subprocess.run(
        [tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout + done.stderr
    # and it does catch a broken expression
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("> 5000", "> > 5000"))
    refused = subprocess.run(
        [tool, "check", "rules", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0


@pytest.mark.postgres
@pytest.mark.kafka
async def test_kafka_consumer_lag_shows_records_not_yet_committed(
    pg_url, kafka_bootstrap, tmp_path
):
    """Records wait in the buffer for a long flush interval: the repartition topic shows
    lag; once the flush committed and Faust committed the offsets, lag returns to 0."""
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns)
    worker = Worker(
        pg_url,
        kafka_bootstrap,
        ns,
        write_kafka_config(tmp_path),
        tmp_path / "worker.log",
        BUFFER_FLUSH_INTERVAL="12s",
    ).start()

    async def lag(kind: str) -> float | None:
        try:
            body = await asyncio.to_thread(scrape, worker.port)
        except OSError:
            return None
        values = [
            value
            for name, labels, value in samples(body)
            if name == "challenge_event_handler_kafka_consumer_lag" and kind in labels
        ]
        return sum(values) if values else None

    try:
        await worker.wait_ready()
        await produce(
            kafka_bootstrap,
            [Record(login_topic(ns), login_json(ns, f"lag-{i}", None)) for i in range(20)],
        )
        seen = await wait_for(
            lambda: _positive(lag("events-by-user")), 30, "lag on the repartition topic"
        )
        assert 0 < seen <= 20
        await wait_for(lambda: _zero(lag("events-by-user")), 60, "lag back to 0")
        assert await lag(login_topic(ns)) == 0
    finally:
        worker.stop_quietly()


async def _positive(value) -> float | None:
    found = await value
    return found if found else None


async def _zero(value) -> bool:
    return await value == 0
