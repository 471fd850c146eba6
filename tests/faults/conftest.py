"""Fault fixtures: outages of the real services, undone after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.faults import Outage


@pytest.fixture
def outage() -> Iterator[Outage]:
    """`outage.stop("pg")` / `outage.start("pg")` (or "kafka") inside a test."""
    faults = Outage()
    try:
        yield faults
    finally:
        faults.restore()
