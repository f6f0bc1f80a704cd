"""The gauges a dashboard and alert rules need beyond the hot-path counters.

``synthd.metrics`` exports what the pipeline counts; this collector adds what is read
from the daemon's state at scrape time: each job's provider and model (``synthd_job_info``,
to join per-job counters to their provider's budget), the budget itself, each job's
backlog, whether the output is blocked, the writer's commit latency and the version.

Every family is yielded on every scrape, samples or not, so its ``# HELP`` and ``# TYPE``
lines are there from start-up: a dashboard panel or an alert over a series that has not
happened yet reads "no data", never "unknown metric".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from synthd.histogram import Histogram
from synthd.metrics import JobStats
from synthd.progress import backlog_items


@dataclass(frozen=True, slots=True)
class JobInfo:
    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class Limits:
    """A provider's budget as it stands (configured, or adopted from its headers)."""

    rpm: float
    tpm: float


class MonitorCollector(Collector):
    """Read on the daemon's loop at each scrape; holds the daemon's own objects."""

    def __init__(
        self,
        version: str,
        jobs: Mapping[str, JobStats],
        info: Mapping[str, JobInfo],
        limits: Callable[[], Mapping[str, Limits]],
        output_blocked: Callable[[], str | None],
        commit_s: Histogram | None,
    ) -> None:
        self.version = version
        self.jobs = jobs
        self.info = info
        self.limits = limits
        self.output_blocked = output_blocked
        self.commit_s = commit_s

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily("synthd_build_info", "Always 1: the version", labels=["version"])
        build.add_metric([self.version], 1)
        info = GaugeMetricFamily(
            "synthd_job_info",
            "Always 1: a job's provider and model (join per-job series on job)",
            labels=["job", "provider", "model"],
        )
        backlog = GaugeMetricFamily(
            "synthd_backlog_items",
            "Items known to be left: admitted and not done, plus unread input in items",
            labels=["job"],
        )
        for name, s in self.jobs.items():
            if (i := self.info.get(name)) is not None:
                info.add_metric([name, i.provider, i.model], 1)
            backlog.add_metric([name], round(backlog_items(s), 1))
        rpm = GaugeMetricFamily(
            "synthd_budget_requests_per_minute", "The request budget", labels=["provider"]
        )
        tpm = GaugeMetricFamily(
            "synthd_budget_tokens_per_minute", "The token budget", labels=["provider"]
        )
        for name, lim in self.limits().items():
            rpm.add_metric([name], lim.rpm)
            tpm.add_metric([name], lim.tpm)
        blocked = GaugeMetricFamily(
            "synthd_output_blocked", "1 while the writer cannot write (disk full, read-only)"
        )
        blocked.add_metric([], 0 if self.output_blocked() is None else 1)
        commit = HistogramMetricFamily(
            "synthd_writer_commit_seconds",
            "From a batch handed to the writer's thread to it being durable",
        )
        if self.commit_s is not None:
            commit.add_metric([], self.commit_s.cumulative(), self.commit_s.sum)
        yield from (build, info, backlog, rpm, tpm, blocked, commit)
