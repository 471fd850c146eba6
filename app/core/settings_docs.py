"""The settings table of docs/settings.md and the `.env.template`, generated from the
declarations in app/core/settings.py (scripts/gen_settings_docs.py writes both; a unit
test fails when either file differs from what the declarations give)."""

from __future__ import annotations

from app.core.setting_types import Declaration
from app.core.settings import DURATIONS, declarations

GROUPS = {
    "core": "Service",
    "database": "Database",
    "buffer": "Buffering and acknowledgements",
    "events": "Event times and erasures",
    "ops": "Ports, logs, tracing",
    "grpc": "gRPC bridge (`serve`)",
    "kafka": "Kafka worker (`worker`, `replay --topic`, `produce`)",
    "completions": "Goal-completed events",
}

MARKDOWN_HEADER = f"""# Settings

Every setting comes from the environment (on AccelByte Extend: the app's variables and
secrets). A bad value stops the start with one line naming the variable, exit code 2.
Blank counts as unset. Durations take {DURATIONS}.
With no database settings at all, `demo`, `replay FILE` and `progress` use the embedded
SQLite file `data/challenge.db`; `serve` and `worker` refuse to start (exit 2) unless
`DATABASE_URL=sqlite:///path` asks for a file explicitly.

This file is generated from the declarations in `app/core/settings.py` by
`python scripts/gen_settings_docs.py`; a unit test fails when they differ.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _rows(items: list[Declaration]) -> list[str]:
    rows = ["| variable | default | |", "|---|---|---|"]
    for d in items:
        default = f"`{d.default}`" if d.default else "—"
        rows.append(f"| `{d.env}` | {_cell(default)} | {_cell(d.doc)} |")
    return rows


def markdown() -> str:
    """docs/settings.md, one table per group."""
    lines = [MARKDOWN_HEADER]
    for group, title in GROUPS.items():
        items = [d for d in declarations() if d.group == group]
        lines += [f"## {title}", "", *_rows(items), ""]
    return "\n".join(lines)


def _template_line(d: Declaration) -> str:
    """A required variable is left uncommented and empty, to be filled in; the others are
    commented out with their default."""
    return f"{d.env}=" if d.required else f"#{d.env}={d.default}"


def env_template() -> str:
    """.env.template: every variable with its doc; the required ones to fill in, the
    others commented out with their default."""
    lines = [
        "# Every setting of the challenge event handler (generated from app/core/settings.py",
        "# by scripts/gen_settings_docs.py; docs/settings.md explains). Copy to .env and fill",
        "# in the uncommented ones (blank counts as unset); uncomment what else you change.",
        "# On Extend set them as the app's variables, the ones marked (secret) as secrets.",
    ]
    for group, title in GROUPS.items():
        lines += ["", f"# ---- {title}"]
        for d in declarations():
            if d.group == group:
                secret = " (secret)" if d.secret else ""
                lines += [f"# {d.doc}{secret}", _template_line(d)]
    return "\n".join(lines) + "\n"
