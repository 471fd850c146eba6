"""SIGHUP: re-read the challenge config, or say why there is nothing new to read.

A file (`CONFIG_PATH`) is re-read and validated first (`app.pipeline.reload_config`). A
config given in `CHALLENGES_JSON` cannot change under a running process (its environment
is fixed at exec), so the signal keeps the running config and the log says how to change
it: start again with the new value (on Extend: edit the variable, Restart and Apply).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from app.core.challenges import ChallengeConfig
from app.core.config_source import ConfigSource
from app.pipeline import reload_config

log = logging.getLogger(__name__)


def reload_from(source: ConfigSource, apply: Callable[[ChallengeConfig], None]) -> bool:
    """True when a new config was applied."""
    if source.path is not None:
        return reload_config(source.path, apply)
    log.warning(
        "config reload: nothing new to read, keeping the running config",
        extra={
            "source": source.label,
            "reason": f"{source.label} is read once at start; to change the config, "
            "restart with the new value (on Extend: Restart and Apply)",
        },
    )
    return False
