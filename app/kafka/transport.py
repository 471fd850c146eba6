"""Faust's aiokafka transport, creating the worker's consumer and producer.

The consumer hands each fetched record over without a task when the hand-over cannot
block and resumes fetching as soon as a stream buffer drains; the producer sizes its
buffer without a settings lookup. Both override private parts of Faust, so they live in
app/kafka/faust_internals.py, which says why each one is needed.
"""

from __future__ import annotations

from faust.transport.drivers import aiokafka as faust_aiokafka

from app.kafka.faust_internals import Consumer, Producer


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport, creating the consumer and producer of faust_internals."""

    Consumer = Consumer
    Producer = Producer
