"""Request bytes -> Event, decoded by us rather than by the gRPC runtime.

The runtime's own deserializer turns bytes that are not a valid message into UNKNOWN
"Unexpected DecodeError" with one traceback log line per call: a log flood any client can
trigger. Our services are registered with no deserializer (the handler gets the raw
bytes), so a bad body is an ordinary refusal: INVALID_ARGUMENT "malformed message"
(contract §2), counted like every other refusal. A string field holding bytes that are not
UTF-8 (protobuf refuses the whole message for it) is named instead:
"userId contains invalid characters".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from app.bridge.decode import decode_login, decode_stat
from app.core.events import DEFAULT_BOUNDS, Event, InvalidEvent
from app.core.time_bounds import TimeBounds
from proto.build import load as load_protos

protos = load_protos()
LOGIN_MESSAGE: Any = protos.login_pb2.UserLoggedIn
STAT_MESSAGE: Any = protos.stat_pb2.StatItemUpdated
LOGIN_SERVICE = protos.login_pb2.DESCRIPTOR.services_by_name[
    "UserAuthenticationUserLoggedInService"
].full_name
STAT_SERVICE = protos.stat_pb2.DESCRIPTOR.services_by_name[
    "StatisticStatItemUpdatedService"
].full_name

MAX_NESTING = 16  # our messages nest 3 deep; Struct values a little more


def parse(message_class: Any, data: bytes) -> Any:
    """Bytes -> message, or InvalidEvent "malformed message" / "<field> contains invalid
    characters"."""
    try:
        return message_class.FromString(data)
    except Exception:  # DecodeError, or anything else the parser may raise on garbage
        field = bad_utf8_field(message_class.DESCRIPTOR, data)
        if field is not None:
            raise InvalidEvent(
                "invalid_characters", f"{field} contains invalid characters"
            ) from None
        raise InvalidEvent("malformed", "malformed message") from None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def bad_utf8_field(descriptor: Descriptor, data: bytes, depth: int = 0) -> str | None:
    """JSON name of the first string field whose bytes are not UTF-8 (None: not that).

    Only runs for bytes the parser refused, so it may be slow and must be safe on garbage.
    """
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, pos = _varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            elif wire_type == 2:
                length, pos = _varint(data, pos)
                chunk, pos = data[pos : pos + length], pos + length
                field = descriptor.fields_by_number.get(number)
                if field is None:
                    continue
                if field.type == FieldDescriptor.TYPE_STRING:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return str(field.json_name)
                elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < MAX_NESTING:
                    found = bad_utf8_field(field.message_type, chunk, depth + 1)
                    if found is not None:
                        return found
            else:  # groups or garbage: not a message we can walk
                return None
    except ValueError:
        return None
    return None


def login_event(data: bytes, received: datetime, bounds: TimeBounds = DEFAULT_BOUNDS) -> Event:
    """`UserLoggedIn` request bytes -> login Event (InvalidEvent when refused)."""
    return decode_login(parse(LOGIN_MESSAGE, data), received, bounds)


def stat_event(data: bytes, received: datetime, bounds: TimeBounds = DEFAULT_BOUNDS) -> Event:
    """`StatItemUpdated` request bytes -> statistic Event (InvalidEvent when refused)."""
    return decode_stat(parse(STAT_MESSAGE, data), received, bounds)


Behaviour = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]


def add_bytes_service(
    server: grpc.aio.Server, service: str, behaviour: Behaviour, *, raw_response: bool = False
) -> None:
    """Register `service`'s OnMessage taking raw request bytes (no runtime decoding).

    `raw_response`: the behaviour returns the answer's bytes itself (the event services
    answer `b""`, the empty message), sparing a serializer call per call."""
    handlers = {
        "OnMessage": grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=None,
            response_serializer=None if raw_response else empty_pb2.Empty.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def add_event_services(server: grpc.aio.Server, login: Behaviour, stat: Behaviour) -> None:
    """Register both event services' OnMessage methods taking raw request bytes."""
    add_bytes_service(server, LOGIN_SERVICE, login, raw_response=True)
    add_bytes_service(server, STAT_SERVICE, stat, raw_response=True)
