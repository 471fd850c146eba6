"""contract §3: both dialects, every validation rule, the goal index, exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.challenges import ConfigError, Kind, Schedule, Source, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]

CURRENT = {
    "challenges": [
        {
            "challengeId": "career",
            "name": "Career",
            "goals": [
                {
                    "goalId": "daily-login",
                    "name": "daily-login",
                    "eventSource": "login",
                    "type": "daily",
                    "requirement": {"targetValue": 1, "operator": ">="},
                },
                {
                    "goalId": "win-10",
                    "name": "win-10",
                    "eventSource": "statistic",
                    "requirement": {"statCode": "match_wins", "targetValue": 10, "operator": ">="},
                    "reward": {"type": "ITEM", "rewardId": "sword", "quantity": 1},
                    "prerequisites": ["daily-login"],
                },
                {
                    "goalId": "streak",
                    "name": "streak",
                    "eventSource": "login",
                    "type": "increment",
                    "daily": True,
                    "requirement": {"targetValue": 7},
                },
            ],
        },
        {
            "challengeId": "weekly",
            "name": "weekly",
            "rotation": {
                "enabled": True,
                "type": "global",
                "schedule": "weekly",
                "onExpiry": {"resetProgress": True, "allowReselection": False},
            },
            "goals": [
                {
                    "goalId": "kills",
                    "name": "kills",
                    "eventSource": "statistic",
                    "requirement": {
                        "statCode": "kills",
                        "targetValue": 50,
                        "progressMode": "relative",
                    },
                }
            ],
        },
    ]
}

LEGACY = {
    "challenges": [
        {
            "id": "career",
            "name": "Career",
            "goals": [
                {"id": "daily-login", "event_source": "login", "type": "daily", "target_value": 1},
                {
                    "id": "win-10",
                    "event_source": "statistic:match_wins",
                    "requirement": {"target": 10},
                    "reward": {"type": "ITEM", "reward_id": "sword", "quantity": 1},
                    "prerequisites": ["daily-login"],
                },
                {
                    "id": "streak",
                    "event_source": "login",
                    "type": "increment",
                    "daily": True,
                    "target_value": 7,
                },
            ],
        },
        {
            "id": "weekly",
            "name": "weekly",
            "rotation": {
                "enabled": True,
                "type": "global",
                "schedule": "weekly",
                "on_expiry": {"reset_progress": True, "allow_reselection": False},
            },
            "goals": [
                {
                    "id": "kills",
                    "event_source": "statistic:kills",
                    "target_value": 50,
                    "progress_mode": "relative",
                }
            ],
        },
    ]
}


def test_both_dialects_load_to_equal_models():
    current, legacy = parse_config(CURRENT), parse_config(LEGACY)
    assert current == legacy
    kills = current.goal("kills")
    assert kills.relative and kills.rotation.schedule is Schedule.WEEKLY
    assert kills.rotation.reset_progress and not kills.rotation.allow_reselection
    assert current.goal("streak").kind is Kind.INCREMENT and current.goal("streak").daily
    assert current.goal("win-10").reward.reward_id == "sword"


def test_keys_match_case_insensitively():
    shouting = json.loads(
        json.dumps(CURRENT)
        .replace('"goalId"', '"GoalID"')
        .replace('"eventSource"', '"EVENTSOURCE"')
    )
    assert parse_config(shouting) == parse_config(CURRENT)


def test_legacy_name_defaults_to_the_id():
    assert parse_config(LEGACY).goal("streak").name == "streak"


def test_goal_index_is_keyed_by_source_and_stat_code():
    config = parse_config(CURRENT)
    assert [g.goal_id for g in config.goals_for(Source.LOGIN)] == ["daily-login", "streak"]
    assert [g.goal_id for g in config.goals_for(Source.STATISTIC, "match_wins")] == ["win-10"]
    assert config.goals_for(Source.STATISTIC, "unknown") == ()


def _problems(mutate) -> list[str]:
    data = json.loads(json.dumps(CURRENT))
    mutate(data)
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.problems


def _goal(data, i=1, challenge=0):
    return data["challenges"][challenge]["goals"][i]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(challenges=[]), 'config: needs at least one challenge in "challenges"'),
        (
            lambda d: d["challenges"][1].update(challengeId="career"),
            'challenge "career": duplicate challenge id',
        ),
        (
            lambda d: d["challenges"][1].update(challengeId=""),
            "challenge #2: challenge id must not be empty",
        ),
        (
            lambda d: _goal(d).update(goalId=""),
            'challenge "career" goal "?": goal id must not be empty',
        ),
        (
            lambda d: _goal(d, 0, 1).update(goalId="win-10"),
            'challenge "weekly" goal "win-10": duplicate goal id (also in challenge "career")',
        ),
        (
            lambda d: _goal(d).update(eventSource="purchase"),
            'challenge "career" goal "win-10": event source must be "login" or "statistic", got "purchase"',
        ),
        (
            lambda d: _goal(d)["requirement"].pop("statCode"),
            'challenge "career" goal "win-10": statistic event source needs a statCode',
        ),
        (
            lambda d: _goal(d)["requirement"].update(targetValue=0),
            'challenge "career" goal "win-10": target must be > 0, got 0',
        ),
        (
            lambda d: _goal(d)["requirement"].update(operator=">"),
            'challenge "career" goal "win-10": operator must be ">=", got ">"',
        ),
        (
            lambda d: _goal(d)["reward"].update(type="GEMS"),
            'challenge "career" goal "win-10": reward type must be ITEM or WALLET, got "GEMS"',
        ),
        (
            lambda d: _goal(d)["reward"].update(rewardId=""),
            'challenge "career" goal "win-10": reward rewardId must not be empty',
        ),
        (
            lambda d: _goal(d)["reward"].update(quantity=0),
            'challenge "career" goal "win-10": reward quantity must be > 0, got 0',
        ),
        (
            lambda d: _goal(d).update(prerequisites=["nope"]),
            'challenge "career" goal "win-10": prerequisite goal "nope" does not exist',
        ),
        (
            lambda d: _goal(d, 0).update(prerequisites=["win-10"]),
            'challenge "career" goal "win-10": prerequisites form a cycle: daily-login -> win-10 -> daily-login',
        ),
        (
            lambda d: _goal(d).update(daily=True),
            'challenge "career" goal "win-10": daily: true is only allowed with type "increment", not "absolute"',
        ),
        (
            lambda d: d["challenges"][1]["rotation"].update(type="personal"),
            'challenge "weekly": rotation type must be "global", got "personal"',
        ),
        (
            lambda d: d["challenges"][1]["rotation"].update(schedule="hourly"),
            'challenge "weekly": rotation schedule must be daily, weekly or monthly, got "hourly"',
        ),
        (
            lambda d: _goal(d, 0, 1)["requirement"].pop("progressMode"),
            'challenge "weekly" goal "kills": an enabled rotation needs progressMode "relative"',
        ),
        (
            lambda d: _goal(d)["requirement"].update(progressMode="percent"),
            'challenge "career" goal "win-10": progressMode must be "absolute" or "relative", got "percent"',
        ),
        (
            lambda d: _goal(d).update(type="streaky"),
            'challenge "career" goal "win-10": type must be absolute, increment or daily, got "streaky"',
        ),
    ],
)
def test_each_validation_rule_names_challenge_and_goal(mutate, expected):
    assert expected in _problems(mutate)


def test_every_problem_is_reported_not_just_the_first():
    def mutate(d):
        _goal(d)["requirement"].update(targetValue=-1)
        _goal(d, 0).update(eventSource="")

    assert len(_problems(mutate)) == 2


def test_broken_file_exits_2_with_one_line_per_problem(tmp_path):
    bad = json.loads(json.dumps(CURRENT))
    _goal(bad)["requirement"]["targetValue"] = 0
    _goal(bad)["reward"]["type"] = "GEMS"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    done = subprocess.run(
        [sys.executable, "-m", "app", "config", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        'error: challenge "career" goal "win-10": target must be > 0, got 0',
        'error: challenge "career" goal "win-10": reward type must be ITEM or WALLET, got "GEMS"',
    ]
    assert "Traceback" not in done.stderr


def test_invalid_json_is_one_clear_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"challenges": [')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith(f"{path}: invalid JSON at line 1")


def test_shipped_config_is_valid_and_summarised():
    done = subprocess.run(
        [sys.executable, "-m", "app", "config", "check", "config/challenges.json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "5 challenges, 11 goals" in done.stdout
