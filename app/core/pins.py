"""The check each module that uses a library's private parts makes of its pins
(app/kafka/faust_internals.py, app/kafka/aiokafka_internals.py,
tables/sqlalchemy_internals.py): an upgrade must re-read every private name first."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version


def pin_mismatch(module: str, pinned: Mapping[str, str]) -> str | None:
    """None when every installed distribution is the pinned one, else what differs."""
    wrong = [
        f"{name} {version(name)} (written against {pin})"
        for name, pin in pinned.items()
        if version(name) != pin
    ]
    if not wrong:
        return None
    return (
        f"{module} uses private parts of {', '.join(wrong)}: re-read each one its "
        "docstring lists in the installed version, then update PINNED"
    )
