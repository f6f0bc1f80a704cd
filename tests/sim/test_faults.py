"""synthd.sim.faults: the seeded, counter-based fault choice."""

from __future__ import annotations

from collections import Counter

import pytest

from synthd.sim.faults import FAULT_NAMES, FaultPlan, uniform


def test_uniform_is_deterministic_in_range_and_seed_dependent() -> None:
    draws = [uniform(7, i) for i in range(10_000)]
    assert draws == [uniform(7, i) for i in range(10_000)]
    assert all(0.0 <= u < 1.0 for u in draws)
    assert sum(draws) / len(draws) == pytest.approx(0.5, abs=0.02)
    assert draws[:100] != [uniform(8, i) for i in range(100)]


def test_no_faults_configured_means_none_ever() -> None:
    plan = FaultPlan.from_probabilities({}, seed=1)
    assert not plan.active
    assert all(plan.choose(i) is None for i in range(1000))


@pytest.mark.parametrize("name", FAULT_NAMES)
def test_probability_one_always_chooses_that_fault(name: str) -> None:
    plan = FaultPlan.from_probabilities({name: 1.0}, seed=3)
    assert {plan.choose(i) for i in range(1000)} == {name}


def test_frequencies_follow_probabilities_and_repeat_with_the_seed() -> None:
    probs = {"500": 0.2, "drop": 0.1, "no_usage": 0.05}
    plan = FaultPlan.from_probabilities(probs, seed=42)
    seq = [plan.choose(i) for i in range(20_000)]
    counts = Counter(seq)
    for name, p in probs.items():
        assert counts[name] / len(seq) == pytest.approx(p, abs=0.015)
    assert counts[None] / len(seq) == pytest.approx(0.65, abs=0.015)
    assert seq == [FaultPlan.from_probabilities(probs, seed=42).choose(i) for i in range(20_000)]
    assert seq != [FaultPlan.from_probabilities(probs, seed=43).choose(i) for i in range(20_000)]


@pytest.mark.parametrize(
    "probs", [{"500": 0.7, "503": 0.4}, {"hang": 1.5}, {"hang": -0.1}, {"teapot": 0.1}]
)
def test_invalid_probabilities_are_refused(probs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FaultPlan.from_probabilities(probs, seed=0)
