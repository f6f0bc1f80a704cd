"""A provider's rate budget: request and token buckets, pauses and ramps.

The buckets are aiolimiter leaky buckets holding ``burst_s`` seconds of the
per-minute budget (providers enforce per-minute limits over short windows, so
a minute's worth at once would earn a wall of 429s). On top of them:

* one FIFO lock in front of both buckets, so waiters are served in arrival
  order and only one task at a time sleeps inside aiolimiter (it would
  otherwise favour small token amounts, and wake many waiters per drip);
* a pause gate: a 429 stops every sender on this provider until its
  ``retry-after`` (capped at ``retry_after_max_s``), then sending resumes from
  an empty bucket instead of releasing the backlog;
* AIMD on what was *sent*: a 429 cuts the rate to 70% of what we sent over the
  last second (replies lag sends by the latency, so a rate read from replies
  collapses after an early 429); after the pause it regains 90% of the rate it
  was cut from within ``ramp_s``, the rest over 10 s, then probes beyond it ever
  faster (``recovery_rate``, shaped like TCP CUBIC). A 429 for a request sent
  before the last cut is the same congestion and only pauses. A pause of 10 s
  or more is a windowed limiter (a fixed minute, a quota): the rate becomes
  what was sent over the whole cycle, pause included;
* header adaptation: the provider's ``x-ratelimit-limit-*`` lowers our budget
  when it is set above what the server grants, and ``remaining = 0`` drains
  the local bucket so the next request waits for capacity;
* token accounting: a request reserves its estimate (prompt estimate plus
  ``max_tokens`` × n); ``settle`` books the difference from the response's
  ``usage`` as debt or credit on the next reservation (aiolimiter cannot give
  capacity back).

The arithmetic (estimates, the cut, the recovery curve) is pure, in ``synthd.ratemath``;
this module holds the state and the waiting. Time comes from the event loop
(``loop.time()``), never the wall clock.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

import structlog
from aiolimiter import AsyncLimiter

from synthd.config import ProviderConfig
from synthd.headers import RateHeaders
from synthd.ratemath import Calibration, cut_rate, cycle_rate, is_windowed, recovery_rate

log = structlog.get_logger("synthd.budget")

_SENT_WINDOW_S = 1.0  # sends measured over this long (less just after a pause)
_RATE_STEP = 0.05  # rebuild the buckets when the rate moved by this share


class Gate(Protocol):
    """A budget shared with other daemons (``synthd.sharedbudget``): asked after the local
    buckets, told what the local budget learns."""

    async def take(self, tokens: int) -> None: ...

    def settle(self, reserved: int, actual: int) -> None: ...

    def rate_limited(self, pause_s: float) -> None: ...

    def adopt(self, what: str, limit: int) -> None: ...


# -- the async budget --------------------------------------------------------


class Budget:
    """Admission to one provider. ``acquire`` is the only call that waits.

    ``rpm`` and ``tpm`` are the budget (configured, or lower limits adopted from headers);
    ``rate_rpm`` and ``rate_tpm`` what is allowed now, after any 429.
    """

    def __init__(self, name: str, cfg: ProviderConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.rpm = float(cfg.rpm)
        self.tpm = float(cfg.tpm)
        self.rate_rpm = self.rpm
        self.rate_tpm = self.tpm
        self._lock = asyncio.Lock()
        self._requests = self._bucket(self.rate_rpm)
        self._tokens = self._bucket(self.rate_tpm)
        self._fill_pending = True  # a cold start begins from a full bucket: no burst
        self._paused_until = 0.0
        self._open = asyncio.Event()  # cleared while a 429 pause lasts
        self._open.set()
        self._reopen_handle: asyncio.TimerHandle | None = None
        self._debt = 0.0
        self.calibration = Calibration()
        # What was sent: (time, tokens) over the last _SENT_WINDOW_S, and since the resume.
        self._sent: deque[tuple[float, int]] = deque()
        self._sent_tokens = 0
        self._cycle_start: float | None = None  # the first send, then each resume
        self._first_send: float | None = None
        self._cycle_requests = 0
        self._cycle_tokens = 0
        # AIMD state: the last cut, what it was cut from, when sending resumed.
        self._cut_at = -1e9
        self._cut = (self.rpm, self.tpm)
        self._ceiling = (self.rpm, self.tpm)
        self._pause_s = 0.0
        self._resume_at: float | None = None
        self.rate_limited = 0
        self.refunds = 0
        self.refunded_tokens = 0
        self.adopted_limits: dict[str, int] = {}
        self.gate: Gate | None = None  # set when several daemons share this budget

    @property
    def token_capacity(self) -> float:
        """The largest reservation one bucket holds; larger ones are split."""
        return float(self._tokens.max_rate)

    def _bucket(self, per_min: float) -> AsyncLimiter:
        burst = self.cfg.burst_s
        return AsyncLimiter(max(1.0, per_min * burst / 60.0), burst)

    async def acquire(self, tokens: int) -> None:
        """Wait for a request slot and ``tokens``; FIFO across all callers."""
        async with self._lock:
            await self._open.wait()
            loop = asyncio.get_running_loop()
            self._maybe_ramp(loop.time())
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
            if self.gate is not None:
                await self.gate.take(tokens)
            # A 429 may have arrived while we waited for a drip: honour it too.
            await self._open.wait()
            self._record_send(loop.time(), tokens)

    def _record_send(self, now: float, tokens: int) -> None:
        if self._cycle_start is None:
            self._cycle_start = self._first_send = now
        self._sent.append((now, tokens))
        self._sent_tokens += tokens
        self._cycle_requests += 1
        self._cycle_tokens += tokens
        horizon = now - _SENT_WINDOW_S
        while self._sent and self._sent[0][0] < horizon:
            self._sent_tokens -= self._sent.popleft()[1]

    def _sent_rates(self, now: float) -> tuple[float, float]:
        """Requests and tokens a minute sent over the last second (pauses included: they
        are part of the rate the server saw), or since the first send if that was sooner."""
        horizon = now - _SENT_WINDOW_S
        while self._sent and self._sent[0][0] < horizon:
            self._sent_tokens -= self._sent.popleft()[1]
        first = now if self._first_send is None else self._first_send
        span = min(_SENT_WINDOW_S, max(0.1, now - first))
        return 60.0 * len(self._sent) / span, 60.0 * self._sent_tokens / span

    def settle(self, reserved: int, actual: int) -> None:
        """Book the difference between a reservation and what the provider counted."""
        self._debt += actual - reserved
        if self.gate is not None:
            self.gate.settle(reserved, actual)
        # Credit is bounded: a run of over-estimates must not turn into a burst.
        self._debt = max(self._debt, -self._tokens.max_rate)

    def refund(self, reserved: int) -> None:
        """Give back the tokens of an attempt that failed: the provider served nothing."""
        self.refunds += 1
        self.refunded_tokens += reserved
        self.settle(reserved, 0)

    def rate_limited_for(self, retry_after_s: float | None, sent_at: float | None = None) -> None:
        """A 429 for a request sent at ``sent_at`` (loop time): pause everyone, cut the rate.

        See the module docstring for the rule. ``retry_after_s`` should already be capped
        (``synthd.retry.capped_wait_s``); it is bounded here again by ``retry_after_max_s``.
        """
        self.rate_limited += 1
        loop = asyncio.get_running_loop()
        now = loop.time()
        pause = retry_after_s if retry_after_s is not None else 1.0
        pause = min(max(pause, 0.0), self.cfg.retry_after_max_s)
        cut = sent_at is None or sent_at >= self._cut_at
        if cut and self.gate is not None:
            self.gate.rate_limited(pause)  # once per congestion, as the cut is
        self._pause_for(now, pause, cut)

    def paused_elsewhere(self, pause_s: float) -> None:
        """Another daemon sharing this budget saw a 429: pause, and cut as if it were ours
        unless a pause already holds (then this congestion was already answered here)."""
        now = asyncio.get_running_loop().time()
        pause = min(max(pause_s, 0.0), self.cfg.retry_after_max_s)
        self._pause_for(now, pause, cut=now >= self._paused_until)

    def adopt_shared(self, rpm: float, tpm: float) -> None:
        """Limits another daemon adopted from headers (already the lower of both)."""
        if rpm < self.rpm or tpm < self.tpm:
            self.rpm, self.tpm = min(self.rpm, rpm), min(self.tpm, tpm)
            self._set_rates(self.rate_rpm, self.rate_tpm)

    def _pause_for(self, now: float, pause: float, cut: bool) -> None:
        loop = asyncio.get_running_loop()
        until = now + pause
        if cut:
            self._cut_rates(now, pause)
        if until > self._paused_until:
            self._paused_until = until
            self._resume_at = until
            self._open.clear()
            if self._reopen_handle is not None:
                self._reopen_handle.cancel()
            self._reopen_handle = loop.call_at(until, self._reopen)

    def hold(self, wait_s: float) -> None:
        """Stop every sender for ``wait_s`` (capped), without cutting the rate: a quota
        (an hour's, a day's) has run out and says when it comes back."""
        loop = asyncio.get_running_loop()
        until = loop.time() + min(max(wait_s, 0.0), self.cfg.retry_after_max_s)
        if until > self._paused_until:
            self._paused_until = until
            self._open.clear()
            if self._reopen_handle is not None:
                self._reopen_handle.cancel()
            self._reopen_handle = loop.call_at(until, self._reopen)
            log.warning(
                "quota_exhausted_hold", provider=self.name, wait_s=round(until - loop.time(), 1)
            )

    def _cut_rates(self, now: float, pause: float) -> None:
        sent_rpm, sent_tpm = self._sent_rates(now)
        if is_windowed(pause):
            # A windowed limiter: what it allows is what we sent over the whole cycle,
            # the pause that now follows included.
            start = now if self._cycle_start is None else self._cycle_start
            span = now - start + pause
            sent_rpm = cycle_rate(self._cycle_requests, span)
            sent_tpm = cycle_rate(self._cycle_tokens, span)
        if sent_rpm <= 0:  # nothing sent lately (a slow reply): cut from what is allowed
            sent_rpm, sent_tpm = self.rate_rpm, self.rate_tpm
        ceiling_rpm = min(self.rpm, max(sent_rpm, 1.0))
        ceiling_tpm = min(self.tpm, max(sent_tpm, 1.0))
        cut_rpm = cut_rate(ceiling_rpm, 1.0)
        cut_tpm = cut_rate(ceiling_tpm, 1.0)
        if is_windowed(pause):
            ceiling_rpm, ceiling_tpm = cut_rpm, cut_tpm  # probe up from it, slowly
        self._cut_at = now
        self._cut = (cut_rpm, cut_tpm)
        self._ceiling = (ceiling_rpm, ceiling_tpm)
        self._pause_s = pause
        self._set_rates(cut_rpm, cut_tpm)
        log.info(
            "rate_cut",
            provider=self.name,
            sent_rpm=round(sent_rpm),
            rpm=round(cut_rpm),
            tpm=round(cut_tpm),
            pause_s=round(pause, 3),
        )

    def _reopen(self) -> None:
        now = asyncio.get_running_loop().time()
        self._cycle_start = now
        self._cycle_requests = self._cycle_tokens = 0
        self._open.set()

    def observe(self, h: RateHeaders) -> None:
        """Correct the local buckets from a response's rate-limit headers."""
        if not self.cfg.adapt_to_headers:
            return
        if h.hold_s:
            self.hold(h.hold_s)
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
            self._set_rates(self.rate_rpm, self.rate_tpm)
        elif (h.remaining_requests == 0 and self._requests.has_capacity(1)) or (
            h.remaining_tokens == 0 and self._tokens.has_capacity(1)
        ):
            # The server sees no room; our bucket thinks otherwise. Trust the
            # server: start again from a full bucket, so the next send waits a drip.
            self._rebuild()

    def _adopt(self, what: str, limit: int) -> None:
        if self.adopted_limits.get(what) != limit:
            self.adopted_limits[what] = limit
            if self.gate is not None:
                self.gate.adopt(what, limit)
            configured = self.cfg.rpm if what == "rpm" else self.cfg.tpm
            log.warning(
                "rate_limit_adopted",
                provider=self.name,
                limit=what,
                configured=configured,
                server=limit,
            )

    def _maybe_ramp(self, now: float) -> None:
        """After a cut, move the rate along the recovery curve (in steps of 5%)."""
        if self._resume_at is None or now < self._resume_at:
            return
        since = now - self._resume_at
        rpm = recovery_rate(
            self._cut[0], self._ceiling[0], self.rpm, since, self.cfg.ramp_s, self._pause_s
        )
        tpm = recovery_rate(
            self._cut[1], self._ceiling[1], self.tpm, since, self.cfg.ramp_s, self._pause_s
        )
        if rpm >= self.rpm and tpm >= self.tpm:
            self._resume_at = None
            self._set_rates(self.rpm, self.tpm)
        elif rpm >= self.rate_rpm * (1 + _RATE_STEP) or tpm >= self.rate_tpm * (1 + _RATE_STEP):
            self._set_rates(rpm, tpm)

    def _set_rates(self, rpm: float, tpm: float) -> None:
        self.rate_rpm = min(rpm, self.rpm)
        self.rate_tpm = min(tpm, self.tpm)
        self._rebuild()

    def _rebuild(self) -> None:
        """New buckets at the current rate, starting full: rate changes never burst."""
        self._requests = self._bucket(self.rate_rpm)
        self._tokens = self._bucket(self.rate_tpm)
        self._fill_pending = True
