"""Writes docs/settings.md and .env.template from the settings declarations."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.core.settings_docs import env_template, markdown  # noqa: E402


def main() -> None:
    (ROOT / "docs" / "settings.md").write_text(markdown())
    (ROOT / ".env.template").write_text(env_template())


if __name__ == "__main__":
    main()
