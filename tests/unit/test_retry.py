"""synthd.retry: the backoff schedule, with the randomness passed in."""

from __future__ import annotations

import math

import pytest

from synthd.retry import backoff_s, capped_wait_s, retry_delay_s

ALMOST_ONE = 1 - 1e-12


@pytest.mark.parametrize("attempt", range(0, 12))
def test_backoff_with_u_zero_is_zero(attempt: int) -> None:
    assert backoff_s(attempt, 0.5, 30.0, 0.0) == 0.0


@pytest.mark.parametrize(
    ("attempt", "window"),
    [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (6, 16.0), (7, 30.0), (20, 30.0)],
)
def test_backoff_window_doubles_up_to_the_cap(attempt: int, window: float) -> None:
    top = backoff_s(attempt, 0.5, 30.0, ALMOST_ONE)
    assert top < window
    assert top == pytest.approx(window)
    assert backoff_s(attempt, 0.5, 30.0, 0.5) == pytest.approx(window / 2)


def test_backoff_never_exceeds_the_cap() -> None:
    for attempt in range(1, 60):
        for u in (0.0, 0.25, 0.5, 0.75, ALMOST_ONE):
            assert 0.0 <= backoff_s(attempt, 0.5, 30.0, u) < 30.0


def test_backoff_grows_with_attempts_for_a_fixed_draw() -> None:
    delays = [backoff_s(a, 0.1, 5.0, 0.7) for a in range(1, 12)]
    assert delays == sorted(delays)
    assert delays[-1] == pytest.approx(0.7 * 5.0)


def test_backoff_for_a_very_high_attempt_is_still_capped() -> None:
    assert backoff_s(2000, 0.5, 30.0, 0.5) == pytest.approx(15.0)


def test_retry_delay_without_a_hint_is_the_backoff() -> None:
    for attempt in (1, 3, 9):
        for u in (0.0, 0.3, ALMOST_ONE):
            assert retry_delay_s(attempt, 0.5, 30.0, u, None) == backoff_s(attempt, 0.5, 30.0, u)


def test_retry_after_is_a_floor() -> None:
    assert retry_delay_s(1, 0.5, 30.0, 0.0, 5.0) == 5.0
    # Jitter on top of the floor (up to one base) keeps a crowd from returning together.
    assert retry_delay_s(1, 0.5, 30.0, 0.5, 5.0) == pytest.approx(5.25)
    for u in (0.0, 0.3, 0.9):
        for retry_after in (0.0, 0.2, 3.0, 45.0):
            delay = retry_delay_s(4, 0.5, 30.0, u, retry_after)
            assert delay >= retry_after
            assert delay >= backoff_s(4, 0.5, 30.0, u)


def test_a_small_retry_after_does_not_shorten_the_backoff() -> None:
    assert retry_delay_s(7, 0.5, 30.0, 0.9, 0.1) == pytest.approx(27.0)


def test_retry_after_may_exceed_the_cap() -> None:
    assert retry_delay_s(1, 0.5, 30.0, 0.0, 90.0) == 90.0


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (None, None),
        (2.5, 2.5),
        (86400.0, 120.0),
        (math.inf, 120.0),
        (math.nan, 120.0),
        (-3.0, 0.0),
    ],
)
def test_a_providers_wait_is_capped(hint: float | None, expected: float | None) -> None:
    assert capped_wait_s(hint, 120.0) == expected
