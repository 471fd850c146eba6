"""A GDPR account deletion as every source hands it over (docs/contract.md §1.1), and
its proto-JSON decoder (Kafka). The gRPC decoder (app/bridge/gdpr.py) builds the same
record from the proto message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from app.core.events import InvalidEvent, validate_identity


@dataclass(frozen=True, slots=True)
class Deletion:
    user_id: str
    namespace: str


def _text(obj: dict[str, Any], camel: str, snake: str, name: str) -> str:
    value = obj.get(camel, obj.get(snake))
    if value is None:
        return ""
    if not isinstance(value, str):  # wrong type: dead-lettered, never coerced
        raise InvalidEvent("wrong_type", f"{name} must be a string")
    return value


def deletion_from_json(raw: bytes | None) -> Deletion:
    """Proto-JSON of GdprRequestDataDeletionResponse -> Deletion, validated in the order
    of docs/contract.md §2: nil message, then the user id (`payload.deletionGDPR.userId`,
    else the top-level `userId`); namespace = top-level, else the payload's."""
    if not raw:
        raise InvalidEvent("nil_message", "message cannot be nil")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("undecodable", f"cannot decode JSON: {exc}") from None
    if not isinstance(obj, dict) or not obj:
        raise InvalidEvent("nil_message", "message cannot be nil")
    payload = obj.get("payload") or {}
    inner = (
        payload.get("deletionGDPR", payload.get("deletion_gdpr"))
        if isinstance(payload, dict)
        else None
    )
    inner = inner if isinstance(inner, dict) else {}
    user_id = _text(inner, "userId", "user_id", "userId") or _text(
        obj, "userId", "user_id", "userId"
    )
    validate_identity(user_id)  # empty, too long, characters PostgreSQL cannot store
    namespace = _text(obj, "namespace", "namespace", "namespace") or _text(
        inner, "namespace", "namespace", "namespace"
    )
    return Deletion(user_id, namespace)
