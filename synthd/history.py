"""The last 15 minutes of the daemon's counters, sampled every few seconds. Pure.

The status page draws each provider's request and token rate against its budget from
these samples, and each job's ETA comes from its recent rate. Memory is bounded: a
fixed number of samples (``keep``) per provider and per job, each a few numbers.
The caller passes the time (the loop's clock), so tests move it by hand.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 15 * 60.0
EVERY_S = 5.0
RATE_OVER_S = 60.0  # a job's rate (for its ETA) is measured over the last minute


@dataclass(frozen=True, slots=True)
class ProviderSample:
    at: float
    requests: int
    tokens: int
    rate_limited: int


@dataclass(frozen=True, slots=True)
class Chart:
    """A provider's intervals, oldest first, as columns (compact in JSON): for each, how
    long before the newest sample it ended, its requests and tokens per minute, and the
    429s in it. Built once per sample and kept: a page polling often costs one encode."""

    ago_s: list[float]
    requests_per_min: list[float]
    tokens_per_min: list[float]
    rate_limited: list[int]

    def to_json(self) -> dict[str, list[float] | list[int]]:
        return {
            "ago_s": self.ago_s,
            "requests_per_min": self.requests_per_min,
            "tokens_per_min": self.tokens_per_min,
            "rate_limited": self.rate_limited,
        }


@dataclass(slots=True)
class History:
    keep: int = int(WINDOW_S / EVERY_S) + 1
    providers: dict[str, deque[ProviderSample]] = field(default_factory=dict)
    jobs: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)
    _charts: dict[str, Chart] = field(default_factory=dict)

    def sample_provider(self, name: str, sample: ProviderSample) -> None:
        self.providers.setdefault(name, deque(maxlen=self.keep)).append(sample)
        self._charts.pop(name, None)

    def sample_job(self, name: str, at: float, items_done: int) -> None:
        self.jobs.setdefault(name, deque(maxlen=self.keep)).append((at, items_done))

    def age_s(self, name: str, now: float) -> float | None:
        """How long ago the provider's newest sample was taken; None before the first."""
        samples = self.providers.get(name)
        return round(now - samples[-1].at, 1) if samples else None

    def chart(self, name: str) -> Chart:
        """The provider's rates per interval, oldest first (cached until the next sample)."""
        if (cached := self._charts.get(name)) is not None:
            return cached
        chart = Chart([], [], [], [])
        samples = self.providers.get(name, deque())
        newest = samples[-1].at if samples else 0.0
        for a, b in itertools.pairwise(samples):
            span_min = (b.at - a.at) / 60.0
            if span_min <= 0:
                continue
            chart.ago_s.append(round(newest - b.at, 1))
            chart.requests_per_min.append(round(max(0, b.requests - a.requests) / span_min, 1))
            chart.tokens_per_min.append(round(max(0, b.tokens - a.tokens) / span_min))
            chart.rate_limited.append(max(0, b.rate_limited - a.rate_limited))
        self._charts[name] = chart
        return chart

    def items_per_s(self, name: str, now: float, done_now: int) -> float:
        """The job's rate since the oldest sample within the last minute; 0 if unknown."""
        since = None
        for at, done in self.jobs.get(name, ()):
            if now - at <= RATE_OVER_S + EVERY_S:
                since = (at, done)
                break
        if since is None or now <= since[0]:
            return 0.0
        return max(0, done_now - since[1]) / (now - since[0])
