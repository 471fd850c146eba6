"""The real services the other tests stand on: PostgreSQL answers, Kafka round-trips."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import text


async def test_postgres_is_15_or_newer(pg_engine):
    async with pg_engine.connect() as conn:
        version = await conn.scalar(text("SHOW server_version_num"))
    assert int(version) >= 150000


async def test_kafka_broker_round_trip(kafka_bootstrap):
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b'{"hello":"kafka"}', key=b"u1")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            record = await consumer.getone()
        finally:
            await consumer.stop()
        assert (record.key, record.value) == (b"u1", b'{"hello":"kafka"}')
    finally:
        await admin.delete_topics([topic])
        await admin.close()
