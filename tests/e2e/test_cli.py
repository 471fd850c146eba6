"""The README's first command and the replay/progress commands, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "AB_NAMESPACE")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=120,
    )


def test_demo_runs_on_the_embedded_default_and_shows_progress(tmp_path):
    done = run("demo", "--db", str(tmp_path / "demo.db"))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "read 64 lines" in out and "61 applied, 1 duplicates, 2 invalid" in out
    assert "user alice" in out and "user chen:eu" in out
    alice = out.split("user alice", 1)[1].split("user bob", 1)[0]
    assert "kills-500         225       in_progress" in alice
    assert "daily-login       1         completed    2026-11-25 08:05:00" in alice


def test_replay_then_progress_against_postgres(pg_url, tmp_path):
    import asyncio

    from sqlalchemy import text

    from app.core.settings import async_database_url
    from tables.db import make_engine

    async def clean():
        engine = make_engine(async_database_url("DATABASE_URL", pg_url))
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM user_goal_progress WHERE user_id LIKE 'cli-%'"))
        await engine.dispose()

    asyncio.run(clean())
    events = tmp_path / "events.jsonl"
    lines = [
        {
            "id": f"c{i}",
            "namespace": "mygame",
            "userId": "cli-1",
            "timestamp": f"2026-11-2{i}T10:00:00Z",
            "payload": {},
        }
        for i in range(3)
    ]
    lines.append(
        {
            "id": "s1",
            "payload": {
                "userId": "cli-1",
                "namespace": "mygame",
                "statCode": "match_wins",
                "value": 12.9,
            },
        }
    )
    events.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    env = {"DATABASE_URL": pg_url, "LOG_LEVEL": "warning"}
    done = run("replay", str(events), env=env)
    assert done.returncode == 0, done.stderr
    assert "read 4 lines" in done.stdout and "4 applied, 0 duplicates" in done.stdout
    shown = run("progress", "cli-1", env=env)
    assert shown.returncode == 0, shown.stderr
    table = {line.split()[1]: line.split() for line in shown.stdout.splitlines()[2:]}
    assert table["login-30"][2:4] == ["3", "in_progress"]
    assert table["login-streak-7"][2] == "3"
    assert table["win-10"][2:4] == ["12", "completed"]


def test_replay_of_a_missing_file_is_a_clear_error(tmp_path):
    done = run("replay", str(tmp_path / "nope.jsonl"))
    assert done.returncode == 2
    assert "no such file" in done.stderr


def test_bad_setting_is_named_and_exits_2(tmp_path):
    done = run("replay", str(tmp_path / "x.jsonl"), env={"DB_BATCH_SIZE": "zero"})
    assert done.returncode == 2
    assert done.stderr.strip() == "error: DB_BATCH_SIZE: expected a whole number, got 'zero'"
