"""The HTTP client: status and body mapped to our errors; requests to the simulator."""

from __future__ import annotations

from synthd.client import status_error
from synthd.errors import QuotaExhausted, RateLimited, Rejected


def test_a_429_is_throttling_unless_the_quota_is_used_up() -> None:
    too_many = b'{"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}'
    quota = b'{"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}'  # noqa: E501
    too_large = b'{"error": {"message": "Request too large for m on tokens per min (TPM)"}}'
    assert isinstance(status_error(429, too_many, {"retry-after": "2"}), RateLimited)
    assert isinstance(status_error(429, quota, {}), QuotaExhausted)
    assert isinstance(status_error(429, too_large, {}), Rejected)
