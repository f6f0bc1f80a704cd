from prometheus_client import CollectorRegistry, generate_latest

from synthd.histogram import Histogram
from synthd.metrics import JobStats
from synthd.monitor import JobInfo, Limits, MonitorCollector

FAMILIES = (
    "synthd_build_info",
    "synthd_job_info",
    "synthd_backlog_items",
    "synthd_budget_requests_per_minute",
    "synthd_budget_tokens_per_minute",
    "synthd_output_blocked",
    "synthd_writer_commit_seconds",
)


def scrape(collector: MonitorCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_every_family_is_declared_with_nothing_to_show() -> None:
    text = scrape(MonitorCollector("1.0", {}, {}, dict, lambda: None, None))
    for name in FAMILIES:
        assert f"# TYPE {name} " in text and f"# HELP {name} " in text


def test_the_gauges_read_the_daemons_state() -> None:
    s = JobStats()
    s.items_queued, s.items_done = 8, 3
    commits = Histogram((0.01, 0.1))
    commits.observe(0.05)
    blocked: list[str | None] = ["disk full"]
    text = scrape(
        MonitorCollector(
            "1.0",
            {"q": s},
            {"q": JobInfo("p", "m")},
            lambda: {"p": Limits(600.0, 90000.0)},
            lambda: blocked[0],
            commits,
        )
    )
    assert 'synthd_job_info{job="q",model="m",provider="p"} 1.0' in text
    assert 'synthd_backlog_items{job="q"} 5.0' in text
    assert 'synthd_budget_requests_per_minute{provider="p"} 600.0' in text
    assert "synthd_output_blocked 1.0" in text
    assert 'synthd_writer_commit_seconds_bucket{le="0.1"} 1.0' in text
    assert 'synthd_build_info{version="1.0"} 1.0' in text
