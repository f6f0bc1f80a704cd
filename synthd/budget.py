"""A provider's rate budget: request and token buckets, pauses and ramps.

The buckets are aiolimiter leaky buckets holding ``burst_s`` seconds of the
per-minute budget (providers enforce per-minute limits over short windows, so
a minute's worth at once would earn a wall of 429s). On top of them:

* one FIFO lock in front of both buckets, so waiters are served in arrival
  order and only one task at a time sleeps inside aiolimiter (it would
  otherwise favour small token amounts, and wake many waiters per drip);
* a pause gate: a 429 stops every sender on this provider until its
  ``retry-after``, then sending resumes from an empty bucket at a reduced rate
  that ramps back to full over ``ramp_s``, instead of releasing the backlog;
* header adaptation: the provider's ``x-ratelimit-limit-*`` lowers our budget
  when it is set above what the server grants, and ``remaining = 0`` drains
  the local bucket so the next request waits for capacity;
* token accounting: a request reserves its estimate (prompt estimate plus
  ``max_tokens`` × n); ``settle`` books the difference from the response's
  ``usage`` as debt or credit on the next reservation (aiolimiter cannot give
  capacity back).

Time comes from the event loop (``loop.time()``), never the wall clock.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from aiolimiter import AsyncLimiter

from synthd.config import ProviderConfig

log = structlog.get_logger("synthd.budget")

_RAMP_FLOOR = 0.25
_OBSERVE_S = 3  # seconds of admissions that tell the server's real capacity
_RAMP_STEP = 0.05
_RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


# -- pure arithmetic -------------------------------------------------------


class Calibration:
    """Characters per prompt token, learned from ``usage`` (an exponential average).

    Starts at 4.0, OpenAI's rule of thumb for English; converges on what the
    provider's own tokenizer counts for this kind of text.
    """

    __slots__ = ("chars_per_token",)

    def __init__(self, chars_per_token: float = 4.0) -> None:
        self.chars_per_token = chars_per_token

    def estimate(self, chars: int) -> int:
        return max(1, math.ceil(chars / self.chars_per_token))

    def learn(self, chars: int, tokens: int) -> None:
        if tokens > 0 and chars > 0:
            self.chars_per_token += 0.05 * (chars / tokens - self.chars_per_token)


def parse_duration(text: str) -> float | None:
    """OpenAI's reset format (``6m0s``, ``1s``, ``250ms``, ``1h2m3.5s``) in seconds."""
    total, pos = 0.0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        value = float(m.group(1))
        total += value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(text):
        try:
            return float(text)  # some servers send plain seconds
        except ValueError:
            return None
    return total


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """The ``x-ratelimit-*`` headers of one response; None where absent."""

    limit_requests: int | None
    limit_tokens: int | None
    remaining_requests: int | None
    remaining_tokens: int | None
    reset_requests_s: float | None
    reset_tokens_s: float | None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateHeaders | None:
        if not any(name in headers for name in _RATE_HEADERS):
            return None

        def num(name: str) -> int | None:
            v = headers.get(name)
            try:
                return None if v is None else int(float(v))
            except (ValueError, OverflowError):  # "inf", "nan", garbage
                return None

        def dur(name: str) -> float | None:
            v = headers.get(name)
            return None if v is None else parse_duration(v)

        return cls(
            num("x-ratelimit-limit-requests"),
            num("x-ratelimit-limit-tokens"),
            num("x-ratelimit-remaining-requests"),
            num("x-ratelimit-remaining-tokens"),
            dur("x-ratelimit-reset-requests"),
            dur("x-ratelimit-reset-tokens"),
        )


def ramp_scale(since_resume_s: float, ramp_s: float) -> float:
    """The share of the full rate allowed ``since_resume_s`` after a pause."""
    if ramp_s <= 0 or since_resume_s >= ramp_s:
        return 1.0
    return _RAMP_FLOOR + (1.0 - _RAMP_FLOOR) * max(0.0, since_resume_s) / ramp_s


def token_estimate(prompt_tokens: int, max_tokens: int, samples: int) -> int:
    """What a provider reserves for a request against its tokens-per-minute limit."""
    return prompt_tokens + max_tokens * samples


# -- the async budget --------------------------------------------------------


