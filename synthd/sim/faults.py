"""Which fault, if any, the n-th admitted request suffers. Pure and reproducible.

The draw for request ``counter`` is the ``counter``-th output of a SplitMix64 generator seeded
with the fault seed: a counter-based RNG, so the choice depends only on (seed, counter), costs
a few integer operations and needs no shared generator state. At most one fault per request:
one uniform draw is compared with the cumulative probabilities in the order of FAULT_NAMES.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

Fault = Literal[
    "500",  # 500 with OpenAI's server_error body
    "503",  # 503 "engine overloaded"
    "hang",  # sleep hang_s (the client's timeout fires first), then answer normally
    "drop",  # close the connection without a response
    "truncate",  # 200 whose JSON body is cut in half
    "html",  # 502 with an HTML body from a "proxy"
    "empty_choices",  # 200 with choices: []
    "content_filter",  # 200, one choice, finish_reason content_filter, no content
    "no_usage",  # 200 without usage
]
FAULT_NAMES: tuple[Fault, ...] = get_args(Fault)

_MASK64 = (1 << 64) - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15


def uniform(seed: int, counter: int) -> float:
    """The ``counter``-th draw in [0, 1) of SplitMix64 seeded with ``seed``."""
    z = (seed + (counter + 1) * _GOLDEN_GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z >> 11) * (1.0 / (1 << 53))


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Cumulative thresholds over the faults with a non-zero probability, in FAULT_NAMES order."""

    seed: int
    thresholds: tuple[tuple[float, Fault], ...]

    @classmethod
    def from_probabilities(cls, probabilities: Mapping[str, float], seed: int) -> FaultPlan:
        """Raises ValueError for an unknown fault name, a p outside [0, 1] or a sum above 1."""
        unknown = set(probabilities) - set(FAULT_NAMES)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        total = 0.0
        thresholds: list[tuple[float, Fault]] = []
        for name in FAULT_NAMES:
            p = probabilities.get(name, 0.0)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"probability of {name} must be in [0, 1], got {p}")
            if p > 0:
                total += p
                thresholds.append((total, name))
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities sum to {total:.3f} > 1")
        return cls(seed, tuple(thresholds))

    @property
    def active(self) -> bool:
        return bool(self.thresholds)

    def choose(self, counter: int) -> Fault | None:
        """The fault of the ``counter``-th admitted request, or None for a normal answer."""
        if not self.thresholds:
            return None
        u = uniform(self.seed, counter)
        for threshold, name in self.thresholds:
            if u < threshold:
                return name
        return None
