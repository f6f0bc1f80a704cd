"""Per-key rate limits as token buckets, and the x-ratelimit headers that report them.

Pure arithmetic: every method takes ``now`` (seconds on one monotonic clock, the server passes
``loop.time()``) and nothing here reads a clock, so tests move time by hand.

Semantics, chosen to match how providers enforce per-minute limits over short windows:

* A bucket holds at most ``capacity = limit * window_s / 60`` and refills continuously at
  ``limit / 60`` per second. It starts full.
* A request is admitted when every bucket holds ``min(cost, capacity)``; it then takes its full
  cost, which may leave the bucket in debt (below zero). Without that, a request costing more
  than the capacity (a big prompt, or rpm < 60 with a 1 s window) could never run; with it the
  long-run rate still never exceeds the limit.
* A request whose token cost exceeds the per-minute limit itself is refused as "too large",
  as OpenAI does: no retry can help, so it carries no retry-after.
* A refused request takes nothing from any bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

LimitKind = Literal["requests", "tokens"]


@dataclass(slots=True)
class Bucket:
    """One continuously refilling bucket. ``level`` may go negative (debt), never above capacity."""

    limit_per_min: int
    capacity: float
    rate_per_s: float
    level: float
    updated_s: float

    @classmethod
    def full(cls, limit_per_min: int, window_s: float, now: float) -> Bucket:
        capacity = limit_per_min * window_s / 60.0
        return cls(limit_per_min, capacity, limit_per_min / 60.0, capacity, now)

    def refill(self, now: float) -> None:
        """Bring the level up to ``now``; a clock that goes backwards changes nothing."""
        elapsed = now - self.updated_s
        if elapsed > 0:
            self.level = min(self.capacity, self.level + elapsed * self.rate_per_s)
            self.updated_s = now

    def wait_s(self, cost: float) -> float:
        """Seconds until a request of ``cost`` would be admitted (0 = now). Call after refill."""
        missing = min(cost, self.capacity) - self.level
        return missing / self.rate_per_s if missing > 0 else 0.0

    def take(self, cost: float) -> None:
        self.level -= cost

    def remaining(self) -> int:
        return max(0, math.floor(self.level + 1e-9))

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.rate_per_s)


@dataclass(frozen=True, slots=True)
class Admission:
    """The limiter's verdict on one request, with the headers to send whatever the verdict.

    ``kind`` names the limit that refused (None when admitted); ``wait_s`` is how long until the
    same request would pass (0 when admitted, inf when it is too large to ever pass).
    """

    admitted: bool
    headers: dict[str, str]
    kind: LimitKind | None = None
    wait_s: float = 0.0
    limit_per_min: int = 0
    too_large: bool = False


_UNLIMITED = Admission(admitted=True, headers={})


@dataclass(slots=True)
class SharedClient:
    """Another client on the same key, taking ``rpm`` requests a minute from its bucket.

    Its requests are taken lazily, whenever the key is next looked at, and always: it gets
    its share whatever we do (the bucket may go into debt for it), so what is left for us is
    exactly the limit minus ``rpm``.
    """

    rpm: int
    sent_at: float
    carry: float = 0.0
    admitted: int = 0

    def catch_up(self, requests: Bucket | None, now: float) -> None:
        if now <= self.sent_at:
            return
        due = self.carry + (now - self.sent_at) * self.rpm / 60.0
        self.sent_at = now
        whole = math.floor(due)
        self.carry = due - whole
        if requests is not None:
            requests.take(whole)
        self.admitted += whole


@dataclass(slots=True)
class Limiter:
    """Buckets per API key, created full on first sight of a key. 0 = that limit is off.

    ``shared_rpm`` adds another client on every key (``SharedClient``), taking from its
    request bucket before each of our requests is judged.
    """

    rpm: int
    tpm: int
    window_s: float = 1.0
    shared_rpm: int = 0
    _keys: dict[str, tuple[Bucket | None, Bucket | None]] = field(default_factory=dict)
    _shared: dict[str, SharedClient] = field(default_factory=dict)

    @property
    def unlimited(self) -> bool:
        return self.rpm <= 0 and self.tpm <= 0

    def shared_admitted(self) -> int:
        """Requests of the other clients, over all keys."""
        return sum(c.admitted for c in self._shared.values())

    def admit(self, key: str, tokens: int, now: float) -> Admission:
        """Admit one request costing ``tokens`` for ``key`` at ``now``, or say why not."""
        if self.unlimited:
            return _UNLIMITED
        buckets = self._keys.get(key)
        if buckets is None:
            buckets = (
                Bucket.full(self.rpm, self.window_s, now) if self.rpm > 0 else None,
                Bucket.full(self.tpm, self.window_s, now) if self.tpm > 0 else None,
            )
            self._keys[key] = buckets
            if self.shared_rpm > 0:
                self._shared[key] = SharedClient(self.shared_rpm, now)
        req, tok = buckets
        if req is not None:
            req.refill(now)
        if tok is not None:
            tok.refill(now)
        shared = self._shared.get(key)
        if shared is not None:
            shared.catch_up(req, now)

        if tok is not None and tokens > tok.limit_per_min:
            return Admission(
                admitted=False,
                headers=ratelimit_headers(req, tok),
                kind="tokens",
                wait_s=math.inf,
                limit_per_min=tok.limit_per_min,
                too_large=True,
            )
        wait_req = req.wait_s(1) if req is not None else 0.0
        wait_tok = tok.wait_s(tokens) if tok is not None else 0.0
        if wait_req > 0 or wait_tok > 0:
            # Report the limit that keeps the caller waiting longest: that is the useful one.
            refusing = req if wait_req >= wait_tok else tok
            assert refusing is not None
            return Admission(
                admitted=False,
                headers=ratelimit_headers(req, tok),
                kind="requests" if refusing is req else "tokens",
                wait_s=max(wait_req, wait_tok),
                limit_per_min=refusing.limit_per_min,
            )
        if req is not None:
            req.take(1)
        if tok is not None:
            tok.take(tokens)
        return Admission(admitted=True, headers=ratelimit_headers(req, tok))


@dataclass(slots=True)
class FixedWindow:
    """A fixed-window request counter per key: ``rpm * window_s / 60`` requests per window.

    Windows start at multiples of ``window_s`` on the clock. A refusal's wait is the rest of
    the window; the headers report the count (reset = seconds to the window's end).
    """

    rpm: int
    window_s: float = 60.0
    _used: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (window, count)

    @property
    def quota(self) -> int:
        return max(1, math.floor(self.rpm * self.window_s / 60.0))

    def admit(self, key: str, tokens: int, now: float) -> Admission:
        window = math.floor(now / self.window_s)
        seen, count = self._used.get(key, (window, 0))
        if seen != window:
            count = 0
        reset_s = (window + 1) * self.window_s - now
        if count >= self.quota:
            self._used[key] = (window, count)
            return Admission(
                admitted=False,
                headers=self._headers(0, reset_s),
                kind="requests",
                wait_s=reset_s,
                limit_per_min=self.rpm,
            )
        self._used[key] = (window, count + 1)
        return Admission(admitted=True, headers=self._headers(self.quota - count - 1, reset_s))

    def _headers(self, remaining: int, reset_s: float) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.rpm),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": format_duration(reset_s),
        }


@dataclass(frozen=True, slots=True)
class Outage:
    """The provider is down from ``at_s`` for ``duration_s`` (seconds since the server started)."""

    at_s: float
    duration_s: float

    def active(self, elapsed_s: float) -> bool:
        return self.at_s <= elapsed_s < self.at_s + self.duration_s


def ratelimit_headers(requests: Bucket | None, tokens: Bucket | None) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the buckets' current state; an absent bucket sends none.

    Limits are per minute; remaining is what the bucket holds now (floor, never negative);
    reset is the time until the bucket is full again, in ``format_duration`` form.
    """
    headers: dict[str, str] = {}
    if requests is not None:
        headers["x-ratelimit-limit-requests"] = str(requests.limit_per_min)
        headers["x-ratelimit-remaining-requests"] = str(requests.remaining())
        headers["x-ratelimit-reset-requests"] = format_duration(requests.reset_s())
    if tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(tokens.limit_per_min)
        headers["x-ratelimit-remaining-tokens"] = str(tokens.remaining())
        headers["x-ratelimit-reset-tokens"] = format_duration(tokens.reset_s())
    return headers


def retry_headers(wait_s: float) -> dict[str, str]:
    """``retry-after`` in whole seconds and ``retry-after-ms``, both rounded up so that a client
    that waits exactly that long is admitted."""
    ms = _ceil_ms(wait_s)
    return {"retry-after": str(-(-ms // 1000)), "retry-after-ms": str(ms)}


def _ceil_ms(seconds: float) -> int:
    # Round to a microsecond first so that float noise (0.25000000001 s) does not add a ms.
    return math.ceil(round(seconds * 1000, 3))


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI's headers write it (Go's time.Duration), rounded up to the ms.

    >>> [format_duration(s) for s in (0, 0.25, 1, 90.5, 360, 3725)]
    ['0s', '250ms', '1s', '1m30.5s', '6m0s', '1h2m5s']
    """
    ms = _ceil_ms(seconds)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, frac = divmod(rest, 1000)
    s = f"{secs}.{frac:03d}".rstrip("0") if frac else str(secs)
    if hours:
        return f"{hours}h{minutes}m{s}s"
    if minutes:
        return f"{minutes}m{s}s"
    return f"{s}s"


def rate_limit_message(admission: Admission, model: str, requested: int) -> str:
    """The error message of a 429, worded as OpenAI words it."""
    if admission.kind == "requests":
        what, unit = "requests per min (RPM)", 1
    else:
        what, unit = "tokens per min (TPM)", requested
    if admission.too_large:
        return (
            f"Request too large for {model} on {what}: Limit {admission.limit_per_min}, "
            f"Requested {unit}. The input or output tokens must be reduced in order to run "
            "successfully."
        )
    return (
        f"Rate limit reached for {what} on {model}: Limit {admission.limit_per_min}, "
        f"Requested {unit}. Please try again in {format_duration(admission.wait_s)}."
    )
