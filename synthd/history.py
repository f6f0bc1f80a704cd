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
class Point:
    """One interval of the chart: how long ago it ended, and its rates."""

    ago_s: float
    requests_per_min: float
    tokens_per_min: float
    rate_limited: int  # 429s in the interval


@dataclass(slots=True)
class History:
    keep: int = int(WINDOW_S / EVERY_S) + 1
    providers: dict[str, deque[ProviderSample]] = field(default_factory=dict)
    jobs: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)

    def sample_provider(self, name: str, sample: ProviderSample) -> None:
        self.providers.setdefault(name, deque(maxlen=self.keep)).append(sample)

    def sample_job(self, name: str, at: float, items_done: int) -> None:
        self.jobs.setdefault(name, deque(maxlen=self.keep)).append((at, items_done))

    def points(self, name: str, now: float) -> list[Point]:
        """The provider's rates per interval, oldest first."""
        samples = list(self.providers.get(name, ()))
        out = []
        for a, b in itertools.pairwise(samples):
            span_min = (b.at - a.at) / 60.0
            if span_min <= 0:
                continue
            out.append(
                Point(
                    ago_s=round(now - b.at, 1),
                    requests_per_min=round(max(0, b.requests - a.requests) / span_min, 2),
                    tokens_per_min=round(max(0, b.tokens - a.tokens) / span_min, 1),
                    rate_limited=max(0, b.rate_limited - a.rate_limited),
                )
            )
        return out

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
