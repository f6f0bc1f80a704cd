"""synthd.headers: every rate-limit header form we know, read by one pure function."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from synthd.client import retry_after
from synthd.headers import (
    RateHeaders,
    parse_duration,
    parse_rate_headers,
    parse_reset,
    parse_retry_after,
)

NOW = 1_800_000_000.0  # a fixed "now" (2027-01-15): resets given as times are relative to it


def parse(headers: dict[str, str]) -> RateHeaders | None:
    return parse_rate_headers(headers, NOW)


def test_openai() -> None:
    headers = {
        "x-ratelimit-limit-requests": "3500",
        "x-ratelimit-remaining-requests": "3499",
        "x-ratelimit-reset-requests": "20ms",
        "x-ratelimit-limit-tokens": "90000",
        "x-ratelimit-remaining-tokens": "199.0",  # some proxies send counts as floats
        "x-ratelimit-reset-tokens": "6m0s",
    }
    expected = RateHeaders(3500, 90000, 3499, 199, 0.02, 360.0)
    assert parse(headers) == RateHeaders.parse(headers) == expected


def test_anthropic_with_rfc3339_resets() -> None:
    h = parse(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:12Z",
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-output-tokens-limit": "8000",
        }
    )
    assert h is not None
    assert (h.limit_requests, h.remaining_requests, h.limit_tokens) == (50, 0, 8000)
    assert h.reset_requests_s == pytest.approx(12.0)


def test_ietf_draft_needs_the_policy_for_a_rate() -> None:
    with_policy = parse(
        {"RateLimit-Limit": "100", "RateLimit-Remaining": "7", "RateLimit-Reset": "5",
         "RateLimit-Policy": "100;w=10"}
    )  # fmt: skip
    assert with_policy == RateHeaders(600, None, 7, None, 5.0, None)
    combined = parse(
        {"RateLimit": "limit=100, remaining=0, reset=5", "RateLimit-Policy": "100;w=60"}
    )
    assert combined == RateHeaders(100, None, 0, None, 5.0, None)
    # Without a window the limit is no rate; an exhausted count still holds until its reset.
    bare = parse({"RateLimit-Limit": "100", "RateLimit-Remaining": "0", "RateLimit-Reset": "30"})
    assert bare == RateHeaders(None, None, None, None, None, None, hold_s=30.0)


@pytest.mark.parametrize(
    "reset", [str(int(NOW) + 40), str(int(NOW * 1000) + 40_000), "40"], ids=["epoch", "ms", "delta"]
)
def test_x_ratelimit_with_an_epoch_or_delta_reset(reset: str) -> None:
    h = parse({"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})
    assert h is not None and h.hold_s == pytest.approx(40.0)
    assert h.limit_requests is None  # no window: not a rate


def test_scoped_proxy_headers_tightest_minute_wins_and_days_are_not_rates() -> None:
    h = parse(
        {
            "x-ratelimit-limit-requests-day": "14400",  # Groq-style: a day's quota
            "x-ratelimit-remaining-requests-day": "14000",
            "x-ratelimit-limit-requests-minute": "30",
            "x-ratelimit-remaining-tokens-minute": "5000",
            "x-ratelimit-limit-tokens-second": "100",  # 6000 a minute
            "x-ratelimit-limit-tokens-minute": "7000",
            "x-ratelimit-limit-requests-model-gpt-4o": "500",
            "llm_provider-x-ratelimit-remaining-requests": "12",  # LiteLLM passing it on
        }
    )
    assert h == RateHeaders(30, 6000, 12, 5000, None, None)


def test_an_exhausted_daily_quota_holds_until_its_reset() -> None:
    h = parse(
        {
            "x-ratelimit-limit-requests-day": "1000",
            "x-ratelimit-remaining-requests-day": "0",
            "x-ratelimit-reset-requests-day": "2h",
        }
    )
    assert h == RateHeaders(None, None, None, None, None, None, hold_s=7200.0)


def test_unknown_forms_are_none_and_garbage_is_ignored() -> None:
    assert parse({"content-type": "application/json", "x-request-id": "1"}) is None
    assert parse({"x-ratelimit-limit-requests": "lots"}) == RateHeaders(
        None, None, None, None, None, None
    )


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after": "inf"}, float("inf")),  # capped by the caller
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_forms(headers: dict[str, str], seconds: float | None) -> None:
    assert parse_retry_after(headers, NOW) == (
        pytest.approx(seconds) if seconds is not None else None
    )


def test_a_429_without_retry_after_waits_for_the_exhausted_limits_reset() -> None:
    assert retry_after({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "3s",
                        "x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "9s"}) == 3.0  # fmt: skip  # noqa: E501
    assert retry_after({"x-ratelimit-remaining-requests": "5"}) is None


def test_past_resets_are_zero() -> None:
    assert parse_reset(str(int(NOW) - 100), NOW) == 0.0
    assert parse_reset("2020-01-01T00:00:00Z", NOW) == 0.0


# -- parse_duration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("250ms", 0.25),
        ("1m30.5s", 90.5),
        ("2h", 7200.0),
        ("1h2m3.5s", 3723.5),
        ("20ms", 0.02),
        ("0s", 0.0),
        ("1.5", 1.5),
        ("30", 30.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "garbage", "1m30", "s", "1x", " 1s", "1s ", "m1s", "1s2"])
def test_parse_duration_garbage_is_none(text: str) -> None:
    assert parse_duration(text) is None


# -- RateHeaders --------------------------------------------------------------------------


def test_rate_headers_absent_is_none() -> None:
    assert RateHeaders.parse({}) is None
    assert RateHeaders.parse({"content-type": "application/json"}) is None


def test_rate_headers_partial_and_garbled_values_are_none() -> None:
    h = RateHeaders.parse(
        {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-limit-tokens": "lots",
            "x-ratelimit-reset-requests": "soon",
        }
    )
    assert h == RateHeaders(None, None, 0, None, None, None)


def test_rate_headers_infinite_value_is_none() -> None:
    h = RateHeaders.parse({"x-ratelimit-limit-requests": "inf"})
    assert h == RateHeaders(None, None, None, None, None, None)
