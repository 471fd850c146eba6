"""The private parts of Faust, mode, aiokafka and SQLAlchemy our code relies on are fenced
in one module per library (app/kafka/faust_internals.py, app/kafka/aiokafka_internals.py,
tables/sqlalchemy_internals.py). An upgrade of any of them fails here, naming what to
re-check, instead of silently changing the worker's or the flush's behaviour."""

from __future__ import annotations

import inspect
from importlib.metadata import version
from types import ModuleType
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from app.kafka import aiokafka_internals, faust_internals
from app.kafka.faust_internals import (
    ChallengeApp,
    Consumer,
    TablesDeclaredUpFront,
    UnthreadedProducerBuffer,
)
from app.kafka.transport import Transport
from tables import sqlalchemy_internals

FENCED = (faust_internals, aiokafka_internals, sqlalchemy_internals)


def worker_app() -> Any:
    """The worker's app class, transport and table manager, never started."""
    app = ChallengeApp(
        "unit-internals",
        broker="kafka://127.0.0.1:1",
        autodiscover=False,
        web_enabled=False,
        TableManager=TablesDeclaredUpFront,
    )
    app.transport = Transport(app.conf.broker_consumer, app)
    return app


def _flat(source: str) -> str:
    return " ".join(source.split())


# ---------------------------------------------------------------------- versions


@pytest.mark.parametrize("module", FENCED, ids=lambda m: m.__name__)
def test_the_installed_library_is_the_pinned_one(module: ModuleType):
    problem = module.check_versions()
    assert problem is None, problem


@pytest.mark.parametrize("module", FENCED, ids=lambda m: m.__name__)
def test_another_version_is_reported_with_what_to_recheck(module: ModuleType, monkeypatch):
    (name, pin), *_ = module.PINNED.items()
    monkeypatch.setitem(module.PINNED, name, pin + ".other")
    problem = module.check_versions()
    assert problem is not None
    assert f"{name} {version(name)} (written against {pin}.other)" in problem
    assert module.__name__ in problem and "update PINNED" in problem


# ---------------------------------------------------------------------- shapes


def _methods() -> list[tuple[str, Any]]:
    return [
        (f"{owner.__name__}.{name}", (owner, name, params, source_has))
        for module in FENCED
        for owner, name, params, source_has in module.METHODS
    ]


@pytest.mark.parametrize(("where", "method"), _methods(), ids=[w for w, _ in _methods()])
def test_each_relied_on_method_still_has_its_shape(where: str, method: Any):
    owner, name, params, source_has = method
    function = inspect.getattr_static(owner, name, None)
    assert function is not None, f"{where} is gone"
    assert tuple(inspect.signature(getattr(owner, name)).parameters) == params, where
    source = _flat(inspect.getsource(getattr(owner, name)))
    for code in source_has:
        assert _flat(code) in source, f"{where} no longer does {code!r}"


async def test_each_relied_on_instance_attribute_is_still_set_by_the_constructors():
    app = worker_app()
    kafka = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    instances = [app.consumer, app.producer.buffer, app.tables, kafka]
    try:
        for module in (faust_internals, aiokafka_internals):
            for owner, name, kind in module.ATTRIBUTES:
                (instance, *_) = [i for i in instances if isinstance(i, owner)]
                value = getattr(instance, name, None)
                assert isinstance(value, kind), f"{owner.__name__}().{name}: {value!r}"
    finally:
        await kafka.stop()


def test_each_relied_on_slot_is_still_declared():
    for owner, name in sqlalchemy_internals.SLOTS:
        slots = {slot for cls in owner.__mro__ for slot in getattr(cls, "__slots__", ())}
        assert name in slots, f"{owner.__name__}.{name}"


# The names our subclasses add for themselves; everything else they define must override
# a method or property of the library class, or it silently stopped being called.
OWN = {"_resumed", "_resumed_event", "_event_class"}


@pytest.mark.parametrize(
    "cls", [Consumer, UnthreadedProducerBuffer, ChallengeApp, TablesDeclaredUpFront]
)
def test_every_override_still_overrides_something(cls: type):
    library = cls.__mro__[1]
    for name in vars(cls):
        if name.startswith("__") or name in OWN:
            continue
        assert inspect.getattr_static(library, name, None) is not None, f"{cls.__name__}.{name}"


def test_the_worker_app_uses_the_fenced_classes():
    app = worker_app()
    assert type(app.consumer) is Consumer
    assert type(app.producer.buffer) is UnthreadedProducerBuffer
    assert type(app.tables) is TablesDeclaredUpFront
