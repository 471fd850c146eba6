"""The wire contract (contract §1.1) as compiled, code generation from scratch, and the
proto -> Event decoding rules, without a server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor as F

from app.bridge.decode import decode_login, decode_stat
from app.core.events import INT_MAX, EventType, InvalidEvent
from proto.build import PROTO_ROOT, load

pb = load()
S, B, I64, D, M = F.TYPE_STRING, F.TYPE_BOOL, F.TYPE_INT64, F.TYPE_DOUBLE, F.TYPE_MESSAGE


def fields(message) -> list[tuple[int, str, int, str]]:
    return [(f.number, f.name, f.type, f.json_name) for f in message.DESCRIPTOR.fields]


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def expect(*spec: tuple[int, str, int]) -> list[tuple[int, str, int, str]]:
    return [(n, name, t, camel(name)) for n, name, t in spec]


def test_user_logged_in_fields():
    assert pb.login_pb2.DESCRIPTOR.package == "accelbyte.iam.account.v1"
    assert fields(pb.login_pb2.UserLoggedIn) == expect(
        (1, "payload", M),
        (2, "id", S),
        (3, "version", I64),
        (4, "name", S),
        (5, "namespace", S),
        (6, "parent_namespace", S),
        (7, "timestamp", S),
        (8, "client_id", S),
        (9, "user_id", S),
        (10, "trace_id", S),
        (11, "session_id", S),
    )
    assert fields(pb.login_pb2.UserLoggedIn.Payload) == expect(
        (1, "user_account", M), (2, "user_authentication", M)
    )
    assert fields(pb.login_pb2.UserAccount) == expect(
        *[
            (i, n, S)
            for i, n in enumerate(
                [
                    "user_id",
                    "email_address",
                    "user_name",
                    "country",
                    "namespace",
                    "platform_id",
                    "display_name",
                ],
                1,
            )
        ]
    )
    assert fields(pb.login_pb2.UserAuthentication) == expect(
        (1, "platform_id", S),
        (2, "refresh", B),
        (3, "platform_user_id", S),
        (4, "simultaneous_platform_id", S),
        (5, "simultaneous_platform_user_id", S),
    )


def test_stat_item_updated_fields():
    assert pb.stat_pb2.DESCRIPTOR.package == "accelbyte.social.statistic.v1"
    assert fields(pb.stat_pb2.StatItemUpdated) == expect(
        (1, "payload", M),
        (2, "id", S),
        (3, "version", I64),
        (4, "name", S),
        (5, "namespace", S),
        (6, "parent_namespace", S),
        (7, "timestamp", S),
        (8, "client_id", S),
        (9, "user_id", S),
        (10, "session_id", S),
    )
    assert fields(pb.stat_pb2.StatItem) == expect(
        (1, "namespace", S),
        (2, "stat_code", S),
        (3, "user_id", S),
        (4, "latest_value", D),
        (5, "inc", D),
        (6, "additional_data", M),
        (7, "ignore_additional_data_on_value_rejected", B),
        (8, "default_value", D),
        (9, "request_value", D),
        (10, "update_strategy", S),
    )
    additional = pb.stat_pb2.StatItem.DESCRIPTOR.fields_by_name["additional_data"]
    assert additional.message_type.full_name == "google.protobuf.Struct"


@pytest.mark.parametrize(
    ("module", "service", "request_type"),
    [
        (
            "login_pb2",
            "UserAuthenticationUserLoggedInService",
            "accelbyte.iam.account.v1.UserLoggedIn",
        ),
        (
            "stat_pb2",
            "StatisticStatItemUpdatedService",
            "accelbyte.social.statistic.v1.StatItemUpdated",
        ),
    ],
)
def test_services(module: str, service: str, request_type: str):
    descriptor = getattr(pb, module).DESCRIPTOR.services_by_name[service]
    (method,) = descriptor.methods
    assert method.name == "OnMessage"
    assert method.input_type.full_name == request_type
    assert method.output_type.full_name == "google.protobuf.Empty"


def test_generates_from_scratch_and_when_a_proto_changes(tmp_path: Path):
    copy = tmp_path / "proto"
    shutil.copytree(PROTO_ROOT, copy, ignore=shutil.ignore_patterns("gen", "__pycache__"))
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from proto import build; "
        "print(build.generate()); p = build.load(); print(p.stat_pb2.StatItem.__name__)"
    )

    def run() -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.split()

    assert run() == ["True", "StatItem"]  # missing -> generated
    assert run() == ["False", "StatItem"]  # up to date -> left alone
    later = time.time() + 5
    proto_file = copy / "accelbyte/iam/account/v1/account.proto"
    os.utime(proto_file, (later, later))
    assert run() == ["True", "StatItem"]  # older than a .proto -> regenerated
    assert (copy / "gen/accelbyte/social/statistic/v1/statistic_pb2_grpc.py").is_file()


RECEIVED = datetime(2026, 5, 1, 12, 0)


def test_decode_stat_values_truncated_and_clamped():
    item = pb.stat_pb2.StatItem(stat_code="wins", latest_value=-1.9, inc=1e12)
    message = pb.stat_pb2.StatItemUpdated(id="e", namespace="ns", user_id="u", payload=item)
    event = decode_stat(message, RECEIVED)
    assert (event.type, event.value, event.inc, event.stat_code) == (
        EventType.STATISTIC,
        -1,
        INT_MAX,
        "wins",
    )
    assert (event.event_id, event.namespace, event.user_id) == ("e", "ns", "u")
    assert event.event_time == RECEIVED


def test_decode_uses_rfc3339_timestamp_when_present():
    message = pb.login_pb2.UserLoggedIn(user_id="u", timestamp="2026-02-03T04:05:06+02:00")
    assert decode_login(message, RECEIVED).event_time == datetime(2026, 2, 3, 2, 5, 6)
    message = pb.login_pb2.UserLoggedIn(user_id="u", timestamp="yesterday")
    assert decode_login(message, RECEIVED).event_time == RECEIVED


def test_decode_top_level_user_wins_over_payload():
    item = pb.stat_pb2.StatItem(stat_code="wins", user_id="inner")
    message = pb.stat_pb2.StatItemUpdated(user_id="outer", payload=item)
    assert decode_stat(message, RECEIVED).user_id == "outer"


def test_decode_nan_refused():
    item = pb.stat_pb2.StatItem(stat_code="wins", latest_value=float("nan"))
    with pytest.raises(InvalidEvent) as caught:
        decode_stat(pb.stat_pb2.StatItemUpdated(user_id="u", payload=item), RECEIVED)
    assert caught.value.reason == "invalid_value"
