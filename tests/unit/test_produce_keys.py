"""`python -m app produce` keys each record by its user id, as AGS does: one user's records
share a partition, in file order (the worker applies them straight from it)."""

from __future__ import annotations

import orjson

from app.kafka.produce import route

NS = "mygame"


def test_records_are_keyed_by_the_user_id_of_either_shape():
    full = {"id": "e1", "namespace": NS, "userId": "u:1", "payload": {"statCode": "s"}}
    short = {"id": "e2", "payload": {"userId": "ユーザー", "namespace": NS, "statCode": "s"}}
    login = {"id": "e3", "name": "userLoggedIn", "namespace": NS, "user_id": "bob", "payload": {}}
    for obj, key in ((full, "u:1"), (short, "ユーザー"), (login, "bob")):
        line = orjson.dumps(obj)
        _topic, got, value = route(line, NS)
        assert got == key.encode() and value == line
    assert route(orjson.dumps(login), NS)[0] == f"{NS}.iam.account.v1.userLoggedIn"


def test_a_line_without_a_usable_user_id_goes_unkeyed():
    for obj in ({"id": "e"}, {"userId": 5}, {"userId": "", "payload": "x"}):
        assert route(orjson.dumps(obj), NS)[1] is None
