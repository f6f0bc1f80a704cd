"""``synthd dry-run``: the requests a job would send, and what its backlog would cost.

The first ``n`` request bodies of each job are built by ``synthd.request.build``, the
function the daemon itself calls, so a body shown here is the body that would be POSTed,
truncation and all. Then the job's whole backlog is read the way the daemon would read it
(``synthd.backlog``): nothing is sent, moved or written. How an ``input = "chunks"`` job's
first files are cut is shown by ``synthd.chunkpreview``; what a pipeline stage would get
from its upstream is projected by ``synthd.projection``.

The figures are estimates: prompt tokens at ``Calibration``'s default characters per token
(the daemon learns the real ratio from ``usage`` as it runs); completion tokens as
``max_tokens`` × samples for every request, an upper bound the model rarely reaches; time at
the provider's rpm and tpm as the budget reserves them, without retries or the ramp after a 429.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from synthd import chunkpreview, projection, request
from synthd.backlog import Backlog, files_in_order, read_items
from synthd.checkpoint import STATE_FILE, Checkpoint
from synthd.chunkpreview import ChunkedFile
from synthd.config import Config, Job, Price
from synthd.cost import BATCH_DISCOUNT, price_usd
from synthd.errors import ConfigError, InputError
from synthd.fingerprint import sampling_params
from synthd.models import BadLine, WorkItem
from synthd.prompts import ENDPOINTS
from synthd.ratemath import Calibration

log = structlog.get_logger("synthd.dryrun")


@dataclass(frozen=True, slots=True)
class Sample:
    """One request as it would be sent."""

    file: str
    line: int
    url: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Cost:
    input_usd: float
    output_usd_max: float

    @property
    def total_usd_max(self) -> float:
        return round(self.input_usd + self.output_usd_max, 6)


@dataclass(frozen=True, slots=True)
class JobPlan:
    job: str
    provider: str
    model: str
    api: str
    max_tokens: int
    samples_per_request: int
    samples: list[Sample]
    backlog: Backlog
    cost: Cost | None  # None: no [prices."<model>"]
    minutes: float  # at the provider's budget, as if the job had it to itself
    bound: str  # "requests" or "tokens": which limit sets the time
    chunked: list[ChunkedFile] = field(default_factory=list)  # input = "chunks": first files
    mode: str = "online"  # "batch": priced at the Batch API's rate, done within 24 h

    def to_json(self) -> dict[str, Any]:
        b = self.backlog
        return {
            **({"chunked": [c.to_json() for c in self.chunked]} if self.chunked else {}),
            "job": self.job,
            "provider": self.provider,
            "model": self.model,
            "api": self.api,
            "requests_shown": [
                {"file": s.file, "line": s.line, "url": s.url, "body": s.body} for s in self.samples
            ],
            "backlog": {
                "files_pending": b.files_pending,
                "files_claimed": b.files_claimed,
                "requests": b.requests,
                "bad_lines": b.bad_lines,
                "unsendable": b.unsendable,
                "failing_files": b.failing_files,
                "prompt_tokens": b.prompt_tokens,
                "completion_tokens_max": b.completion_tokens_max,
                "reserved_tokens": b.reserved_tokens,
                "projected_requests": b.projected_requests,
                "fan_out": b.fan_out,
            },
            "cost_usd": None
            if self.cost is None
            else {
                "input": self.cost.input_usd,
                "output_max": self.cost.output_usd_max,
                "total_max": self.cost.total_usd_max,
            },
            "minutes": self.minutes,
            "bound_by": self.bound,
            "mode": self.mode,
        }


@dataclass(frozen=True, slots=True)
class ProviderPlan:
    """Jobs on one provider share its budget: their time adds up here."""

    name: str
    rpm: int
    tpm: int
    requests: int
    reserved_tokens: int
    minutes: float
    bound: str


@dataclass(frozen=True, slots=True)
class DryRun:
    chars_per_token: float
    jobs: list[JobPlan]
    providers: list[ProviderPlan]

    def to_json(self) -> dict[str, Any]:
        return {
            "chars_per_token": self.chars_per_token,
            "completion_tokens": "upper bound: max_tokens x samples for every request",
            "jobs": [j.to_json() for j in self.jobs],
            "providers": [
                {
                    "provider": p.name,
                    "rpm": p.rpm,
                    "tpm": p.tpm,
                    "requests": p.requests,
                    "reserved_tokens": p.reserved_tokens,
                    "minutes": p.minutes,
                    "bound_by": p.bound,
                }
                for p in self.providers
            ],
        }


def plan(cfg: Config, jobs: Sequence[str] = (), n: int = 5) -> DryRun:
    """Show ``n`` requests and estimate the backlog of ``jobs`` (default: every job).

    Blocks on file reads proportional to the backlog. Raises ``ConfigError`` for
    an unknown job name.
    """
    names = list(jobs) or list(cfg.jobs)
    for name in names:
        if name not in cfg.jobs:
            known = ", ".join(cfg.jobs)
            raise ConfigError(str(cfg.source), "jobs", f"no job named {name!r} (jobs: {known})")
    # A stage's estimate needs its upstream's first, and a chain is costed whole.
    names = projection.with_chains(cfg, names)
    state = cfg.state_dir / STATE_FILE
    cp = Checkpoint(state, readonly=True) if state.exists() else None
    try:
        planned: dict[str, JobPlan] = {}
        for name in names:
            planned[name] = _plan_job(cfg, cfg.jobs[name], cp, n, planned)
        plans = list(planned.values())
    finally:
        if cp is not None:
            cp.close()
    providers = []
    for pname in dict.fromkeys(p.provider for p in plans):  # in the order of the jobs
        pcfg = cfg.providers[pname]
        mine = [p for p in plans if p.provider == pname]
        requests = sum(p.backlog.requests + p.backlog.projected_requests for p in mine)
        tokens = sum(p.backlog.reserved_tokens for p in mine)
        minutes, bound = estimate_minutes(requests, tokens, pcfg.rpm, pcfg.tpm)
        providers.append(ProviderPlan(pname, pcfg.rpm, pcfg.tpm, requests, tokens, minutes, bound))
    return DryRun(Calibration().chars_per_token, plans, providers)


def estimate_minutes(requests: int, tokens: int, rpm: int, tpm: int) -> tuple[float, str]:
    """Minutes at a budget: whichever of the two limits takes longer."""
    by_requests, by_tokens = requests / rpm, tokens / tpm
    if by_tokens > by_requests:
        return round(by_tokens, 4), "tokens"
    return round(by_requests, 4), "requests"


def estimate_cost(price: Price | None, prompt_tokens: int, completion_tokens: int) -> Cost | None:
    parts = price_usd(price, prompt_tokens, completion_tokens)
    if parts is None:
        return None
    return Cost(round(parts[0], 6), round(parts[1], 6))


def _plan_job(
    cfg: Config, job: Job, cp: Checkpoint | None, n: int, planned: dict[str, JobPlan]
) -> JobPlan:
    jc = job.config
    # What a cold daemon starts from: the default calibration, the configured tpm.
    calibration, tpm = Calibration(), float(cfg.providers[jc.provider].tpm)
    params = sampling_params(jc)
    url = cfg.providers[jc.provider].base_url + ENDPOINTS[jc.api]
    backlog = Backlog()
    samples: list[Sample] = []
    chunked: list[ChunkedFile] = []
    if jc.from_ is None:
        sources = files_in_order(cfg, job, cp, backlog)
    else:
        sources = projection.stage_source(job, cp)
    for src, path, done in sources:
        shown = ChunkedFile(src.name) if len(chunked) < chunkpreview.FILES_SHOWN else None
        try:
            total = 0
            things = (
                read_items(cfg, job, src, path)
                if jc.from_ is None
                else projection.stage_items(job, cp)
            )
            for thing in things:
                total = thing.seq + 1
                if shown is not None and isinstance(thing, WorkItem) and thing.span is not None:
                    shown.add(thing)
                if thing.seq in done:
                    continue
                if isinstance(thing, BadLine):
                    backlog.bad_lines += 1
                    continue
                req = request.build(job, params, thing, calibration, tpm)
                if isinstance(req, request.Unsendable):
                    _unsendable(job, thing, req)
                    backlog.unsendable += 1
                    continue
                if req.tokens_before_cut is not None:
                    _truncated(job, thing, req.tokens_before_cut)
                backlog.requests += 1
                backlog.prompt_tokens += req.prompt_tokens
                backlog.completion_tokens_max += jc.max_tokens * jc.samples
                backlog.reserved_tokens += req.reserved
                backlog.context_chars += len(thing.fields.get("context", ""))
                if len(samples) < n:
                    body = orjson.loads(req.body)
                    samples.append(Sample(thing.source.name, thing.line, url, body))
            if total == 0 and src.resume_seq == 0 and jc.from_ is None:
                backlog.failing_files[src.name] = "empty"
        except InputError as e:
            backlog.failing_files[src.name] = e.reason
        except OSError:
            backlog.failing_files[src.name] = "unreadable"
        if shown is not None and shown.passages:
            chunked.append(shown)
    if jc.from_ is not None:
        up = planned[jc.from_].backlog
        _add(
            backlog,
            projection.project(
                cfg, job, cp, up.requests + up.projected_requests, up.context_chars, calibration
            ),
        )
    provider = cfg.providers[jc.provider]
    requests = backlog.requests + backlog.projected_requests
    minutes, bound = estimate_minutes(requests, backlog.reserved_tokens, provider.rpm, provider.tpm)
    return JobPlan(
        job=job.name,
        provider=jc.provider,
        model=jc.model,
        api=jc.api,
        max_tokens=jc.max_tokens,
        samples_per_request=jc.samples,
        samples=samples,
        backlog=backlog,
        cost=_at_rate(
            estimate_cost(
                cfg.prices.get(jc.model), backlog.prompt_tokens, backlog.completion_tokens_max
            ),
            BATCH_DISCOUNT if jc.mode == "batch" else 1.0,
        ),
        minutes=minutes,
        bound=bound,
        chunked=chunked,
        mode=jc.mode,
    )


def _add(backlog: Backlog, more: projection.Projection) -> None:
    """A stage's backlog, with what its upstream's would hand it (their tokens counted)."""
    backlog.fan_out = more.fan_out
    backlog.projected_requests = more.requests
    backlog.prompt_tokens += more.prompt_tokens
    backlog.completion_tokens_max += more.completion_tokens_max
    backlog.reserved_tokens += more.reserved_tokens
    backlog.context_chars += more.context_chars


def _at_rate(cost: Cost | None, share: float) -> Cost | None:
    """A batch job's cost: the online price times the Batch API's share."""
    if cost is None or share == 1.0:
        return cost
    return Cost(round(cost.input_usd * share, 6), round(cost.output_usd_max * share, 6))


def _unsendable(job: Job, item: WorkItem, why: request.Unsendable) -> None:
    """Say which item the daemon would refuse and why, as its pipeline would."""
    log.warning(
        "item_unsendable",
        job=job.name,
        file=item.source.name,
        line=item.line,
        reason=why.reason,
        detail=why.detail,
    )


def _truncated(job: Job, item: WorkItem, tokens_before: int) -> None:
    log.warning(
        "prompt_truncated",
        job=job.name,
        file=item.source.name,
        line=item.line,
        tokens_before=tokens_before,
        limit=job.config.max_prompt_tokens,
    )


# -- the human report ------------------------------------------------------------------


def render(result: DryRun) -> str:
    out: list[str] = []
    for j in result.jobs:
        b = j.backlog
        out.append(
            f"== job {j.job}: model {j.model}, provider {j.provider}, api {j.api}, "
            f"max_tokens {j.max_tokens}, samples {j.samples_per_request}"
        )
        for i, s in enumerate(j.samples, 1):
            out.append(f"-- request {i}: {s.file} line {s.line} -> POST {s.url}")
            out.append(orjson.dumps(s.body, option=orjson.OPT_INDENT_2).decode())
        if b.requests == 0:
            out.append("-- no request to show: nothing sendable in the backlog")
        out.extend(chunkpreview.render(j.chunked))
        out.append(
            f"backlog: {b.files_pending:,} files pending, {b.files_claimed:,} claimed; "
            f"{b.requests:,} requests, {b.bad_lines:,} bad lines, {b.unsendable:,} unsendable"
        )
        if b.fan_out is not None:
            out.append(
                f"pipeline stage: ~{b.projected_requests:,} more requests projected from its "
                f"upstream's backlog at {b.fan_out:g} per upstream record, every record kept "
                "(an upper bound); their tokens are counted below"
            )
        for name, reason in sorted(b.failing_files.items()):
            out.append(f"  would fail: {name} ({reason})")
        out.append(
            f"tokens: prompt ~{b.prompt_tokens:,} (at {result.chars_per_token:g} chars/token), "
            f"completion <= {b.completion_tokens_max:,} "
            f"(max_tokens x samples per request: an upper bound)"
        )
        if j.cost is None:
            out.append(f'cost: unknown, no [prices."{j.model}"] in the config')
        else:
            out.append(
                f"cost: <= ${j.cost.total_usd_max:,.4f} "
                f"(input ~${j.cost.input_usd:,.4f} + output <= ${j.cost.output_usd_max:,.4f})"
                + (" at the batch rate (half the online price)" if j.mode == "batch" else "")
            )
        if j.mode == "batch":
            out.append("time: batch mode: results within 24 h (the provider's completion window)")
        else:
            out.append(f"time: ~{_duration(j.minutes)} at the provider's budget ({j.bound}-bound)")
        out.append("")
    chains = [j for j in result.jobs if j.backlog.fan_out is not None]
    if chains:
        priced = [j.cost.total_usd_max for j in result.jobs if j.cost is not None]
        total = f"<= ${sum(priced):,.4f}" if len(priced) == len(result.jobs) else "unknown"
        out.append(f"pipelines: every stage above, from its first stage's backlog: {total}")
    for p in result.providers:
        out.append(
            f"provider {p.name}: {p.requests:,} requests, {p.reserved_tokens:,} tokens reserved"
            f" -> ~{_duration(p.minutes)} at rpm {p.rpm:,} / tpm {p.tpm:,} ({p.bound}-bound;"
            " retries and 429 pauses not included)"
        )
    return "\n".join(out) + "\n"


def _duration(minutes: float) -> str:
    if minutes < 1:
        return f"{minutes * 60:.1f} s"
    if minutes < 120:
        return f"{minutes:,.1f} min"
    return f"{minutes / 60:,.1f} h"
