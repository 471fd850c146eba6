"""GDPR account deletion on the Extend bridge (contract §1.1):
`/accelbyte.iam.account.v1.DeletionAccountGdprGdprRequestDataDeletionResponseService/OnMessage`.

User id = `payload.deletion_gdpr.user_id`, else the top-level `user_id`; namespace = the
top-level `namespace`, else `payload.deletion_gdpr.namespace`. Answers OK only after the
user's rows are deleted and committed (tables/gdpr.py); another namespace is answered OK
and skipped; a database that cannot take the deletion in time answers UNAVAILABLE, so
the bridge redelivers (a repeated deletion is harmless).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import grpc
from google.protobuf import empty_pb2

from app.bridge import wire
from app.core.deletions import Deletion
from app.core.events import InvalidEvent, validate_identity
from app.core.settings import Settings
from app.observability import metrics, tracing
from proto.build import load as load_protos
from tables.db import is_transient
from tables.flusher import Flusher
from tables.gdpr import BarrierTimeout, count_invalid, count_skipped, erase_user

log = logging.getLogger(__name__)

protos = load_protos()
GDPR_SERVICE = protos.gdpr_pb2.DESCRIPTOR.services_by_name[
    "DeletionAccountGdprGdprRequestDataDeletionResponseService"
].full_name
GDPR_METHOD = f"/{GDPR_SERVICE}/OnMessage"
EMPTY = empty_pb2.Empty()
SOURCE = "grpc"


def decode_deletion(data: bytes) -> Deletion:
    """Request bytes -> Deletion, validated in the order of docs/contract.md §2: malformed bytes, nil
    message, empty user id, then the id's length and content."""
    message = wire.parse(protos.gdpr_pb2.GdprRequestDataDeletionResponse, data)
    if message.ByteSize() == 0:
        raise InvalidEvent("nil_message", "message cannot be nil")
    inner = message.payload.deletion_gdpr
    user_id = inner.user_id or message.user_id
    validate_identity(user_id)  # empty, too long, characters PostgreSQL cannot store
    return Deletion(user_id, message.namespace or inner.namespace)


class GdprHandler:
    """OnMessage of the GDPR service: decode, filter the namespace, erase, answer."""

    def __init__(self, flusher: Flusher, namespace: str, *, timeout: float):
        self.flusher = flusher
        self.namespace = namespace
        self.timeout = timeout  # longest wait for flushes in flight (GRPC_ACK_TIMEOUT)

    async def handle(self, request: bytes, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        started = time.perf_counter()
        code, message = grpc.StatusCode.INTERNAL, "internal error"
        try:
            code, message = await self._process(request)
        except Exception:  # a bug: INTERNAL, the bridge retries
            log.exception("GDPR deletion failed")
        finally:
            metrics.GRPC_REQUESTS.labels(GDPR_METHOD, code.name).inc()
            metrics.GRPC_DURATION.labels(GDPR_METHOD).observe(time.perf_counter() - started)
        if code is not grpc.StatusCode.OK:
            await context.abort(code, message)
        return EMPTY

    async def _process(self, request: bytes) -> tuple[grpc.StatusCode, str]:
        try:
            deletion = decode_deletion(request)
        except InvalidEvent as exc:
            count_invalid(SOURCE)
            metrics.FAILED.labels(exc.reason).inc()
            return grpc.StatusCode.INVALID_ARGUMENT, exc.message
        if self.namespace and deletion.namespace != self.namespace:
            count_skipped(SOURCE)
            metrics.SKIPPED.labels("namespace").inc()
            return grpc.StatusCode.OK, ""
        try:
            erasure = await erase_user(
                self.flusher,
                deletion.user_id,
                self.namespace or deletion.namespace,
                source=SOURCE,
                barrier_timeout=self.timeout,
            )
        except BarrierTimeout:
            return grpc.StatusCode.UNAVAILABLE, "deletion not committed in time, retry"
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("GDPR deletion failed, bridge will retry", extra={"error": str(exc)[:300]})
            return grpc.StatusCode.UNAVAILABLE, "database unavailable, retry"
        if tracing.active:
            tracing.note(gdpr_rows_deleted=erasure.total, gdpr_buffered_dropped=erasure.buffered)
        return grpc.StatusCode.OK, ""


def add_gdpr_service(server: grpc.aio.Server, flusher: Flusher, settings: Settings) -> str:
    """Register the GDPR servicer; returns its full service name (for reflection).

    The deletion waits at most GRPC_ACK_TIMEOUT for this process's flushes in flight."""
    handler = GdprHandler(
        flusher,
        settings.namespace,
        timeout=settings.grpc_ack_timeout,
    )

    wire.add_bytes_service(server, GDPR_SERVICE, tracing.server_call(GDPR_METHOD, handler.handle))
    return str(GDPR_SERVICE)


def gdpr_message(user: str, namespace: str, event_id: str | None = None) -> Any:
    """A deletion as IAM publishes it (user id inside the payload, as the bridge sends it)."""
    pb = protos.gdpr_pb2
    return pb.GdprRequestDataDeletionResponse(
        id=event_id or uuid.uuid4().hex,
        name="gdprRequestDataDeletionResponse",
        namespace=namespace,
        payload=pb.GdprRequestDataDeletionResponsePayloadData(
            deletion_gdpr=pb.DeletionGDPR(user_id=user, namespace=namespace)
        ),
    )
