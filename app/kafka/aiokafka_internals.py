"""Every use of a private part of aiokafka, in one place.

- `AIOKafkaConsumer._client.force_metadata_update()`: a consumer that is not subscribed
  to a topic (replay assigns partitions by hand) only knows the partitions of the topics
  in its cached cluster metadata, and `partitions_for_topic` answers None for a topic
  created after that cache was filled. aiokafka has no public call that refreshes the
  consumer's own metadata (`topics()` fetches a copy and leaves the cache as it was), so
  the cache is refreshed through the consumer's client.

Kept apart from Faust's internals (app/kafka/faust_internals.py) so that replay, which
uses aiokafka alone, does not load Faust. Written against `PINNED`, checked by
tests/unit/test_library_internals.py.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient

from app.core.pins import pin_mismatch

PINNED = {"aiokafka": "0.14.0"}

# (class, method, its parameter names, code of it this module depends on)
METHODS = (
    (AIOKafkaClient, "force_metadata_update", ("self",), ()),
    (
        AIOKafkaConsumer,
        "partitions_for_topic",
        ("self", "topic"),
        ("self._client.cluster.partitions_for_topic",),
    ),
)
# (class, attribute its instances carry, the attribute's class)
ATTRIBUTES = ((AIOKafkaConsumer, "_client", AIOKafkaClient),)


def check_versions() -> str | None:
    """None when the installed aiokafka is the pinned one, else what differs."""
    return pin_mismatch(__name__, PINNED)


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Refresh the consumer's cached cluster metadata (topics created since it started)."""
    await consumer._client.force_metadata_update()
