"""CHALLENGES_JSON: the config from the environment, plain or base64, validated exactly as
the file is, every problem naming the variable; hostile values refused, never a crash."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from app.core.challenges import ConfigError, load_config
from app.core.config_source import MAX_CHARS, config_from_env, config_source
from app.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILE = ROOT / "config" / "challenges.json"
TEXT = CONFIG_FILE.read_text()
ONE_GOAL = {
    "challenges": [
        {
            "challengeId": "env-only",
            "name": "From the environment",
            "goals": [
                {
                    "goalId": "env-logins",
                    "eventSource": "login",
                    "type": "increment",
                    "requirement": {"targetValue": 3, "operator": ">="},
                }
            ],
        }
    ]
}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def problems(raw: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_env(raw)
    return caught.value.problems


@pytest.mark.parametrize(
    "raw",
    [
        TEXT,
        f"\n  {TEXT}\n",
        b64(TEXT.encode()),
        base64.encodebytes(TEXT.encode()).decode(),  # 76-column lines, as `base64` writes
        base64.urlsafe_b64encode(TEXT.encode()).decode().rstrip("="),  # URL-safe, unpadded
        "\ufeff" + TEXT,  # a byte order mark from an editor
    ],
    ids=["json", "json-padded", "base64", "base64-lines", "base64-urlsafe", "bom"],
)
def test_plain_and_base64_give_the_files_config(raw: str):
    assert config_from_env(raw) == load_config(CONFIG_FILE)


def test_the_variable_wins_over_the_file(tmp_path: Path):
    source = config_source(
        Settings.from_env(
            {"CHALLENGES_JSON": json.dumps(ONE_GOAL), "CONFIG_PATH": str(tmp_path / "none.json")}
        )
    )
    assert (source.label, source.path, source.reloadable) == ("CHALLENGES_JSON", None, False)
    assert [g.goal_id for g in source.load().goals] == ["env-logins"]
    assert json.dumps(ONE_GOAL) not in repr(source)  # a secret: never in a repr or a log


def test_without_the_variable_the_file_is_the_source(tmp_path: Path):
    source = config_source(Settings.from_env({"CONFIG_PATH": str(CONFIG_FILE)}))
    assert (source.label, source.path, source.reloadable) == (str(CONFIG_FILE), CONFIG_FILE, True)
    assert source.load() == load_config(CONFIG_FILE)


def test_validated_exactly_as_the_file_each_line_naming_the_variable(tmp_path: Path):
    bad = {
        "challenges": [
            {"challengeId": "a", "goals": [{"goalId": "", "eventSource": "weather"}]},
            {"challengeId": "a", "goals": []},
        ]
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError) as from_file:
        load_config(path)
    for raw in (json.dumps(bad), b64(json.dumps(bad).encode())):
        assert problems(raw) == [f"CHALLENGES_JSON: {p}" for p in from_file.value.problems]
    assert len(from_file.value.problems) >= 3


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("not base64 at all!", "neither a JSON object"),
        ("abcde", "neither a JSON object"),  # base64 letters, impossible length
        ("e30=e30=", "neither a JSON object"),  # padding in the middle
        (b64(b'{"challenges": [\xff\xfe]}'), "not UTF-8 text (byte 16)"),
        (b64(b"\x89PNG\r\n\x1a\n"), "not UTF-8 text"),
        ('{"challenges": "x\x00"}', "contains a NUL character"),
        (b64(b'{"challenges": [], "x": "\x00"}'), "text with a NUL character"),
        ("[1, 2]", 'must be a JSON object with "challenges", got a list'),
        (b64(b"[]"), "got a list"),
        (b64(b"42"), "not a JSON object"),
        (b64(b"hello"), "not a JSON object"),
        ("{definitely not json", "invalid JSON at line 1"),
        ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
        ('{"challenges": []}', 'needs at least one challenge in "challenges"'),
        ('{"challenges": {"a": 1}}', "needs at least one challenge"),
        ("x" * (MAX_CHARS + 1), f"too large ({MAX_CHARS + 1:,} characters"),
    ],
    ids=lambda v: v[:24] if isinstance(v, str) else None,
)
def test_hostile_values_are_refused_naming_the_variable(raw: str, says: str):
    found = problems(raw)
    assert found and all(p.startswith("CHALLENGES_JSON: ") for p in found), found
    assert says in "\n".join(found)
    assert all(len(p) < 400 for p in found)  # one readable line each, not the value echoed


def test_a_huge_value_is_refused_before_it_is_decoded():
    huge = b64(json.dumps({"challenges": ["x" * MAX_CHARS]}).encode())
    assert problems(huge) == [
        f"CHALLENGES_JSON: too large ({len(huge):,} characters; at most {MAX_CHARS:,})"
    ]


@examples(max_examples=60)
@given(st.text(max_size=300))
def test_any_text_is_a_config_or_a_refusal_naming_the_variable(raw: str):
    try:
        config_from_env(raw)
    except ConfigError as exc:
        assert all(p.startswith("CHALLENGES_JSON: ") for p in exc.problems)


@examples(max_examples=60)
@given(st.binary(max_size=300))
def test_any_bytes_in_base64_are_a_config_or_a_refusal_naming_the_variable(raw: bytes):
    try:
        config_from_env(b64(raw))
    except ConfigError as exc:
        assert all(p.startswith("CHALLENGES_JSON: ") for p in exc.problems)
