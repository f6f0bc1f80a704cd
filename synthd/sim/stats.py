"""The simulator's counters behind ``GET /stats``: a few integer increments per request.

Pure: the caller passes the time; a sliding window of ``STATS_WINDOW_S`` seconds of
per-second counts is kept without a timer.
"""

from __future__ import annotations

from typing import Any

STATS_WINDOW_S = 600


class Stats:
    """Counters behind GET /stats. Updating costs a few dict/int operations per request."""

    __slots__ = (
        "accepted_tokens",
        "by_status",
        "completion_tokens",
        "faults",
        "per_second",
        "prompt_tokens",
        "rate_limited",
        "requests",
        "started",
    )

    def __init__(self, started: float) -> None:
        self.reset(started)

    def reset(self, started: float) -> None:
        """Zero every counter in place (handlers in flight keep counting into this object)."""
        self.started = started
        self.requests = 0
        self.rate_limited = 0
        self.accepted_tokens = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.by_status: dict[int, int] = {}
        self.faults: dict[str, int] = {}
        self.per_second: dict[int, int] = {}

    def status(self, code: int) -> None:
        self.by_status[code] = self.by_status.get(code, 0) + 1

    def admitted(self, unix_s: float, tokens: int) -> None:
        self.accepted_tokens += tokens
        second = int(unix_s)
        count = self.per_second.get(second)
        if count is None:
            # A new second: the moment to forget seconds that fell out of the window, so the
            # dict stays bounded without a timer.
            if len(self.per_second) >= STATS_WINDOW_S:
                horizon = second - STATS_WINDOW_S
                for old in [s for s in self.per_second if s <= horizon]:
                    del self.per_second[old]
            count = 0
        self.per_second[second] = count + 1

    def snapshot(self, unix_s: float) -> dict[str, Any]:
        """The JSON of GET /stats; per_second covers the last STATS_WINDOW_S seconds."""
        horizon = int(unix_s) - STATS_WINDOW_S
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "faults": dict(self.faults),
            "rate_limited": self.rate_limited,
            "accepted_tokens": self.accepted_tokens,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "per_second": [[s, c] for s, c in sorted(self.per_second.items()) if s > horizon],
            "started": self.started,
        }
