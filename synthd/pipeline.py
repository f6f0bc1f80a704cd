"""One item's trip: render -> budget -> client -> filters -> writer.

``prepare`` renders an item into an ``Attempt`` (or, for an item that can never
be sent, an ``Outcome`` straight away). A ``Dispatcher`` per provider runs
``max_in_flight`` sender tasks that take attempts from one queue shared by all of
the provider's jobs. A failed attempt that may succeed later goes back to the
queue after its backoff (via ``call_later``: no sender sleeps on it); after
``max_attempts`` it becomes a dead letter. Every item ends as exactly one
``Outcome`` handed to the writer, whatever happens.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import structlog

from synthd import jsonbytes, records
from synthd.budget import Budget, token_estimate
from synthd.client import Client
from synthd.config import Job, ProviderConfig
from synthd.errors import ProviderError, RateLimited, Rejected, Retryable, TemplateError
from synthd.filters import FilterChain
from synthd.fingerprint import sampling_params
from synthd.logs import redact
from synthd.metrics import JobStats, ProviderStats
from synthd.models import BadLine, Outcome, Rejection, WorkItem
from synthd.prompts import request_body
from synthd.retry import retry_delay_s
from synthd.writer import Writer

log = structlog.get_logger("synthd.pipeline")

TRUNCATION_MARKER = "\n[... truncated ...]"


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
    """Render an item. Items that cannot be sent become outcomes at once."""
    snap = rt.snapshot
    job, cfg = snap.job, snap.job.config
    budget = rt.dispatcher.budget
    try:
        text = job.template.render(item.fields)
    except TemplateError as e:
        return _unsendable(rt, item, "missing_field", str(e))
    overhead = len(job.system or "")
    prompt_tokens = budget.calibration.estimate(len(text) + overhead)
    limit = cfg.max_prompt_tokens
    context = item.fields["context"]
    if limit is not None and prompt_tokens > limit:
        if cfg.on_long_prompt == "reject":
            return _unsendable(
                rt, item, "prompt_too_long", f"about {prompt_tokens} tokens > {limit}"
            )
        context = _truncated_context(job, rt, item, limit - budget.calibration.estimate(overhead))
        text = job.template.render({**item.fields, "context": context})
        log.warning(
            "prompt_truncated",
            job=job.name,
            file=item.source.name,
            line=item.line,
            tokens_before=prompt_tokens,
            limit=limit,
        )
        prompt_tokens = budget.calibration.estimate(len(text) + overhead)
    reserved = token_estimate(prompt_tokens, cfg.max_tokens, cfg.samples)
    if reserved > budget.tpm:
        return _unsendable(
            rt,
            item,
            "too_large_for_budget",
            f"about {reserved} tokens per request > tpm {budget.tpm:g}",
        )
    body = request_body(cfg.api, cfg.model, text, job.system, snap.params)
    prompt = body["messages"] if cfg.api == "chat" else body["prompt"]
    body_bytes = jsonbytes.dumps(body)
    return Attempt(rt, snap, item, body_bytes, prompt, len(text) + overhead, reserved, context)


def _truncated_context(job: Job, rt: JobRuntime, item: WorkItem, token_room: int) -> str:
    """The context cut so the whole prompt fits, with a marker that says so."""
    cpt = rt.dispatcher.budget.calibration.chars_per_token
    frame = len(job.template.render({**item.fields, "context": ""}))
    room = max(0, int(token_room * cpt) - frame - len(TRUNCATION_MARKER))
    return item.fields["context"][:room] + TRUNCATION_MARKER


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
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.client = client
        self.writer = writer
        self.stats = stats
        self.budget = Budget(name, cfg)
        self.queue: asyncio.Queue[Attempt] = asyncio.Queue()
        self._senders: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._rng = random.Random()

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
            # Not kept while waiting for the next one: its slot is free once it is
            # committed, and 512 idle senders must not hold 512 request bodies.
            del attempt

    async def _send(self, a: Attempt) -> None:
        stats = a.rt.stats
        if self.writer.blocked is not None:
            await self.writer.unblocked.wait()  # no paid completion with nowhere to go
        await self.budget.acquire(a.reserved)
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.stats.in_flight += 1
        try:
            reply, rate = await self.client.complete(a.snap.job.config.api, a.body)
        except ProviderError as e:
            self._failed(a, e)
            return
        finally:
            self.stats.in_flight -= 1
        stats.observe_latency(loop.time() - started)
        stats.count("200")
        self.budget.accepted(loop.time())
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

    def _failed(self, a: Attempt, e: ProviderError) -> None:
        stats = a.rt.stats
        stats.count(str(e.status) if e.status else e.kind)
        a.attempts += 1
        retry_after = None
        if e.rate is not None:
            self.budget.observe(e.rate)
        if isinstance(e, RateLimited):
            self.stats.rate_limited += 1
            retry_after = e.retry_after_s
            self.budget.rate_limited_for(retry_after)
        if isinstance(e, Retryable) and a.attempts < self.cfg.max_attempts:
            stats.retries += 1
            delay = retry_delay_s(
                a.attempts,
                self.cfg.backoff_base_s,
                self.cfg.backoff_max_s,
                self._rng.random(),
                retry_after,
            )
            self._retry_later(a, delay)
            return
        kind = "rejected" if isinstance(e, Rejected) else "attempts_exhausted"
        self._dead_letter(a, redact(str(e)), kind)

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


def _with_estimated_usage(a: Attempt, reply: Any, budget: Budget) -> Any:
    """A reply without ``usage``: estimate it so records and costs stay complete."""
    from dataclasses import replace

    completion = sum(budget.calibration.estimate(len(c.text or "")) for c in reply.choices)
    prompt = budget.calibration.estimate(a.prompt_chars)
    return replace(reply, prompt_tokens=prompt, completion_tokens=completion)
