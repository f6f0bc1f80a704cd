"""synthd.sim.limits: bucket arithmetic with explicit times, headers and their formats."""

from __future__ import annotations

import math

import pytest

from synthd.sim.limits import (
    Bucket,
    Limiter,
    format_duration,
    rate_limit_message,
    ratelimit_headers,
    retry_headers,
)


def test_bucket_capacity_and_rate_follow_the_window() -> None:
    b = Bucket.full(6000, 1.0, now=0.0)
    assert (b.capacity, b.rate_per_s, b.level) == (100.0, 100.0, 100.0)
    assert Bucket.full(6000, 3.0, now=0.0).capacity == 300.0


def test_refill_is_continuous_capped_and_ignores_a_clock_going_back() -> None:
    b = Bucket.full(600, 1.0, now=10.0)  # capacity 10, 10 per second
    b.take(10)
    b.refill(10.25)
    assert b.level == pytest.approx(2.5)
    b.refill(9.0)
    assert b.level == pytest.approx(2.5)
    b.refill(100.0)
    assert b.level == 10.0


def test_burst_over_rpm_is_refused_until_refilled() -> None:
    lim = Limiter(rpm=600, tpm=0)  # 10 requests per 1 s window
    assert all(lim.admit("k", 1, now=0.0).admitted for _ in range(10))
    refused = lim.admit("k", 1, now=0.0)
    assert not refused.admitted and refused.kind == "requests"
    assert refused.wait_s == pytest.approx(0.1)
    assert not lim.admit("k", 1, now=0.09).admitted
    assert lim.admit("k", 1, now=0.1).admitted


def test_tpm_refusal_consumes_nothing() -> None:
    lim = Limiter(rpm=600, tpm=6000)  # 10 requests and 100 tokens per window
    assert lim.admit("k", 60, now=0.0).admitted
    refused = lim.admit("k", 60, now=0.0)
    assert (refused.admitted, refused.kind) == (False, "tokens")
    assert refused.wait_s == pytest.approx(0.2)  # 20 tokens missing at 100/s
    assert refused.headers["x-ratelimit-remaining-requests"] == "9"  # the refusal took none
    assert refused.headers["x-ratelimit-remaining-tokens"] == "40"
    assert lim.admit("k", 40, now=0.0).admitted


def test_the_longest_wait_names_the_limit() -> None:
    lim = Limiter(rpm=60, tpm=600)  # 1 request and 10 tokens per window
    assert lim.admit("k", 1, now=0.0).admitted
    refused = lim.admit("k", 10, now=0.0)  # requests: 1 s away; tokens: 0.1 s away
    assert (refused.kind, refused.wait_s) == ("requests", pytest.approx(1.0))

    lim = Limiter(rpm=60, tpm=3000)  # 1 request and 50 tokens per window
    assert lim.admit("k", 100, now=0.0).admitted  # tokens now at -50 (debt)
    refused = lim.admit("k", 100, now=0.5)  # requests: 0.5 s away; tokens: 75 missing, 1.5 s
    assert (refused.kind, refused.wait_s) == ("tokens", pytest.approx(1.5))


def test_a_cost_above_capacity_waits_for_a_full_bucket_then_goes_into_debt() -> None:
    lim = Limiter(rpm=30, tpm=0)  # capacity 0.5 request: one every 2 s
    assert lim.admit("k", 1, now=0.0).admitted
    refused = lim.admit("k", 1, now=0.0)
    assert refused.wait_s == pytest.approx(2.0)
    assert lim.admit("k", 1, now=2.0).admitted
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"  # debt reads as 0


def test_a_request_above_the_per_minute_limit_is_too_large() -> None:
    lim = Limiter(rpm=0, tpm=600)
    refused = lim.admit("k", 601, now=0.0)
    assert (refused.admitted, refused.too_large, refused.kind) == (False, True, "tokens")
    assert math.isinf(refused.wait_s)
    assert rate_limit_message(refused, "m", 601).startswith("Request too large for m")


def test_keys_are_limited_separately() -> None:
    lim = Limiter(rpm=60, tpm=0)
    assert lim.admit("a", 1, now=0.0).admitted
    assert not lim.admit("a", 1, now=0.0).admitted
    assert lim.admit("b", 1, now=0.0).admitted


def test_unlimited_sends_no_headers_and_one_limit_only_its_own() -> None:
    assert Limiter(0, 0).admit("k", 10**9, now=0.0).headers == {}
    headers = Limiter(0, 6000).admit("k", 10, now=0.0).headers
    assert set(headers) == {
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    }


def test_headers_report_limit_floor_of_level_and_time_to_full() -> None:
    req = Bucket.full(6000, 1.0, now=0.0)
    tok = Bucket.full(600_000, 1.0, now=0.0)
    req.take(1.5)
    tok.take(2500)
    assert ratelimit_headers(req, tok) == {
        "x-ratelimit-limit-requests": "6000",
        "x-ratelimit-remaining-requests": "98",
        "x-ratelimit-reset-requests": "15ms",
        "x-ratelimit-limit-tokens": "600000",
        "x-ratelimit-remaining-tokens": "7500",
        "x-ratelimit-reset-tokens": "250ms",
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (0.0004, "1ms"),
        (0.25, "250ms"),
        (0.2500000001, "250ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (17.25, "17.25s"),
        (59.9999, "1m0s"),
        (90.5, "1m30.5s"),
        (360, "6m0s"),
        (3725, "1h2m5s"),
    ],
)
def test_format_duration_like_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("wait_s", "after", "after_ms"), [(0.0005, "1", "1"), (0.5, "1", "500"), (2.0001, "3", "2001")]
)
def test_retry_headers_round_up(wait_s: float, after: str, after_ms: str) -> None:
    assert retry_headers(wait_s) == {"retry-after": after, "retry-after-ms": after_ms}


def test_rate_limit_message_names_the_limit_and_the_wait() -> None:
    lim = Limiter(rpm=60, tpm=0)
    lim.admit("k", 1, now=0.0)
    msg = rate_limit_message(lim.admit("k", 1, now=0.75), "gpt-x", 1)
    assert msg == (
        "Rate limit reached for requests per min (RPM) on gpt-x: Limit 60, Requested 1. "
        "Please try again in 250ms."
    )
