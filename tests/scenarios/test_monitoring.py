"""The monitoring kit beside /metrics: deploy/prometheus/alerts.yml, deploy/grafana/synthd.json.

The rules are checked and unit-tested by Prometheus's own ``promtool`` (on synthetic series,
``deploy/prometheus/alerts_test.yml``); the dashboard's queries are checked as PromQL by the
same tool, and every metric they or the rules name must be declared (``# TYPE``) by a real
daemon's ``/metrics`` before its first event: a panel must never say "unknown metric".
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from synthd import config
from synthd.daemon import Daemon
from synthd.sim import SimConfig, running_sim
from tests.helpers import ROOT, Workdir, simple_job, write_provider_config

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "synthd.json"
METRIC = re.compile(r"\bsynthd_[a-z0-9_]+\b")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("needs Debian's prometheus (promtool; make sysdeps installs it as root)")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60, check=False)


def dashboard_queries() -> list[str]:
    model = orjson.loads(DASHBOARD.read_bytes())
    return [t["expr"] for p in model["panels"] for t in p["targets"]]


def rule_queries() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for g in groups for rule in g["rules"]]


def family(sample_name: str, declared: set[str]) -> str:
    """The family a sample name belongs to (``x_total`` -> ``x``, ``x_bucket`` -> ``x``)."""
    if sample_name in declared:
        return sample_name
    for suffix in SUFFIXES:
        if sample_name.endswith(suffix) and sample_name.removesuffix(suffix) in declared:
            return sample_name.removesuffix(suffix)
    return sample_name


def test_alert_rules_pass_promtool_check() -> None:
    got = promtool("check", "rules", str(RULES))
    assert got.returncode == 0, got.stdout + got.stderr
    assert "SUCCESS: 5 rules found" in got.stdout


def test_alert_rules_fire_on_trouble_and_not_on_health() -> None:
    """alerts_test.yml: a stalled job fires, a moving and a finished one do not; likewise
    dead letters, an open circuit, blocked output and a 429 share over 2 %."""
    got = promtool("test", "rules", str(RULE_TESTS))
    assert got.returncode == 0, got.stdout + got.stderr
    tested = {
        t["alertname"]
        for c in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for t in c["alert_rule_test"]
    }
    named = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert tested == named


def test_dashboard_queries_are_promql(tmp_path: Path) -> None:
    """Each panel's query, as a recording rule, passes promtool (Grafana's $__rate_interval
    becomes a plain range)."""
    exprs = dashboard_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": e.replace("$__rate_interval", "5m")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    got = promtool("check", "rules", str(path))
    assert got.returncode == 0, got.stdout + got.stderr


def test_dashboard_model() -> None:
    """A Grafana model: unique panel ids, every query on the dashboard's data source
    variable, panels that do not overlap, and the topics the dashboard promises."""
    model: dict[str, Any] = orjson.loads(DASHBOARD.read_bytes())
    assert model["uid"] == "synthd"
    assert [v["name"] for v in model["templating"]["list"]] == ["datasource"]
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in model["panels"]:
        assert p["datasource"]["uid"] == "${datasource}"
        assert p["targets"] and all(t["expr"] for t in p["targets"])
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, p["title"]
        cells |= mine
    used = {m for e in dashboard_queries() for m in METRIC.findall(e)}
    promised = {
        "synthd_items_done_total",  # throughput
        "synthd_budget_requests_per_minute",
        "synthd_budget_tokens_per_minute",
        "synthd_rate_limited_total",
        "synthd_rejects_total",
        "synthd_dead_letters_total",
        "synthd_backlog_items",
        "synthd_event_loop_lag_seconds_bucket",
        "synthd_writer_commit_seconds_bucket",
    }
    assert promised <= used


async def test_every_metric_used_is_declared_before_the_first_event(work: Workdir) -> None:
    """A daemon with nothing to do yet: its first /metrics already has the ``# HELP`` and
    ``# TYPE`` of every family the dashboard and the alert rules query."""
    async with running_sim(SimConfig(port=0)) as sim:
        path = write_provider_config(
            work, sim.base_url, simple_job(), service_keys={"listen": "127.0.0.1:0"}
        )
        work.spool("q")
        daemon = Daemon(config.load(path), handle_signals=False)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(daemon.ready.wait(), 20)
            url = f"http://127.0.0.1:{daemon.http_port}/metrics"
            async with aiohttp.ClientSession() as http, http.get(url) as resp:
                text = await resp.text()
            done = daemon.jobs["q"].stats.items_done
        finally:
            daemon.stop()
            assert await asyncio.wait_for(task, 20) == 0
    assert done == 0
    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    helped = set(re.findall(r"^# HELP (\S+) ", text, re.M))
    used = {m for e in dashboard_queries() + rule_queries() for m in METRIC.findall(e)}
    families = {family(m, declared) for m in used}
    assert families <= declared, sorted(families - declared)
    assert families <= helped


def test_compose_monitoring_profile_loads_the_dashboard_and_rules() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    for name in ("prometheus", "grafana"):
        assert compose[name]["profiles"] == ["monitoring"]
        for volume in compose[name]["volumes"]:
            assert (ROOT / volume.split(":")[0]).exists(), volume
    mounts = " ".join(compose["grafana"]["volumes"] + compose["prometheus"]["volumes"])
    assert "deploy/grafana/synthd.json" in mounts and "deploy/prometheus/alerts.yml" in mounts
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["honor_labels"] is True  # synthd's own `job` label
    assert "SYNTHD_STATUS_TOKEN" in compose["synthd"]["environment"]
