"""The settings docs and .env.template cannot drift from the declarations."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from app.core import setting_types
from app.core.setting_types import declaration_of
from app.core.settings import Settings, SettingsError, declarations
from app.core.settings_docs import GROUPS, env_template, markdown

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "run `python scripts/gen_settings_docs.py` and commit the result"


def test_docs_settings_table_is_generated_from_the_declarations():
    assert (ROOT / "docs" / "settings.md").read_text() == markdown(), REGENERATE


def test_env_template_is_generated_from_the_declarations():
    assert (ROOT / ".env.template").read_text() == env_template(), REGENERATE


def test_every_variable_is_declared_once_and_documented():
    names = [d.env for d in declarations()]
    assert len(names) == len(set(names))
    for d in declarations():
        assert d.doc.strip(), d.env
        assert d.group in GROUPS or d.group == "internal", d.env
        if d.group != "internal":
            assert f"`{d.env}`" in markdown()
            assert f"\n{'' if d.required else '#'}{d.env}=" in env_template()


def test_python_defaults_are_the_documented_defaults_parsed():
    defaults = Settings()
    for f in fields(Settings):
        d = declaration_of(f)
        if d is None or d.env == "DATABASE_URL":  # empty means the embedded file
            continue
        assert getattr(defaults, f.name) == d.parse(d.env, d.default), d.env


FREE_TEXT = (setting_types.text, setting_types.path)


@pytest.mark.parametrize(
    "d", [d for d in declarations() if d.parse not in FREE_TEXT], ids=lambda d: d.env
)
def test_garbage_in_a_typed_variable_fails_naming_it(d):
    with pytest.raises(SettingsError, match=f"^{d.env}: "):
        Settings.from_env({d.env: "not a ☃ value"})
