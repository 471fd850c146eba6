"""The operator's kit under deploy/ read as files: the dashboard's queries and the alert
rules (read by the unit tests of the files and by the e2e test that scrapes the metrics
they use)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
RULES = ROOT / "deploy" / "prometheus-rules.yml"
METRIC = re.compile(r"\bchallenge_event_handler_[a-z0-9_]+")


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def used_metrics() -> set[str]:
    names = {m for expr in dashboard_exprs() for m in METRIC.findall(expr)}
    return names | set(METRIC.findall(RULES.read_text()))
