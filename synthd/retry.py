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


def capped_wait_s(hint_s: float | None, cap_s: float) -> float | None:
    """A provider's ``retry-after`` (or reset) hint, bounded to ``[0, cap_s]``.

    Unbounded hints are real: ``retry-after: 86400`` from a daily quota would hold an
    item (and its file's resume point) for a day, and ``inf`` would never fire. A hint
    that is not a number (nan) gets the cap: the server asked for a wait, not how long.
    """
    if hint_s is None:
        return None
    if hint_s != hint_s or hint_s > cap_s:  # nan compares unequal to itself
        return cap_s
    return max(0.0, hint_s)
