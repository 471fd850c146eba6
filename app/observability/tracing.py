"""Tracing (contract §7, docs/tracing.md): OpenTelemetry spans exported to Zipkin.

Off unless OTEL_EXPORTER_ZIPKIN_ENDPOINT is set. Off, this module imports nothing of
OpenTelemetry, `active` stays False, and the hooks in the hot paths are each one test
of that flag (the gRPC methods are registered unwrapped, so a call pays nothing at all).
On (`setup`, once at start), app/observability/otel.py builds the SDK and:
- each gRPC call (OnMessage of both event services, the GDPR deletion) runs in a SERVER
  span continuing the caller's B3 or W3C context (`server_call`); the handlers add the
  event's attributes (`note_call`, `note_goals`, `note`);
- the call's span context joins its buffer generation (`Generation.trace_links`), and
  the flush that writes the generation records one span linked to those calls
  (`record_flush`), timed by the flush's own measurement;
- the completions publisher wraps each publish in `publish_span` and puts its
  `trace_id` in the message metadata;
- every log record made inside a span carries `trace_id` and `span_id`.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.observability.otel import Sdk

log = logging.getLogger(__name__)

active = False  # read by the hooks in the hot paths: keep it a plain module global
_sdk: Sdk | None = None

# Links kept per flush (the SDK's default span limit is 128 too): a flush of thousands
# of calls links the first ones (its `flush.events` counts every event it wrote).
MAX_LINKS = 128
# Trace ids listed in a tag of the flush span (Zipkin does not keep links).
LISTED_TRACES = 16
# gRPC codes that mark a server span as failed (OpenTelemetry's RPC conventions): the
# caller's mistakes (INVALID_ARGUMENT, ...) and load shedding do not.
SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)

Behaviour = Callable[[bytes, Any], Awaitable[Any]]


def setup(endpoint: str, service_name: str) -> bool:
    """Turn tracing on when `endpoint` is set (once per process); returns `active`."""
    global active, _sdk
    if not endpoint or _sdk is not None:
        return active
    from app.observability import otel  # noqa: PLC0415 - the SDK only when tracing is on

    _sdk = otel.build(endpoint, service_name)
    _correlate_logs(_sdk.current_span)
    atexit.register(shutdown)
    active = True
    log.info("tracing on", extra={"zipkin_endpoint": endpoint, "service_name": service_name})
    return True


def shutdown(timeout: float = 2.0) -> None:
    """Export what is still queued, waiting at most `timeout` (Zipkin may be down)."""
    if _sdk is None:
        return
    closing = threading.Thread(target=_sdk.provider.shutdown, name="tracing-shutdown", daemon=True)
    closing.start()
    closing.join(timeout)


def _correlate_logs(current_span: Callable[[], Any]) -> None:
    """Every log record made inside a span carries its trace and span ids."""
    make_record = logging.getLogRecordFactory()

    def record_with_ids(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        context = current_span().get_span_context()
        if context.is_valid:
            record.trace_id = f"{context.trace_id:032x}"
            record.span_id = f"{context.span_id:016x}"
        return record

    logging.setLogRecordFactory(record_with_ids)


# ------------------------------------------------------------------ gRPC server calls


def server_call(method: str, behaviour: Behaviour) -> Behaviour:
    """`behaviour` (a raw-bytes gRPC method) in a SERVER span named after `method`,
    continuing the caller's context; unchanged when tracing is off."""
    sdk = _sdk
    if sdk is None:
        return behaviour
    name = method.lstrip("/")
    service, _, rpc = name.rpartition("/")
    base = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
    tracer, extract, server = sdk.tracer, sdk.propagator.extract, sdk.kind.SERVER

    async def traced(request: bytes, context: Any) -> Any:
        parent = extract(dict(context.invocation_metadata() or ()))
        with tracer.start_as_current_span(
            name,
            context=parent,
            kind=server,
            attributes=base,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                reply = await behaviour(request, context)
            except BaseException:  # an abort (a refusal), or the caller gone (no code)
                code = context.code()  # a grpc.StatusCode: value (number, text)
                if code is None:
                    _answered(span, "CANCELLED", 1, "")
                else:
                    _answered(span, code.name, code.value[0], context.details() or "")
                raise
            _answered(span, "OK", 0, "")
            return reply

    return traced


def _answered(span: Any, code: str, number: int, details: str) -> None:
    attributes: dict[str, Any] = {"rpc.grpc.status_code": number, "challenge.outcome": code}
    if details:
        attributes["challenge.outcome_detail"] = details[:200]
    span.set_attributes(attributes)  # one call: the SDK takes a lock per call
    if code in SERVER_ERRORS:
        assert _sdk is not None
        span.set_status(_sdk.status(_sdk.error, details[:200] or code))


def note_call(event: Any, generation: Any) -> None:
    """The event of the current call span, and the call's context for its flush's links.

    `event` is an app.core Event; `generation` the tables.generation Generation holding it,
    or None when the event had nothing to write."""
    assert _sdk is not None
    span = _sdk.current_span()
    if not span.is_recording():
        return
    attributes: dict[str, Any] = {
        "challenge.event.type": event.type.value,
        "challenge.event.id": event.event_id,
    }
    if event.stat_code:
        attributes["challenge.event.stat_code"] = event.stat_code
    if generation is None:  # other namespace, or no goal listens
        attributes["challenge.goals_affected"] = 0
        attributes["challenge.skipped"] = True
    span.set_attributes(attributes)
    if generation is None:
        return
    links = generation.trace_links
    if links is None:
        if generation.done.done():  # a redelivery of an event already written
            return
        generation.trace_links = links = []
    if len(links) < MAX_LINKS:
        links.append(span.get_span_context())


def note_goals(moved: int) -> None:
    """How many goals the event of the current call moved."""
    assert _sdk is not None
    _sdk.current_span().set_attribute("challenge.goals_affected", moved)


def note(**attributes: str | int | float | bool) -> None:
    """Attributes (prefixed `challenge.`) on the current span, when there is one."""
    if _sdk is None:
        return
    span = _sdk.current_span()
    for key, value in attributes.items():
        span.set_attribute(f"challenge.{key}", value)


# ------------------------------------------------------------------------- flushes


def record_flush(generation: Any, result: Any, elapsed: float) -> None:
    """One span for a committed flush: `elapsed` seconds ending now, linked to the calls
    whose events it wrote (`generation.trace_links`, taken here).

    Zipkin keeps no links: the span is made a child of the first linked call, so that
    call's trace shows it, and it lists the linked trace ids in a tag. A flush that
    wrote nothing for nobody records no span."""
    assert _sdk is not None
    sdk = _sdk
    contexts = generation.trace_links or []
    generation.trace_links = None
    if not contexts and not result.rows:  # a barrier (GDPR deletion) or an idle carry retry
        return
    end = time.time_ns()
    attributes: dict[str, Any] = {
        "challenge.flush.rows": result.rows,
        "challenge.flush.statements": result.statements,
        "challenge.flush.events": generation.events,
        "challenge.flush.inserted": result.inserted,
        "challenge.flush.updated": result.updated,
        "challenge.flush.carried": len(result.carried),
        "challenge.flush.duration_ms": round(elapsed * 1000, 3),
        "challenge.flush.linked_calls": len(contexts),
    }
    if contexts:
        listed = dict.fromkeys(f"{c.trace_id:032x}" for c in contexts[:LISTED_TRACES])
        attributes["challenge.flush.linked_trace_ids"] = ",".join(listed)
        parent = sdk.span_in_context(sdk.non_recording(contexts[0]))
    else:
        parent = sdk.empty_context()
    span = sdk.tracer.start_span(
        "flush",
        context=parent,
        kind=sdk.kind.INTERNAL,
        attributes=attributes,
        links=[sdk.link(context) for context in contexts],
        start_time=end - int(elapsed * 1e9),
    )
    span.end(end_time=end)


# --------------------------------------------------------------------- publishing


class Publish:
    """What `publish_span` hands the publisher; the same calls work with tracing off."""

    __slots__ = ("span",)

    def __init__(self, span: Any = None):
        self.span = span

    @property
    def trace_id(self) -> str | None:
        """32 hex digits for the message metadata `traceId`; None when not traced."""
        return _trace_id(self.span)

    def note(self, **attributes: str | int | float | bool) -> None:
        """Attributes (prefixed `challenge.`) on the publish span, e.g. outcome="sent"."""
        if self.span is not None:
            for key, value in attributes.items():
                self.span.set_attribute(f"challenge.{key}", value)

    def headers(self) -> dict[str, str]:
        """The publish span's context as B3 and W3C headers (gRPC metadata, Kafka
        headers); empty when not traced."""
        carrier: dict[str, str] = {}
        if self.span is not None and _sdk is not None:
            _sdk.propagator.inject(carrier, context=_sdk.span_in_context(self.span))
        return carrier


_UNTRACED = Publish()


@contextmanager
def publish_span(sink: str, destination: str, messages: int = 1) -> Iterator[Publish]:
    """A PRODUCER span around one publish of `messages` completions to `sink` (kafka,
    async-messaging, log) at `destination` (topic). An exception inside marks it failed
    and goes on up.

        with tracing.publish_span("kafka", topic, len(batch)) as publish:
            metadata = {"userId": user, **({"traceId": publish.trace_id} if publish.trace_id else {})}
            await producer.send(...)
    """
    if _sdk is None:
        yield _UNTRACED
        return
    attributes: dict[str, Any] = {
        "messaging.system": sink,
        "messaging.destination.name": destination,
        "messaging.operation.type": "send",
        "messaging.batch.message_count": messages,
    }
    with _sdk.tracer.start_as_current_span(
        f"send {destination}", kind=_sdk.kind.PRODUCER, attributes=attributes
    ) as span:
        yield Publish(span)


def current_trace_id() -> str | None:
    """The trace id of the current span (32 hex digits), None when there is none."""
    return None if _sdk is None else _trace_id(_sdk.current_span())


def _trace_id(span: Any) -> str | None:
    if span is None:
        return None
    context = span.get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return f"{context.trace_id:032x}"
