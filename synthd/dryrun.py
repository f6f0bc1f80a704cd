"""``synthd dry-run``: the requests a job would send, and what its backlog would cost.

The first ``n`` request bodies of each job are built by ``synthd.request.build``,
the function the daemon itself calls, so a body shown here is the body that would
be POSTed, truncation and all. Then the job's whole backlog is read the way the
daemon would read it: claimed files first (from their resume points in the
checkpoint, skipping items already done), then unclaimed files oldest first,
opened, transcoded and streamed by the daemon's own ``synthd.spool`` and
``synthd.items`` functions, so memory does not grow with the spool.

The figures are estimates: prompt tokens at ``Calibration``'s default characters
per token (the daemon learns the real ratio from ``usage`` as it runs);
completion tokens as ``max_tokens`` × samples for every request, an upper bound
the model rarely reaches; time at the provider's rpm and tpm as the budget
reserves them, without retries or the ramp after a 429.

Nothing is sent, moved or written: spool files are opened for reading, the
checkpoint (if any) read-only, and a UTF-16/32 file, which the daemon transcodes
in place when it claims it, is transcoded into a temporary copy instead.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog

from synthd import handoff, request, spool, stages
from synthd import items as items_mod
from synthd.checkpoint import STATE_FILE, Checkpoint
from synthd.chunking import CHARS_PER_TOKEN
from synthd.config import Config, Job, Price
from synthd.cost import BATCH_DISCOUNT, price_usd
from synthd.errors import ConfigError, InputError
from synthd.fingerprint import sampling_params
from synthd.models import BadLine, Source, WorkItem
from synthd.prompts import ENDPOINTS
from synthd.ratemath import Calibration, token_estimate
from synthd.stagestore import stage_pending, stage_totals

log = structlog.get_logger("synthd.dryrun")
CHUNKED_FILES_SHOWN = 10  # input = "chunks": how the first files are cut


@dataclass(frozen=True, slots=True)
class Sample:
    """One request as it would be sent."""

    file: str
    line: int
    url: str
    body: dict[str, Any]


@dataclass(slots=True)
class Backlog:
    """What is left to do for one job."""

    files_pending: int = 0  # in spool/<job>/, not claimed yet
    files_claimed: int = 0  # in .work/, with work left
    requests: int = 0  # items that would be sent (one request each, n = samples)
    bad_lines: int = 0  # lines the reader refuses: invalid JSON, no text field, too long
    unsendable: int = 0  # items the daemon would refuse: missing placeholder, prompt too long ...
    prompt_tokens: int = 0  # estimated
    completion_tokens_max: int = 0  # max_tokens × samples per request: an upper bound
    reserved_tokens: int = 0  # what the budget reserves: prompt + max_tokens × samples
    failing_files: dict[str, str] = field(default_factory=dict)  # name -> reason
    # A pipeline stage: items its upstream's backlog would hand it (their tokens are in the
    # figures above), at ``fan_out`` items per upstream record, all records assumed kept.
    projected_requests: int = 0
    fan_out: float | None = None
    context_chars: int = 0  # of the items counted, real and projected: passed down the chain


@dataclass(frozen=True, slots=True)
class Cost:
    input_usd: float
    output_usd_max: float

    @property
    def total_usd_max(self) -> float:
        return round(self.input_usd + self.output_usd_max, 6)


@dataclass(slots=True)
class ChunkedFile:
    """How one file of an ``input = "chunks"`` job is cut: its passages' count and sizes
    (tokens estimated at the chunker's fixed characters per token), and the first two."""

    file: str
    passages: int = 0
    tokens_min: int = 0
    tokens_max: int = 0
    tokens_total: int = 0
    first: list[tuple[tuple[int, int], str]] = field(default_factory=list)  # (span, text)

    def add(self, item: WorkItem) -> None:
        assert item.span is not None
        tokens = -(-(item.span[1] - item.span[0]) // CHARS_PER_TOKEN)
        self.tokens_min = tokens if not self.passages else min(self.tokens_min, tokens)
        self.tokens_max = max(self.tokens_max, tokens)
        self.tokens_total += tokens
        self.passages += 1
        if len(self.first) < 2:
            self.first.append((item.span, item.fields["context"]))

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "passages": self.passages,
            "tokens_min": self.tokens_min,
            "tokens_mean": round(self.tokens_total / max(1, self.passages), 1),
            "tokens_max": self.tokens_max,
            "first": [{"span": list(span), "text": text} for span, text in self.first],
        }


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
    names = _with_chains(cfg, names)
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


def _with_chains(cfg: Config, names: list[str]) -> list[str]:
    """``names`` with every job of their pipelines, each after the job it takes from."""
    upstream = {name: job.config.from_ for name, job in cfg.jobs.items()}
    wanted = set(names)
    changed = True
    while changed:
        before = len(wanted)
        wanted |= {n for n, up in upstream.items() if up in wanted}
        wanted |= {up for n, up in upstream.items() if n in wanted and up is not None}
        changed = len(wanted) != before
    order: list[str] = []
    for name in cfg.jobs:
        for link in stages.chain_of(upstream, name):
            if link in wanted and link not in order:
                order.append(link)
    return order


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
    sources = _sources(cfg, job, cp, backlog) if jc.from_ is None else _stage_source(job, cp)
    for src, path, done in sources:
        shown = ChunkedFile(src.name) if len(chunked) < CHUNKED_FILES_SHOWN else None
        try:
            total = 0
            things = _read(cfg, job, src, path) if jc.from_ is None else _stage_items(job, cp)
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
        _project(cfg, job, cp, planned[jc.from_], backlog, calibration)
    provider = cfg.providers[jc.provider]
    minutes, bound = estimate_minutes(
        backlog.requests + backlog.projected_requests,
        backlog.reserved_tokens,
        provider.rpm,
        provider.tpm,
    )
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


def _stage_source(job: Job, cp: Checkpoint | None) -> Iterator[tuple[Source, Path, set[int]]]:
    """A stage has no files: one pseudo-source, whose items are its pending hand-off rows."""
    if cp is not None:
        yield Source(0, job.name, "dry-run", f"<{job.name}>", "", job.fingerprint), Path(), set()


def _stage_items(job: Job, cp: Checkpoint | None) -> Iterator[WorkItem]:
    """The items handed to a stage and not done, as the daemon's stage feeder makes them."""
    if cp is None:
        return
    src = Source(0, job.name, "dry-run", f"<{job.name}>", "", job.fingerprint)
    try:
        rows = cp.read(stage_pending, job.name)
    except sqlite3.OperationalError:
        return  # a state from before pipelines
    for row in rows:
        yield handoff.stage_item(src, row, job.config.per)


def _project(
    cfg: Config,
    job: Job,
    cp: Checkpoint | None,
    up: JobPlan,
    backlog: Backlog,
    calibration: Calibration,
) -> None:
    """Add what the upstream's backlog would hand this stage: every record kept (an upper
    bound, like the completion tokens), ``fan_out`` items each."""
    jc = job.config
    upcfg = cfg.jobs[up.job].config
    observed = None
    if cp is not None and jc.per == "item":
        with contextlib.suppress(sqlite3.OperationalError):
            handed = cp.read(stage_totals).get(job.name, 0)
            records = sum(c.records for c in cp.counts() if c.job == up.job)
            observed = handed / records if handed and records else None
    fan = stages.fan_out(jc.per, observed, upcfg.filters.max_items, upcfg.filters.min_items)
    upstream_requests = up.backlog.requests + up.backlog.projected_requests
    projected = round(upstream_requests * up.samples_per_request * fan)
    backlog.fan_out = round(fan, 3)
    backlog.projected_requests = projected
    if not projected:
        return
    context = up.backlog.context_chars / upstream_requests
    frame = len(job.template.render(dict.fromkeys(job.template.fields, ""))) + len(job.system or "")
    completion = upcfg.max_tokens * calibration.chars_per_token
    chars = stages.stage_prompt_chars(frame, job.template.fields, context, completion, fan)
    prompt_tokens = calibration.estimate(round(chars))
    backlog.prompt_tokens += projected * prompt_tokens
    backlog.completion_tokens_max += projected * jc.max_tokens * jc.samples
    backlog.reserved_tokens += projected * token_estimate(prompt_tokens, jc.max_tokens, jc.samples)
    backlog.context_chars += round(projected * context)


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


def _sources(
    cfg: Config, job: Job, cp: Checkpoint | None, backlog: Backlog
) -> Iterator[tuple[Source, Path, set[int]]]:
    """The job's files in the daemon's order: claimed ones, then the spool's, oldest first.

    Each comes with the seqs already done past its resume point (claimed files only).
    """
    job_dir = cfg.paths.spool / job.name
    if cp is not None:
        for src in cp.active_sources(job.name):
            if not spool.claim_surely_happened(cp, src):
                continue  # a claim whose rename never happened: the daemon forgets it
            backlog.files_claimed += 1
            yield src, Path(src.path), set(cp.done_after(src.id, src.resume_seq))
    try:
        entries = spool.scan(job_dir)
    except FileNotFoundError:
        return
    for entry in entries:
        backlog.files_pending += 1
        if entry.refused is not None:
            backlog.failing_files[entry.name] = "not_a_file"
            continue
        src = Source(0, job.name, "dry-run", entry.name, str(job_dir / entry.name), job.fingerprint)
        yield src, job_dir / entry.name, set()


def _read(cfg: Config, job: Job, src: Source, path: Path) -> Iterator[WorkItem | BadLine]:
    """The items of one file from its resume point, read by the daemon's own functions.

    A file the daemon would transcode at claim time is transcoded into a temporary copy.
    """
    with contextlib.ExitStack() as stack:
        if spool.untouched(src) and spool.file_bom_codec(path) is not None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="synthd-dry-run-"))
            path = spool.utf8_copy(path, Path(tmp))
        f = stack.enter_context(spool.open_at_resume(src, path))
        max_line = cfg.service.max_line_bytes
        yield from items_mod.reader_for(src, f, job.config, max_line, job.chunk_tokens)


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
        out.extend(_render_chunked(j.chunked))
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


SHOWN_CHARS = 400  # of each passage shown; --json has them whole


def _render_chunked(files: list[ChunkedFile]) -> list[str]:
    out = []
    for c in files:
        mean = c.tokens_total / max(1, c.passages)
        out.append(
            f"-- chunks of {c.file}: {c.passages:,} passages of ~{c.tokens_min:,} / "
            f"{mean:,.0f} / {c.tokens_max:,} tokens (min / mean / max)"
        )
        for i, ((start, end), text) in enumerate(c.first, 1):
            shown = text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + " [...]"
            out.append(f"   passage {i}, characters {start:,}-{end:,}:")
            out.append("   | " + shown.replace("\n", "\n   | "))
    return out


def _duration(minutes: float) -> str:
    if minutes < 1:
        return f"{minutes * 60:.1f} s"
    if minutes < 120:
        return f"{minutes:,.1f} min"
    return f"{minutes / 60:,.1f} h"
