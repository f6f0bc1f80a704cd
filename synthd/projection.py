"""Dry-run's projection of a pipeline: what its stages would do once their upstream ran.

A stage (a job with ``from``) has no files. Its backlog is of two parts: the items already
handed over to it and not done (rows of the hand-off table, read as the daemon's stage
feeder reads them), and what its upstream's own backlog would hand it, projected at
``fan_out`` items per upstream record with every record kept: an upper bound, like the
completion tokens. A chain is costed whole, so ``with_chains`` adds every job of a named
job's pipelines, each after the job it takes from.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from synthd import handoff, stages
from synthd.checkpoint import Checkpoint
from synthd.config import Config, Job
from synthd.models import Source, WorkItem
from synthd.ratemath import Calibration, token_estimate
from synthd.stagestore import stage_pending, stage_totals


@dataclass(frozen=True, slots=True)
class Projection:
    """What a stage's upstream backlog would add to the stage's own."""

    fan_out: float  # items per upstream record
    requests: int
    prompt_tokens: int
    completion_tokens_max: int
    reserved_tokens: int
    context_chars: int


def with_chains(cfg: Config, names: list[str]) -> list[str]:
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


def stage_source(job: Job, cp: Checkpoint | None) -> Iterator[tuple[Source, Path, set[int]]]:
    """A stage has no files: one pseudo-source, whose items are its pending hand-off rows."""
    if cp is not None:
        yield _pseudo_source(job), Path(), set()


def stage_items(job: Job, cp: Checkpoint | None) -> Iterator[WorkItem]:
    """The items handed to a stage and not done, as the daemon's stage feeder makes them."""
    if cp is None:
        return
    src = _pseudo_source(job)
    try:
        rows = cp.read(stage_pending, job.name)
    except sqlite3.OperationalError:
        return  # a state from before pipelines
    for row in rows:
        yield handoff.stage_item(src, row, job.config.per)


def _pseudo_source(job: Job) -> Source:
    return Source(0, job.name, "dry-run", f"<{job.name}>", "", job.fingerprint)


def project(
    cfg: Config,
    job: Job,
    cp: Checkpoint | None,
    upstream_requests: int,
    upstream_context_chars: int,
    calibration: Calibration,
) -> Projection:
    """What the upstream's backlog (``upstream_requests``, their contexts
    ``upstream_context_chars`` long in all) would hand this stage: every record kept,
    ``fan_out`` items each, the fan-out observed in the checkpoint where it has one."""
    jc = job.config
    assert jc.from_ is not None
    upcfg = cfg.jobs[jc.from_].config
    observed = None
    if cp is not None and jc.per == "item":
        with contextlib.suppress(sqlite3.OperationalError):
            handed = cp.read(stage_totals).get(job.name, 0)
            records = sum(c.records for c in cp.counts() if c.job == jc.from_)
            observed = handed / records if handed and records else None
    fan = stages.fan_out(jc.per, observed, upcfg.filters.max_items, upcfg.filters.min_items)
    projected = round(upstream_requests * upcfg.samples * fan)
    if not projected:
        return Projection(round(fan, 3), 0, 0, 0, 0, 0)
    context = upstream_context_chars / upstream_requests
    frame = len(job.template.render(dict.fromkeys(job.template.fields, ""))) + len(job.system or "")
    completion = upcfg.max_tokens * calibration.chars_per_token
    chars = stages.stage_prompt_chars(frame, job.template.fields, context, completion, fan)
    prompt_tokens = calibration.estimate(round(chars))
    return Projection(
        fan_out=round(fan, 3),
        requests=projected,
        prompt_tokens=projected * prompt_tokens,
        completion_tokens_max=projected * jc.max_tokens * jc.samples,
        reserved_tokens=projected * token_estimate(prompt_tokens, jc.max_tokens, jc.samples),
        context_chars=round(projected * context),
    )
