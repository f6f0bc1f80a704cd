"""Counters kept on the hot path as plain ints, exported to Prometheus on scrape.

Incrementing a prometheus-client labelled counter costs a lock and a dict look-up
per call; at thousands of requests a second that is real CPU. So the pipeline
bumps slotted ints, and ``StatsCollector`` turns them into metric families only
when ``/metrics`` is read. The progress log line reads the same counters.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(slots=True)
class JobStats:
    """One job's running totals since start-up."""

    requests: dict[str, int] = field(default_factory=dict)  # by status or error kind
    prompt_tokens: int = 0
    completion_tokens: int = 0
    records: int = 0
    rejects: dict[str, int] = field(default_factory=dict)  # by reason
    retries: int = 0
    dead: int = 0
    bad_input: int = 0
    items_done: int = 0
    items_queued: int = 0
    # For the ETA: bytes of input known to exist (claimed files from their resume
    # point, plus unclaimed files at the last scan) and bytes read into items so far.
    bytes_claimed: int = 0
    bytes_read: int = 0
    bytes_unclaimed: int = 0
    backlog: int | None = None  # items known to exist, when a reader could tell
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0
    # Batch mode: open batches by state, the requests in them, batches created.
    batches: dict[str, int] = field(default_factory=dict)
    batch_requests: int = 0
    batches_created: int = 0

    def count(self, status: str) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1

    def observe_latency(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.latency_sum_s += seconds

    def reject(self, reason: str, count: int = 1) -> None:
        self.rejects[reason] = self.rejects.get(reason, 0) + count


@dataclass(slots=True)
class ProviderStats:
    in_flight: int = 0
    queued: int = 0
    rate_limited: int = 0
    answered: bool = False  # readiness: the provider has answered at least once
    up: bool = True  # false during an outage (see synthd.circuit)
    outages: int = 0


class StatsCollector(Collector):
    """A prometheus-client collector over the daemon's live counters."""

    def __init__(self, jobs: dict[str, JobStats], providers: dict[str, ProviderStats]) -> None:
        self.jobs = jobs
        self.providers = providers

    def collect(self) -> Iterator[Metric]:
        req = CounterMetricFamily(
            "synthd_requests",
            "Requests by outcome (HTTP status or error kind)",
            labels=["job", "status"],
        )
        tokens = CounterMetricFamily(
            "synthd_tokens", "Tokens counted by the provider", labels=["job", "kind"]
        )
        records = CounterMetricFamily("synthd_records_written", "Records accepted", labels=["job"])
        rejects = CounterMetricFamily(
            "synthd_rejects", "Completions rejected by filters", labels=["job", "reason"]
        )
        retries = CounterMetricFamily("synthd_retries", "Requests sent again", labels=["job"])
        dead = CounterMetricFamily("synthd_dead_letters", "Items given up on", labels=["job"])
        done = CounterMetricFamily(
            "synthd_items_done", "Items with a durable outcome", labels=["job"]
        )
        latency = HistogramMetricFamily(
            "synthd_request_latency_seconds", "Time from send to parsed reply", labels=["job"]
        )
        for name, s in self.jobs.items():
            for status, n in s.requests.items():
                req.add_metric([name, status], n)
            tokens.add_metric([name, "prompt"], s.prompt_tokens)
            tokens.add_metric([name, "completion"], s.completion_tokens)
            records.add_metric([name], s.records)
            for reason, n in s.rejects.items():
                rejects.add_metric([name, reason], n)
            retries.add_metric([name], s.retries)
            dead.add_metric([name], s.dead)
            done.add_metric([name], s.items_done)
            buckets, running = [], 0
            for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), s.latency_counts, strict=True):
                running += n
                buckets.append((str(bound) if bound != float("inf") else "+Inf", running))
            latency.add_metric([name], buckets, s.latency_sum_s)
        yield from (req, tokens, records, rejects, retries, dead, done, latency)
        yield from _batch_families(self.jobs)
        in_flight = GaugeMetricFamily(
            "synthd_in_flight", "Requests on the wire", labels=["provider"]
        )
        queued = GaugeMetricFamily(
            "synthd_queue_depth", "Items waiting for a sender", labels=["provider"]
        )
        limited = CounterMetricFamily(
            "synthd_rate_limited", "HTTP 429 replies", labels=["provider"]
        )
        up = GaugeMetricFamily(
            "synthd_provider_up", "1 while it answers, 0 in an outage", labels=["provider"]
        )
        outages = CounterMetricFamily(
            "synthd_provider_outages", "Times it failed for everyone", labels=["provider"]
        )
        for name, p in self.providers.items():
            in_flight.add_metric([name], p.in_flight)
            queued.add_metric([name], p.queued)
            limited.add_metric([name], p.rate_limited)
            up.add_metric([name], 1 if p.up else 0)
            outages.add_metric([name], p.outages)
        yield from (in_flight, queued, limited, up, outages)


def _batch_families(jobs: dict[str, JobStats]) -> Iterator[Metric]:
    """Batch mode's: open batches by state, the requests in them, batches created."""
    open_ = GaugeMetricFamily("synthd_batches", "Open batches by state", labels=["job", "state"])
    pending = GaugeMetricFamily("synthd_batch_requests", "Requests in open batches", labels=["job"])
    created = CounterMetricFamily("synthd_batches_created", "Batches created", labels=["job"])
    for name, s in jobs.items():
        for state, n in s.batches.items():
            open_.add_metric([name, state], n)
        if s.batches or s.batches_created:
            pending.add_metric([name], s.batch_requests)
            created.add_metric([name], s.batches_created)
    yield from (open_, pending, created)
