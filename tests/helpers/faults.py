"""Faults injected into the real services (scripts/services.sh), always undone."""

from __future__ import annotations

import subprocess

from tests.helpers.process import ROOT


def services(*args: str) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "services.sh"), *args],
        check=True,
        timeout=180,
        capture_output=True,
    )


class Outage:
    """Stops and starts a real service ("pg" or "kafka"); whatever is still stopped at
    the end of the test is started again by the fixture."""

    def __init__(self) -> None:
        self.stopped: set[str] = set()

    def stop(self, service: str) -> None:
        self.stopped.add(service)
        services("stop", service)

    def start(self, service: str) -> None:
        services("start", service)
        self.stopped.discard(service)

    def restore(self) -> None:
        for service in sorted(self.stopped):
            self.start(service)
