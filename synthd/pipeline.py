"""One item's trip: render -> budget -> client -> filters -> writer.

``prepare`` renders an item into an ``Attempt`` (or, for an item that can never
be sent, an ``Outcome`` straight away). A ``Dispatcher`` per provider runs
``max_in_flight`` sender tasks that take attempts from one queue shared by all of
the provider's jobs. A failed attempt that may succeed later goes back to the
queue after its backoff (via ``call_later``: no sender sleeps on it); after
``max_attempts`` it becomes a dead letter. Every item ends as exactly one
``Outcome`` handed to the writer, whatever happens.

Two kinds of failure are not the item's and never use up its attempts: a 429
(the budget pauses every sender and the item goes straight back to the queue),
and an outage (``synthd.circuit``): while the provider is down the senders wait
at its circuit, one item at a time goes out as a probe, and every item that
fails meanwhile goes back to the queue as it was.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, replace
from typing import Any

import structlog

from synthd import records, request
from synthd.budget import Budget
from synthd.circuit import Circuit
from synthd.client import Client
from synthd.config import Job, ProviderConfig
from synthd.errors import (
    MalformedResponse,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    Retryable,
)
from synthd.filters import FilterChain
from synthd.fingerprint import sampling_params
from synthd.logs import redact
from synthd.metrics import JobStats, ProviderStats
from synthd.models import BadLine, Outcome, Rejection, WorkItem
from synthd.pacer import Pacer
from synthd.ratemath import token_estimate
from synthd.retry import capped_wait_s, retry_delay_s
from synthd.writer import Writer

log = structlog.get_logger("synthd.pipeline")


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """A job as it stood when an item was prepared: what its request and record use.

    A reload swaps the runtime's snapshot; an item already rendered keeps its own,
    so its api, template, params, filters and fingerprint all come from one job.
    """

    job: Job
    filters: FilterChain
    params: dict[str, Any]


class JobRuntime:
    """A job's compiled parts and live counters."""

    __slots__ = ("dispatcher", "snapshot", "stats")

    def __init__(self, job: Job, filters: FilterChain, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.snapshot = JobSnapshot(job, filters, sampling_params(job.config))
        self.stats = JobStats()

    def reload(self, job: Job, filters: FilterChain) -> None:
        """Items prepared from now on use ``job``; those already prepared keep theirs."""
        self.snapshot = JobSnapshot(job, filters, sampling_params(job.config))

    @property
    def job(self) -> Job:
        return self.snapshot.job


@dataclass(slots=True)
class Attempt:
    """An item on its way: the request as it will be sent, and its history."""

    rt: JobRuntime
    snap: JobSnapshot  # the job as it was when this item was rendered
    item: WorkItem
    body: bytes
    prompt: Any  # the messages or prompt text, as recorded
    prompt_chars: int
    reserved: int
    context: str  # as sent: cut short when the prompt was truncated
    attempts: int = 0


def prepare(rt: JobRuntime, item: WorkItem) -> Attempt | Outcome:
    """Render an item (``synthd.request.build``). Items that cannot be sent become
    outcomes at once."""
    snap = rt.snapshot
    budget = rt.dispatcher.budget
    req = request.build(snap.job, snap.params, item, budget.calibration, budget.tpm)
    if isinstance(req, request.Unsendable):
        return _unsendable(rt, item, req.reason, req.detail)
    if req.tokens_before_cut is not None:
        log.warning(
            "prompt_truncated",
            job=snap.job.name,
            file=item.source.name,
            line=item.line,
            tokens_before=req.tokens_before_cut,
            limit=snap.job.config.max_prompt_tokens,
        )
    return Attempt(
        rt, snap, item, req.body, req.prompt, req.prompt_chars, req.reserved, req.context
    )


def _unsendable(rt: JobRuntime, item: WorkItem, reason: str, detail: str) -> Outcome:
    log.warning(
        "item_unsendable",
        job=rt.job.name,
        file=item.source.name,
        line=item.line,
        reason=reason,
        detail=detail,
    )
    bad = BadLine(item.source, item.seq, item.line, item.end, reason, detail)
    rt.stats.bad_input += 1
    return records.bad_input(rt.job, bad, time.time())


class Dispatcher:
    """The senders of one provider, sharing its budget, client and queue."""

    def __init__(
        self,
        name: str,
        cfg: ProviderConfig,
        client: Client,
        writer: Writer,
        stats: ProviderStats,
        pacer: Pacer | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.client = client
        self.writer = writer
        self.stats = stats
        self.budget = Budget(name, cfg)
        self.circuit = Circuit()
        self._probe_ready = asyncio.Event()  # set: one sender may probe (or all: when up)
        # Out of attempts, cause unknown yet: (attempt, error, when it failed).
        self._verdicts: list[tuple[Attempt, str, float]] = []
        self._verdict_task: asyncio.Task[None] | None = None
        self.queue: asyncio.Queue[Attempt] = asyncio.Queue()
        self._senders: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._rng = random.Random()
        self.pacer = pacer or Pacer()  # shared with the client and every dispatcher

    async def start(self) -> None:
        await self.client.start()
        self._senders = [
            asyncio.create_task(self._sender(), name=f"sender-{self.name}-{i}")
            for i in range(self.cfg.max_in_flight)
        ]
        # Readiness should not wait for the first item: ask the server once now.
        self._senders.append(asyncio.create_task(self._probe(), name=f"probe-{self.name}"))

    async def _probe(self) -> None:
        if await self.client.probe():
            self.stats.answered = True

    async def stop(self) -> None:
        """Cancel the senders and pending retries; close the client."""
        for timer in self._timers:
            timer.cancel()
        if self._verdict_task is not None:
            self._senders.append(self._verdict_task)
        for task in self._senders:
            task.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        await self.client.close()

    def submit(self, attempt: Attempt) -> None:
        self.queue.put_nowait(attempt)
        self.stats.queued = self.queue.qsize()

    async def _sender(self) -> None:
        while True:
            attempt = await self.queue.get()
            self.stats.queued = self.queue.qsize()
            try:
                await self._send(attempt)
            except Exception as e:
                # Not a retry: a programming error would just fail again. The item
                # is dead-lettered so it is accounted for, and the log says loudly why.
                log.error("sender_bug", job=attempt.rt.job.name, error=repr(e), exc_info=e)
                self._dead_letter(attempt, redact(repr(e)), "internal_error")
                if not self.circuit.up:  # it may have carried the probe
                    self._schedule_probe(self.circuit.probe_delay_s())
            # Not kept while waiting for the next one: its slot is free once it is
            # committed, and 512 idle senders must not hold 512 request bodies.
            del attempt

    async def _pass_circuit(self) -> bool:
        """Wait while the provider is down. True: this sender carries the outage's probe."""
        while not self.circuit.up:
            await self._probe_ready.wait()
            if self.circuit.up:
                break
            if self._probe_ready.is_set():  # the first sender woken takes the probe
                self._probe_ready.clear()
                return True
        return False

    async def _send(self, a: Attempt) -> None:
        # Building and writing a request is a fifth of its CPU; the feeder can wake many
        # senders at once (synthd.pacer).
        await self.pacer.turn()
        stats = a.rt.stats
        if self.writer.blocked is not None:
            await self.writer.unblocked.wait()  # no paid completion with nowhere to go
        probe = await self._pass_circuit()
        await self.budget.acquire(a.reserved)
        if not probe and not self.circuit.up:
            # The provider went down while we waited for the budget: not worth a request.
            self.budget.refund(a.reserved)
            self.submit(a)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.stats.in_flight += 1
        try:
            reply, rate = await self.client.complete(a.snap.job.config.api, a.body)
        except ProviderError as e:
            self._failed(a, e, probe, started)
            return
        finally:
            self.stats.in_flight -= 1
        now = loop.time()
        self._answered(now, started)
        stats.observe_latency(now - started)
        stats.count("200")
        self.stats.answered = True
        if rate is not None:
            self.budget.observe(rate)
        if not reply.usage_reported:
            reply = _with_estimated_usage(a, reply, self.budget)
        self._account(a, reply.prompt_tokens, reply.completion_tokens, reply.usage_reported)
        results = [a.snap.filters.apply(c.text, c.finish_reason) for c in reply.choices]
        outcome = records.completed(
            a.snap.job, a.item, a.prompt, a.snap.params, reply, results, time.time(), a.context
        )
        for r in results:
            if isinstance(r, Rejection):
                stats.reject(r.reason)
        self.writer.submit(outcome)

    def _answered(self, now: float, sent_at: float | None) -> None:
        """Any HTTP answer (a 429 or a 4xx too) proves the provider is up."""
        down_since = self.circuit.since
        if self._verdicts:
            self._settle_verdicts(dead=True, sent_after=sent_at)
        if self.circuit.answered(now, sent_at):
            self.stats.up = True
            self._probe_ready.set()  # wakes every sender waiting at the circuit
            log.warning("provider_up", provider=self.name, down_s=round(now - down_since, 1))

    def _provider_failed(self, a: Attempt, e: ProviderError, now: float, probe: bool) -> bool:
        """Tell the circuit; True when the failure is the outage's, not the item's."""
        if self.circuit.failed(id(a), now, redact(str(e)), probe):
            self.stats.up = False
            self.stats.outages += 1
            self._probe_ready.clear()
            log.warning("provider_down", provider=self.name, error=self.circuit.last_error)
            self._schedule_probe(self.circuit.probe_first_s)
            self._settle_verdicts(dead=False)
        elif probe and not self.circuit.up:
            self._schedule_probe(self.circuit.probe_delay_s())
        return not self.circuit.up

    def _schedule_probe(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            if not self.circuit.up:
                self._probe_ready.set()

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def _account(self, a: Attempt, prompt: int, completion: int, reported: bool) -> None:
        stats = a.rt.stats
        stats.prompt_tokens += prompt
        stats.completion_tokens += completion
        if not reported:
            return
        self.budget.calibration.learn(a.prompt_chars, prompt)
        cfg = a.snap.job.config
        if self.cfg.tpm_counts == "used":
            actual = prompt + completion
        else:
            actual = token_estimate(prompt, cfg.max_tokens, cfg.samples)
        self.budget.settle(a.reserved, actual)

    def _failed(
        self, a: Attempt, e: ProviderError, probe: bool = False, sent_at: float | None = None
    ) -> None:
        stats = a.rt.stats
        stats.count(str(e.status) if e.status else e.kind)
        self.budget.refund(a.reserved)
        now = asyncio.get_running_loop().time()
        if e.rate is not None:
            self.budget.observe(e.rate)
        if isinstance(e, RateLimited):
            # "Too many" says nothing about the item: it is not an attempt, and it goes
            # back to the queue at once, where the budget's pause holds every sender.
            self._answered(now, sent_at)
            self.stats.rate_limited += 1
            stats.retries += 1
            wait = capped_wait_s(e.retry_after_s, self.cfg.retry_after_max_s)
            self.budget.rate_limited_for(wait, sent_at)
            self.submit(a)
            return
        if not isinstance(e, Retryable) or not _provider_down_sign(e):
            self._answered(now, sent_at)
        elif self._provider_failed(a, e, now, probe):
            stats.retries += 1
            self.submit(a)  # waits at the circuit; the outage costs it no attempt
            return
        a.attempts += 1
        if isinstance(e, Retryable) and a.attempts >= self.cfg.max_attempts:
            self._await_verdict(a, redact(str(e)))
            return
        if isinstance(e, Retryable):
            stats.retries += 1
            delay = retry_delay_s(
                a.attempts,
                self.cfg.backoff_base_s,
                self.cfg.backoff_max_s,
                self._rng.random(),
                None,
            )
            self._retry_later(a, delay)
            return
        self._dead_letter(a, redact(str(e)), "rejected")

    def _await_verdict(self, a: Attempt, error: str) -> None:
        """An item out of attempts: its own failure, or the start of an outage?

        It is dead-lettered once another request gets an answer (the provider serves, the
        failure was the item's), or sent again without the attempt when the circuit trips.
        If neither happens within ``backoff_max_s`` (nothing else is being sent), the
        provider's ``GET /models`` decides: serving, a dead letter; not, back to the queue.
        """
        self._verdicts.append((a, error, asyncio.get_running_loop().time()))
        if self._verdict_task is None:
            self._verdict_task = asyncio.create_task(self._verdict(), name=f"verdict-{self.name}")

    async def _verdict(self) -> None:
        try:
            await asyncio.sleep(self.cfg.backoff_max_s)
            if self._verdicts and await self.client.serving():
                self._settle_verdicts(dead=True)
            else:
                self._settle_verdicts(dead=False)
        finally:
            self._verdict_task = None

    def _settle_verdicts(self, dead: bool, sent_after: float | None = None) -> None:
        """Dead-letter (or send again) the items waiting for a verdict. With ``sent_after``,
        only those that failed before a request sent then was answered: a straggler's answer
        (sent before the failure) does not show the provider was serving after it."""
        waiting, self._verdicts = self._verdicts, []
        for a, error, failed_at in waiting:
            if dead and sent_after is not None and sent_after < failed_at:
                self._verdicts.append((a, error, failed_at))
            elif dead:
                self._dead_letter(a, error, "attempts_exhausted")
            else:
                a.attempts -= 1  # the last failure was the provider's
                a.rt.stats.retries += 1
                self.submit(a)

    def _dead_letter(self, a: Attempt, error: str, kind: str) -> None:
        a.rt.stats.dead += 1
        item = a.item
        log.warning(
            "dead_letter",
            job=a.rt.job.name,
            file=item.source.name,
            line=item.line,
            kind=kind,
            attempts=a.attempts,
            error=error,
        )
        self.writer.submit(
            records.dead_letter(a.snap.job, item, error, kind, a.attempts, time.time())
        )

    def _retry_later(self, a: Attempt, delay: float) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            self.submit(a)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)


def _provider_down_sign(e: ProviderError) -> bool:
    """Whether a failure could mean the provider is down for everyone.

    No answer (timeouts, refused or dropped connections), a 5xx and an exhausted quota can;
    a reply that came back but does not parse (a 200 with no choices, cut-off JSON) or a
    retryable 4xx (408, 409) is an answer from a provider that is up.
    """
    if isinstance(e, MalformedResponse):
        return False
    return e.status is None or e.status >= 500 or isinstance(e, QuotaExhausted)


def _with_estimated_usage(a: Attempt, reply: Any, budget: Budget) -> Any:
    """A reply without ``usage``: estimate it so records and costs stay complete."""
    completion = sum(budget.calibration.estimate(len(c.text or "")) for c in reply.choices)
    prompt = budget.calibration.estimate(a.prompt_chars)
    return replace(reply, prompt_tokens=prompt, completion_tokens=completion)
