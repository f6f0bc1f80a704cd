"""When to try a failed request again. Pure: the caller supplies the randomness."""

from __future__ import annotations


def backoff_s(attempt: int, base_s: float, cap_s: float, u: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)).

    ``attempt`` counts failures so far (1 after the first); ``u`` is uniform
    in [0, 1). Full jitter spreads a crowd of failed requests over the whole
    window, so they do not come back together.
    """
    exponent = min(max(0, attempt - 1), 60)  # beyond 2**60 every delay is the cap anyway
    return u * min(cap_s, base_s * 2.0**exponent)


def retry_delay_s(
    attempt: int, base_s: float, cap_s: float, u: float, retry_after_s: float | None
) -> float:
    """The delay before the next attempt; a provider's ``retry-after`` is a floor."""
    delay = backoff_s(attempt, base_s, cap_s, u)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s + u * base_s)
    return delay
