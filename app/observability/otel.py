"""The OpenTelemetry SDK side of tracing, imported only when tracing is on.

Built once at start (`build`): a tracer provider named by OTEL_SERVICE_NAME, one batch
span processor sending to Zipkin's JSON v2 endpoint, and the propagator that reads
incoming context: B3 (the multi-header reader also takes the single `b3` header) and
W3C `traceparent`, W3C winning when a caller sends both — the Extend templates' pair.
The exporter is wrapped so a Zipkin that is down costs one warning a minute and a
counter, not a traceback per batch.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Counter

from app.observability.metrics import PREFIX

log = logging.getLogger(__name__)

SPANS = Counter(
    f"{PREFIX}_spans_exported_total",
    "Spans handed to the Zipkin endpoint: exported, or failed (endpoint down or refusing)",
    ["outcome"],
)
# Spans leave in batches at least this often (the SDK's own default is 5 s; the Extend
# Go template uses 1 s). OTEL_BSP_SCHEDULE_DELAY, when set, wins.
EXPORT_EVERY_MS = 1000
WARN_EVERY = 60.0  # seconds between two "cannot export" warnings


class CountingExporter(SpanExporter):
    """Zipkin exporter that counts and never raises: a failed batch is dropped."""

    def __init__(self, inner: SpanExporter):
        self.inner = inner
        self.exported = SPANS.labels("exported")
        self.failed = SPANS.labels("failed")
        self._warned = 0.0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # connection refused, timeout: the batch is lost
            self._failed(len(spans), str(exc))
            return SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported.inc(len(spans))
        else:
            self._failed(len(spans), "endpoint refused the batch")
        return result

    def _failed(self, count: int, error: str) -> None:
        self.failed.inc(count)
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning("spans not exported", extra={"spans": count, "error": error[:300]})

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


@dataclass(frozen=True)
class Sdk:
    """What the hooks of app/observability/tracing.py use, looked up once."""

    provider: TracerProvider
    tracer: trace.Tracer
    propagator: CompositePropagator
    current_span: Any  # opentelemetry.trace.get_current_span
    span_in_context: Any  # opentelemetry.trace.set_span_in_context
    non_recording: Any  # opentelemetry.trace.NonRecordingSpan
    link: Any  # opentelemetry.trace.Link
    kind: Any  # opentelemetry.trace.SpanKind
    status: Any  # opentelemetry.trace.Status
    error: Any  # opentelemetry.trace.StatusCode.ERROR
    empty_context: Any  # opentelemetry.context.Context


def build(endpoint: str, service_name: str, processor: SpanProcessor | None = None) -> Sdk:
    """The provider, exporter and propagator, installed as OpenTelemetry's globals too
    (so a library that traces by itself joins the same traces). `processor` instead of
    the Zipkin one: not installed globally (tests read spans from memory)."""
    from opentelemetry.context import Context  # noqa: PLC0415 - beside its siblings

    # No exit hook of the SDK's own: its unbounded wait for the last export would hold up
    # a shutdown that has a grace period to keep; tracing.shutdown bounds it instead.
    # Only OTEL_RESOURCE_ATTRIBUTES and the name: Zipkin's encoder copies every resource
    # attribute onto every span as a tag (the SDK's defaults would add five per span).
    resource = OTELResourceDetector().detect().merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    propagator = CompositePropagator([B3MultiFormat(), TraceContextTextMapPropagator()])
    if processor is None:
        delay = None if os.environ.get("OTEL_BSP_SCHEDULE_DELAY") else EXPORT_EVERY_MS
        exporter = CountingExporter(ZipkinExporter(endpoint=endpoint))
        processor = BatchSpanProcessor(exporter, schedule_delay_millis=delay)
        trace.set_tracer_provider(provider)
        propagate.set_global_textmap(propagator)
    provider.add_span_processor(processor)
    # The batch processor warns once per span it drops when its queue is full: under a
    # burst that is a warning per call. The exporter wrapper above reports failures.
    logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)
    return Sdk(
        provider=provider,
        tracer=provider.get_tracer("challenge-event-handler"),
        propagator=propagator,
        current_span=trace.get_current_span,
        span_in_context=trace.set_span_in_context,
        non_recording=trace.NonRecordingSpan,
        link=trace.Link,
        kind=trace.SpanKind,
        status=trace.Status,
        error=trace.StatusCode.ERROR,
        empty_context=Context,
    )
