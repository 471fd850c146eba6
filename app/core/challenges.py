"""challenges.json -> one immutable model and the goal index (docs/contract.md §3). Pure,
no I/O beyond reading the file.

Two dialects exist in the wild (camelCase with `challengeId`/`goalId`, and a legacy
snake_case one with `id`, `event_source: "statistic:<code>"`, `target_value`). Keys are
normalised (lower case, no underscores) so each key is recognised whichever dialect
wrote it; values are then read into the same dataclasses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

MAX_ID_LENGTH = 100  # width of the id columns in user_goal_progress


class ConfigError(Exception):
    """The config file cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Source(StrEnum):
    LOGIN = "login"
    STATISTIC = "statistic"


class Kind(StrEnum):
    ABSOLUTE = "absolute"
    INCREMENT = "increment"
    DAILY = "daily"


class Schedule(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


@dataclass(frozen=True, slots=True)
class Rotation:
    schedule: Schedule
    reset_progress: bool
    allow_reselection: bool


@dataclass(frozen=True, slots=True)
class Reward:
    type: str
    reward_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Goal:
    goal_id: str
    challenge_id: str
    name: str
    source: Source
    stat_code: str  # "" for login goals
    target: int
    kind: Kind = Kind.ABSOLUTE
    daily: bool = False  # increment goals only: count at most once per UTC day
    relative: bool = False  # requirement.progressMode == "relative"
    rotation: Rotation | None = None  # only for relative goals of an enabled rotation
    description: str = ""
    default_assigned: bool = False
    reward: Reward | None = None
    prerequisites: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Challenge:
    challenge_id: str
    name: str
    goals: tuple[Goal, ...]
    description: str = ""
    rotation: Rotation | None = None
    prerequisites: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChallengeConfig:
    challenges: tuple[Challenge, ...]
    index: Mapping[tuple[Source, str], tuple[Goal, ...]] = field(repr=False)

    @property
    def goals(self) -> tuple[Goal, ...]:
        return tuple(g for c in self.challenges for g in c.goals)

    def goals_for(self, source: Source, stat_code: str = "") -> tuple[Goal, ...]:
        """O(1): the goals an event of this source (and stat code) moves."""
        return self.index.get((source, stat_code if source is Source.STATISTIC else ""), ())

    def goal(self, goal_id: str) -> Goal | None:
        for g in self.goals:
            if g.goal_id == goal_id:
                return g
        return None


# --------------------------------------------------------------------------- reading


def _norm(obj: Any) -> Any:
    """Keys lower-cased and without underscores, recursively (dialect-neutral)."""
    if isinstance(obj, dict):
        return {str(k).replace("_", "").lower(): _norm(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_norm(v) for v in obj]
    return obj


class _Reader:
    """Collects every problem instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def text(self, data: Mapping[str, Any], *keys: str) -> str:
        for key in keys:
            value = data.get(key)
            if value is not None:
                return str(value).strip()
        return ""

    def flag(self, where: str, data: Mapping[str, Any], key: str, default: bool = False) -> bool:
        value = data.get(key, default)
        if isinstance(value, bool):
            return value
        self.fail(where, f"{key} must be true or false, got {value!r}")
        return default

    def number(self, where: str, value: Any, name: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(where, f"{name} must be a number, got {value!r}"[:300])
            return None
        if not math.isfinite(value):  # json accepts NaN and Infinity
            self.fail(where, f"{name} must be a finite number, got {value!r}")
            return None
        return int(value)


def _storable(text: str) -> bool:
    """PostgreSQL text holds neither NUL nor lone surrogates (json.loads lets both in)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _check_id(r: _Reader, where: str, value: str, label: str) -> None:
    """Ids are stored in the table: non-empty, within the column, storable text."""
    if not value:
        r.fail(where, f"{label} must not be empty")
    elif len(value) > MAX_ID_LENGTH:
        r.fail(where, f"{label} longer than {MAX_ID_LENGTH} characters")
    elif not _storable(value):
        r.fail(where, f"{label} contains invalid characters (NUL or invalid UTF-8)")


def _where(challenge_id: str, goal_id: str | None = None) -> str:
    where = f'challenge "{challenge_id or "?"}"'
    return f'{where} goal "{goal_id or "?"}"' if goal_id is not None else where


def _read_rotation(r: _Reader, where: str, raw: Any) -> tuple[Rotation | None, bool]:
    """Returns (rotation if enabled, whether the block was enabled)."""
    if raw is None:
        return None, False
    if not isinstance(raw, dict):
        r.fail(where, "rotation must be an object")
        return None, False
    if not r.flag(where, raw, "enabled"):
        return None, False
    rtype = r.text(raw, "type") or "global"
    if rtype != "global":
        r.fail(where, f'rotation type must be "global", got "{rtype}"')
    schedule_raw = r.text(raw, "schedule")
    try:
        schedule = Schedule(schedule_raw.lower())
    except ValueError:
        r.fail(where, f'rotation schedule must be daily, weekly or monthly, got "{schedule_raw}"')
        return None, True
    on_expiry = raw.get("onexpiry") or {}
    if not isinstance(on_expiry, dict):
        r.fail(where, "rotation onExpiry must be an object")
        on_expiry = {}
    return (
        Rotation(
            schedule=schedule,
            reset_progress=r.flag(where, on_expiry, "resetprogress"),
            allow_reselection=r.flag(where, on_expiry, "allowreselection"),
        ),
        True,
    )


def _read_reward(r: _Reader, where: str, raw: Any) -> Reward | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        r.fail(where, "reward must be an object")
        return None
    rtype = r.text(raw, "type").upper()
    reward_id = r.text(raw, "rewardid", "id")
    quantity = r.number(where, raw.get("quantity", 0), "reward quantity")
    if rtype not in ("ITEM", "WALLET"):
        r.fail(where, f'reward type must be ITEM or WALLET, got "{rtype}"')
    if not reward_id:
        r.fail(where, "reward rewardId must not be empty")
    if quantity is not None and quantity <= 0:
        r.fail(where, f"reward quantity must be > 0, got {quantity}")
    return Reward(rtype, reward_id, quantity or 0)


def _read_source(
    r: _Reader, where: str, raw: dict[str, Any], requirement: dict[str, Any]
) -> tuple[Source, str]:
    """(event source, stat code): `statistic:<code>` (legacy) or `statistic` + statCode."""
    source_raw = r.text(raw, "eventsource")
    source_name, _, stat_code = source_raw.partition(":")
    stat_code = stat_code.strip() or r.text(requirement, "statcode") or r.text(raw, "statcode")
    try:
        source = Source(source_name.strip().lower())
    except ValueError:
        r.fail(where, f'event source must be "login" or "statistic", got "{source_raw}"')
        source = Source.LOGIN
    if source is Source.STATISTIC and not stat_code:
        r.fail(where, "statistic event source needs a statCode")
    return source, "" if source is Source.LOGIN else stat_code


def _read_target(r: _Reader, where: str, raw: dict[str, Any], requirement: dict[str, Any]) -> int:
    candidates = (
        requirement.get("targetvalue"),
        requirement.get("target"),
        raw.get("targetvalue"),
        raw.get("target"),
    )
    target_raw = next((v for v in candidates if v is not None), None)
    target = 0
    if target_raw is None:
        r.fail(where, "target must be > 0 (missing)")
    else:
        target = r.number(where, target_raw, "target") or 0
        if target <= 0:
            r.fail(where, f"target must be > 0, got {target_raw!r}")
    operator = r.text(requirement, "operator") or ">="
    if operator != ">=":
        r.fail(where, f'operator must be ">=", got "{operator}"')
    return min(target, 2_147_483_647)


def _read_kind(r: _Reader, where: str, raw: dict[str, Any]) -> tuple[Kind, bool]:
    """(kind, daily flag): `daily: true` only with increment goals."""
    kind_raw = (r.text(raw, "type") or "absolute").lower()
    try:
        kind = Kind(kind_raw)
    except ValueError:
        r.fail(where, f'type must be absolute, increment or daily, got "{kind_raw}"')
        kind = Kind.ABSOLUTE
    daily = r.flag(where, raw, "daily")
    if daily and kind is not Kind.INCREMENT:
        r.fail(where, f'daily: true is only allowed with type "increment", not "{kind}"')
    return kind, daily and kind is Kind.INCREMENT


def _read_relative(
    r: _Reader, where: str, raw: dict[str, Any], requirement: dict[str, Any], rotation_on: bool
) -> bool:
    mode = (
        r.text(requirement, "progressmode") or r.text(raw, "progressmode") or "absolute"
    ).lower()
    if mode not in ("absolute", "relative"):
        r.fail(where, f'progressMode must be "absolute" or "relative", got "{mode}"')
    relative = mode == "relative"
    if rotation_on and not relative:
        r.fail(where, 'an enabled rotation needs progressMode "relative"')
    return relative


def _read_goal(
    r: _Reader, challenge_id: str, raw: Any, rotation: Rotation | None, rotation_on: bool
) -> Goal | None:
    if not isinstance(raw, dict):
        r.fail(_where(challenge_id), "every goal must be an object")
        return None
    goal_id = r.text(raw, "goalid", "id")
    where = _where(challenge_id, goal_id)
    _check_id(r, where, goal_id, "goal id")
    requirement = raw.get("requirement") or {}
    if not isinstance(requirement, dict):
        r.fail(where, "requirement must be an object")
        requirement = {}
    source, stat_code = _read_source(r, where, raw, requirement)
    target = _read_target(r, where, raw, requirement)
    kind, daily = _read_kind(r, where, raw)
    relative = _read_relative(r, where, raw, requirement, rotation_on)
    prerequisites = raw.get("prerequisites") or []
    if not isinstance(prerequisites, list):
        r.fail(where, "prerequisites must be a list of goal ids")
        prerequisites = []
    return Goal(
        goal_id=goal_id,
        challenge_id=challenge_id,
        name=r.text(raw, "name") or goal_id,
        source=source,
        stat_code=stat_code,
        target=target,
        kind=kind,
        daily=daily,
        relative=relative,
        rotation=rotation if relative else None,
        description=r.text(raw, "description"),
        default_assigned=r.flag(where, raw, "defaultassigned"),
        reward=_read_reward(r, where, raw.get("reward")),
        prerequisites=tuple(str(p) for p in prerequisites),
    )


def _read_challenge(r: _Reader, raw: Any, position: int) -> Challenge | None:
    if not isinstance(raw, dict):
        r.fail(f"challenge #{position + 1}", "must be an object")
        return None
    challenge_id = r.text(raw, "challengeid", "id")
    where = _where(challenge_id)
    if not challenge_id:
        r.fail(f"challenge #{position + 1}", "challenge id must not be empty")
    elif len(challenge_id) > MAX_ID_LENGTH:
        r.fail(where, f"challenge id longer than {MAX_ID_LENGTH} characters")
    elif not _storable(challenge_id):
        r.fail(where, "challenge id contains invalid characters (NUL or invalid UTF-8)")
    rotation, rotation_on = _read_rotation(r, where, raw.get("rotation"))
    goals_raw = raw.get("goals") or []
    if not isinstance(goals_raw, list) or not goals_raw:
        r.fail(where, "needs at least one goal")
        goals_raw = []
    goals = []
    for goal_raw in goals_raw:
        goal_rotation, goal_rotation_on = (rotation, rotation_on)
        if isinstance(goal_raw, dict) and "rotation" in goal_raw:
            goal_rotation, goal_rotation_on = _read_rotation(
                r, _where(challenge_id, r.text(goal_raw, "goalid", "id")), goal_raw["rotation"]
            )
        goal = _read_goal(r, challenge_id, goal_raw, goal_rotation, goal_rotation_on)
        if goal is not None:
            goals.append(goal)
    prerequisites = raw.get("prerequisites") or []
    if not isinstance(prerequisites, list):
        r.fail(where, "prerequisites must be a list of challenge ids")
        prerequisites = []
    return Challenge(
        challenge_id=challenge_id,
        name=r.text(raw, "name") or challenge_id,
        goals=tuple(goals),
        description=r.text(raw, "description"),
        rotation=rotation,
        prerequisites=tuple(str(p) for p in prerequisites),
    )


def _check_graph(
    r: _Reader,
    edges: Mapping[str, Iterable[str]],
    label: str,
    where_of: Callable[[str], str],
) -> None:
    """Prerequisites must name existing ids and form no cycle."""
    for node, deps in edges.items():
        for dep in deps:
            if dep not in edges:
                r.fail(where_of(node), f'prerequisite {label} "{dep}" does not exist')
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in edges.get(node, ()):
            if dep not in edges:
                continue
            if state.get(dep) == 1:
                cycle = " -> ".join([*path[path.index(dep) :], dep])
                r.fail(where_of(node), f"prerequisites form a cycle: {cycle}")
            elif state.get(dep) is None:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [node])


def parse_config(data: Any) -> ChallengeConfig:
    """Parsed JSON -> validated model, or ConfigError listing every problem."""
    r = _Reader()
    data = _norm(data)
    raw_challenges = data.get("challenges") if isinstance(data, dict) else None
    if not isinstance(raw_challenges, list) or not raw_challenges:
        raise ConfigError(['config: needs at least one challenge in "challenges"'])
    challenges = [
        c for i, raw in enumerate(raw_challenges) if (c := _read_challenge(r, raw, i)) is not None
    ]

    seen_challenges: set[str] = set()
    seen_goals: dict[str, str] = {}
    for challenge in challenges:
        if challenge.challenge_id and challenge.challenge_id in seen_challenges:
            r.fail(_where(challenge.challenge_id), "duplicate challenge id")
        seen_challenges.add(challenge.challenge_id)
        for goal in challenge.goals:
            if goal.goal_id and goal.goal_id in seen_goals:
                r.fail(
                    _where(challenge.challenge_id, goal.goal_id),
                    f'duplicate goal id (also in challenge "{seen_goals[goal.goal_id]}")',
                )
            seen_goals.setdefault(goal.goal_id, challenge.challenge_id)

    goal_edges = {g.goal_id: g.prerequisites for c in challenges for g in c.goals}
    owner = {g.goal_id: g.challenge_id for c in challenges for g in c.goals}
    _check_graph(r, goal_edges, "goal", lambda gid: _where(owner.get(gid, "?"), gid))
    _check_graph(r, {c.challenge_id: c.prerequisites for c in challenges}, "challenge", _where)
    if r.problems:
        raise ConfigError(r.problems)

    index: dict[tuple[Source, str], list[Goal]] = {}
    for challenge in challenges:
        for goal in challenge.goals:
            index.setdefault((goal.source, goal.stat_code), []).append(goal)
    return ChallengeConfig(
        challenges=tuple(challenges), index={k: tuple(v) for k, v in index.items()}
    )


def load_config(path: str | Path) -> ChallengeConfig:
    """Read and validate; every way a file can be unusable is a ConfigError (a SIGHUP
    reload keeps the running config on it, a start exits with the lines)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    return config_from_json(text, str(path))


def read_json(text: str, where: str) -> Any:
    """JSON text -> data; a ConfigError naming `where` when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{where}: invalid JSON at line {exc.lineno}: {exc.msg}"]) from None
    except RecursionError:
        raise ConfigError([f"{where}: invalid JSON: nested too deeply"]) from None


def config_from_data(data: Any, where: str) -> ChallengeConfig:
    """`parse_config`, with every unforeseen failure a ConfigError naming `where`."""
    try:
        return parse_config(data)
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError([f"{where}: config nested too deeply"]) from None
    except Exception as exc:  # a shape the readers did not foresee: refuse, never crash
        raise ConfigError(
            [f"{where}: unusable config: {type(exc).__name__}: {exc}"[:300]]
        ) from None


def config_from_json(text: str, where: str) -> ChallengeConfig:
    """JSON text -> validated config (the file's and the environment's one way in)."""
    return config_from_data(read_json(text, where), where)
