"""Bounded waits on a condition, instead of sleeping a guessed time.

A test waits for the state it needs (a row written, a lock waited on, a metric moved),
polling until it holds or failing with `message` at the timeout; the timeout only bounds
a broken run, it never decides a passing one. The first check is made at once.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], *, timeout: float = 10.0, message: str, every: float = 0.02
) -> T:
    """Call `predicate` until it returns something truthy, and return that; raise
    AssertionError naming `message` (and the last value) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message} ({value!r})")
        time.sleep(every)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 10.0,
    message: str,
    every: float = 0.02,
) -> T:
    """`wait_until` in a coroutine: `predicate` may be a plain function or a coroutine
    function, and the event loop runs while waiting."""
    deadline = time.monotonic() + timeout
    while True:
        value: Any = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message} ({value!r})")
        await asyncio.sleep(every)
