"""synthd.ratemath: the rate arithmetic, with plain values (no loop, no clock)."""

from __future__ import annotations

import pytest

from synthd.ratemath import (
    WINDOW_PAUSE_S,
    Calibration,
    cut_rate,
    cycle_rate,
    is_windowed,
    recovery_rate,
    token_estimate,
)


def test_token_estimate_reserves_every_sample() -> None:
    assert token_estimate(prompt_tokens=100, max_tokens=50, samples=3) == 250


def test_calibration_rounds_up_and_never_says_zero() -> None:
    c = Calibration()
    assert c.estimate(0) == 1
    assert c.estimate(9) == 3  # 9 / 4.0 = 2.25: a reservation must not fall short


def test_calibration_converges_on_the_providers_count() -> None:
    c = Calibration()
    for _ in range(200):
        c.learn(chars=300, tokens=100)
    assert c.chars_per_token == pytest.approx(3.0, rel=1e-3)
    c.learn(chars=0, tokens=5)
    c.learn(chars=5, tokens=0)
    assert c.chars_per_token == pytest.approx(3.0, rel=1e-3)  # no usage: nothing learned


def test_a_cut_is_a_share_of_what_was_sent_with_a_floor() -> None:
    assert cut_rate(1000.0, 1.0) == pytest.approx(700.0)
    assert cut_rate(1.0, 1.0) == 1.0


def test_recovery_starts_at_the_cut_and_never_passes_the_target() -> None:
    cut, ceiling, target = 700.0, 1000.0, 1200.0
    assert recovery_rate(cut, ceiling, target, 0.0, 5.0, 1.0) == cut
    assert recovery_rate(cut, ceiling, target, 5.0, 5.0, 1.0) == pytest.approx(900.0)
    rates = [recovery_rate(cut, ceiling, target, t / 2, 5.0, 1.0) for t in range(0, 200)]
    assert rates == sorted(rates)  # never falls back while time passes
    assert max(rates) == target


def test_after_a_long_pause_the_probe_beyond_the_ceiling_is_slower() -> None:
    short = recovery_rate(700.0, 1000.0, 1e9, 40.0, 5.0, 1.0)
    windowed = recovery_rate(700.0, 1000.0, 1e9, 40.0, 5.0, 60.0)
    assert windowed < short


def test_a_windowed_limiter_gets_back_what_it_allowed_over_the_cycle() -> None:
    assert not is_windowed(WINDOW_PAUSE_S - 0.1)
    assert is_windowed(WINDOW_PAUSE_S)
    # 600 requests over a 60 s cycle (the pause included) is 600 a minute after the cut.
    assert cut_rate(cycle_rate(600, 60.0), 1.0) == pytest.approx(600.0)
