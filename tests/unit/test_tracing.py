"""The tracing hooks on the real OpenTelemetry SDK, spans read from its in-memory exporter:
call attributes and links (capped, none for a redelivery of a written event), the flush
span (parent, links, timing), the publish span and its headers, and the off path."""

from __future__ import annotations

from datetime import datetime

import pytest

from app.core.events import Event, EventType
from app.observability import tracing
from tables.generation import Generation
from tables.write_result import WriteResult


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch):
    """Tracing on for one test, its spans kept in memory (nothing installed globally)."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from app.observability import otel

    exporter = InMemorySpanExporter()
    sdk = otel.build("", "unit", processor=SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_sdk", sdk)
    monkeypatch.setattr(tracing, "active", True)
    return exporter


def stat_event(event_id: str = "e-1") -> Event:
    return Event(event_id, EventType.STATISTIC, "mygame", "u-1", datetime(2026, 1, 1), "kills", 3)


def test_off_the_publisher_gets_an_untraced_handle():
    assert not tracing.active
    with tracing.publish_span("kafka", "goalCompleted", 3) as publish:
        assert publish.trace_id is None
        assert publish.headers() == {}
        publish.note(outcome="sent")  # harmless
    assert tracing.current_trace_id() is None


def test_a_publish_span_gives_its_trace_id_and_headers(spans):
    with tracing.publish_span("async-messaging", "goalCompleted", 2) as publish:
        assert publish.trace_id is not None and len(publish.trace_id) == 32
        assert tracing.current_trace_id() == publish.trace_id
        headers = publish.headers()
        publish.note(outcome="sent")
    assert tracing.current_trace_id() is None
    assert headers["x-b3-traceid"] == publish.trace_id
    assert headers["traceparent"].split("-")[1] == publish.trace_id
    (span,) = spans.get_finished_spans()
    assert span.name == "send goalCompleted"
    assert span.kind.name == "PRODUCER"
    assert span.attributes["messaging.system"] == "async-messaging"
    assert span.attributes["messaging.batch.message_count"] == 2
    assert span.attributes["challenge.outcome"] == "sent"


def test_a_failed_publish_is_an_error_span_and_the_error_goes_on(spans):
    with pytest.raises(ConnectionError), tracing.publish_span("kafka", "t") as publish:
        assert publish.trace_id
        raise ConnectionError("sink down")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code.name == "ERROR"


async def test_calls_join_their_generation_up_to_the_cap(spans):
    generation = Generation()
    sdk = tracing._sdk
    assert sdk is not None
    for number in range(tracing.MAX_LINKS + 5):
        with sdk.tracer.start_as_current_span("call"):
            tracing.note_call(stat_event(f"e-{number}"), generation)
            tracing.note_goals(1)
    assert generation.trace_links is not None
    assert len(generation.trace_links) == tracing.MAX_LINKS
    first = spans.get_finished_spans()[0]
    assert first.attributes["challenge.event.type"] == "statistic"
    assert first.attributes["challenge.event.stat_code"] == "kills"
    assert first.attributes["challenge.goals_affected"] == 1


async def test_a_redelivery_of_a_written_event_links_nothing(spans):
    generation = Generation()
    generation.done.set_result(WriteResult())
    sdk = tracing._sdk
    assert sdk is not None
    with sdk.tracer.start_as_current_span("call"):
        tracing.note_call(stat_event(), generation)
        tracing.note_call(stat_event("e-2"), None)  # nothing to write
    assert generation.trace_links is None
    (span,) = spans.get_finished_spans()
    assert span.attributes["challenge.skipped"] is True
    assert span.attributes["challenge.goals_affected"] == 0


async def test_the_flush_span_is_a_child_of_its_first_call_and_links_them_all(spans):
    generation = Generation()
    sdk = tracing._sdk
    assert sdk is not None
    calls = []
    for number in range(3):
        with sdk.tracer.start_as_current_span("call") as call:
            tracing.note_call(stat_event(f"e-{number}"), generation)
            calls.append(call.get_span_context())
    generation.events = 3
    tracing.record_flush(generation, WriteResult(rows=3, updated=3, statements=1), 0.25)
    assert generation.trace_links is None  # taken by the flush
    flush = spans.get_finished_spans()[-1]
    assert flush.name == "flush"
    assert flush.parent is not None and flush.parent.span_id == calls[0].span_id
    assert [link.context for link in flush.links] == calls
    assert flush.attributes["challenge.flush.rows"] == 3
    assert flush.attributes["challenge.flush.statements"] == 1
    assert flush.attributes["challenge.flush.linked_calls"] == 3
    listed = flush.attributes["challenge.flush.linked_trace_ids"].split(",")
    assert listed == list(dict.fromkeys(f"{c.trace_id:032x}" for c in calls))
    assert flush.end_time - flush.start_time == 250_000_000


async def test_a_flush_that_wrote_nothing_for_nobody_records_no_span(spans):
    # async: a Generation's future needs the running loop
    tracing.record_flush(Generation(), WriteResult(), 0.001)
    assert spans.get_finished_spans() == ()
