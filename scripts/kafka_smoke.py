#!/usr/bin/env python3
"""Kafka smoke test: create a topic, produce one record, consume it back.

Usage: .venv/bin/python scripts/kafka_smoke.py [bootstrap]   (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)
Prints OK and exits 0 on success; prints the error and exits 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid


async def smoke(bootstrap: str, consume_secs: float = 30.0) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"smoke-{uuid.uuid4().hex[:12]}"
    payload = f"hello-{uuid.uuid4().hex}".encode()

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=topic, num_partitions=1, replication_factor=1)])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            md = await producer.send_and_wait(topic, payload, key=b"k")
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"{topic}-group",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            deadline = time.monotonic() + consume_secs
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"record not consumed back from {topic} within {consume_secs}s"
                    )
                batches = await consumer.getmany(timeout_ms=int(min(left, 1.0) * 1000))
                recs = [r for rs in batches.values() for r in rs]
                if any(r.value == payload for r in recs):
                    await consumer.commit()
                    break
        finally:
            await consumer.stop()
        print(
            f"produced/consumed 1 record on {topic} (partition {md.partition}, offset {md.offset})"
        )
    finally:
        with contextlib.suppress(Exception):  # best effort cleanup
            await admin.delete_topics([topic])
        await admin.close()


def main() -> int:
    bootstrap = (
        sys.argv[1]
        if len(sys.argv) > 1
        else os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    t0 = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(smoke(bootstrap), timeout=60))
    except BaseException as exc:  # noqa: BLE001 - report anything
        print(f"FAIL: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"OK ({time.monotonic() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