class Budget:
    """Admission to one provider. ``acquire`` is the only call that waits."""

    def __init__(self, name: str, cfg: ProviderConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.rpm = float(cfg.rpm)
        self.tpm = float(cfg.tpm)
        self._scale = 1.0
        self._lock = asyncio.Lock()
        self._requests = self._bucket(self.rpm)
        self._tokens = self._bucket(self.tpm)
        self._fill_pending = True  # a cold start begins from a full bucket: no burst
        self._paused_until = 0.0
        self._open = asyncio.Event()  # cleared while a 429 pause lasts
        self._open.set()
        self._reopen_handle: asyncio.TimerHandle | None = None
        self._resume_at: float | None = None
        self._debt = 0.0
        self.calibration = Calibration()
        self._ok_second = 0
        self._ok_count = 0
        self._ok_history: deque[int] = deque(maxlen=_OBSERVE_S)
        self._last_limited = -1e9
        self.rate_limited = 0
        self.refunds = 0
        self.refunded_tokens = 0
        self.adopted_limits: dict[str, int] = {}

    @property
    def token_capacity(self) -> float:
        """The largest reservation one bucket holds; larger ones are split."""
        return float(self._tokens.max_rate)

    def _bucket(self, per_min: float) -> AsyncLimiter:
        burst = self.cfg.burst_s
        return AsyncLimiter(max(1.0, per_min * self._scale * burst / 60.0), burst)

    async def acquire(self, tokens: int) -> None:
        """Wait for a request slot and ``tokens``; FIFO across all callers."""
        async with self._lock:
            await self._open.wait()
            self._maybe_ramp(asyncio.get_running_loop().time())
            if self._fill_pending:
                self._fill_pending = False
                await self._requests.acquire(self._requests.max_rate)
                await self._tokens.acquire(self._tokens.max_rate)
            await self._requests.acquire(1)
            amount = tokens + self._debt
            self._debt = min(0.0, amount)  # unused credit carries over
            while amount > 0:
                # Re-read the bucket each time: a 429 elsewhere may have rebuilt it
                # smaller while we waited, and aiolimiter refuses more than capacity.
                bucket = self._tokens
                chunk = min(amount, bucket.max_rate)
                await bucket.acquire(chunk)
                amount -= chunk
            # A 429 may have arrived while we waited for a drip: honour it too.
            await self._open.wait()

    def settle(self, reserved: int, actual: int) -> None:
        """Book the difference between a reservation and what the provider counted."""
        self._debt += actual - reserved
        # Credit is bounded: a run of over-estimates must not turn into a burst.
        self._debt = max(self._debt, -self._tokens.max_rate)

    def refund(self, reserved: int) -> None:
        """Give back the tokens of an attempt that failed: the provider served nothing."""
        self.refunds += 1
        self.refunded_tokens += reserved
        self.settle(reserved, 0)

    def accepted(self, now: float) -> None:
        """Count a request the server admitted (for what a 429 teaches us)."""
        self._roll(now)
        self._ok_count += 1

    def _roll(self, now: float) -> None:
        """Close the seconds that have passed in the per-second admission history."""
        second = int(now)
        if second - self._ok_second > _OBSERVE_S:  # a long quiet spell: all zeros
            self._ok_history.extend([self._ok_count] + [0] * _OBSERVE_S)
            self._ok_second, self._ok_count = second, 0
        while self._ok_second < second:
            self._ok_history.append(self._ok_count)
            self._ok_second += 1
            self._ok_count = 0

    def rate_limited_for(self, retry_after_s: float | None) -> None:
        """A 429: pause everyone, lower the rate to what the server accepts, ramp back up.

        The new request rate is what the server really admitted over the last
        few seconds (multiplicative decrease to the observed capacity); it grows
        back towards the budget by 10% per quiet ``ramp_s`` (additive probing),
        so a budget set far too high settles near the server's limit instead of
        bursting into it after every pause.
        """
        self.rate_limited += 1
        loop = asyncio.get_running_loop()
        now = loop.time()
        pause = retry_after_s if retry_after_s is not None else 1.0
        until = now + min(max(pause, 0.0), self.cfg.retry_after_max_s)
        self._last_limited = now
        observed_rpm = self._observed_rpm(now)
        if observed_rpm is not None and observed_rpm < self.rpm:
            self.rpm = max(1.0, observed_rpm)
        if until > self._paused_until:
            self._paused_until = until
            self._resume_at = until
            self._scale = _RAMP_FLOOR
            self._rebuild()
            self._open.clear()
            if self._reopen_handle is not None:
                self._reopen_handle.cancel()
            self._reopen_handle = loop.call_at(until, self._open.set)

    def observe(self, h: RateHeaders) -> None:
        """Correct the local buckets from a response's rate-limit headers."""
        if not self.cfg.adapt_to_headers:
            return
        changed = False
        if h.limit_requests and h.limit_requests < self.rpm:
            self._adopt("rpm", h.limit_requests)
            self.rpm = float(h.limit_requests)
            changed = True
        if h.limit_tokens and h.limit_tokens < self.tpm:
            self._adopt("tpm", h.limit_tokens)
            self.tpm = float(h.limit_tokens)
            changed = True
        if changed:
            self._rebuild()
        elif (h.remaining_requests == 0 and self._requests.has_capacity(1)) or (
            h.remaining_tokens == 0 and self._tokens.has_capacity(1)
        ):
            # The server sees no room; our bucket thinks otherwise. Trust the
            # server: start again from a full bucket, so the next send waits a drip.
            self._rebuild()

    def _adopt(self, what: str, limit: int) -> None:
        if self.adopted_limits.get(what) != limit:
            self.adopted_limits[what] = limit
            configured = self.cfg.rpm if what == "rpm" else self.cfg.tpm
            log.warning(
                "rate_limit_adopted",
                provider=self.name,
                limit=what,
                configured=configured,
                server=limit,
            )

    def _observed_rpm(self, now: float) -> float | None:
        """Requests per minute the server admitted over the last full seconds."""
        self._roll(now)
        if len(self._ok_history) < 2 or sum(self._ok_history) == 0:
            return None
        return 60.0 * sum(self._ok_history) / len(self._ok_history)

    def _maybe_grow(self, now: float) -> None:
        """After a quiet spell with no 429, probe 10% closer to the budget."""
        target = float(self.adopted_limits.get("rpm", self.cfg.rpm))
        if self.rpm >= target or now - self._last_limited < 2 * max(self.cfg.ramp_s, 1.0):
            return
        self.rpm = min(target, self.rpm * 1.1)
        self._last_limited = now  # the next step waits another quiet spell
        self._rebuild()

    def _maybe_ramp(self, now: float) -> None:
        self._maybe_grow(now)
        if self._resume_at is None:
            return
        scale = ramp_scale(now - self._resume_at, self.cfg.ramp_s)
        if scale >= 1.0:
            self._resume_at = None
        if scale - self._scale >= _RAMP_STEP or scale >= 1.0:
            self._scale = scale
            self._rebuild()

    def _rebuild(self) -> None:
        """New buckets at the current rate, starting full: rate changes never burst."""
        self._requests = self._bucket(self.rpm)
        self._tokens = self._bucket(self.tpm)
        self._fill_pending = True
