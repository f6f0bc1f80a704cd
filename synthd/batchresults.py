"""A batch's result lines as outcomes: the same records, rejects and dead letters as online
mode, marked with the batch and what they cost. Pure.

A member (``batchfile.Member``) carries what its record needs besides the reply: its source
position, its fields, the context as sent; its request line (read back from the batch's
local file) gives the prompt as sent. A member without a result when its batch ends goes
in the next round, online, or to the dead letters (``unfinished``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Any

from synthd import records
from synthd.batchfile import LineResult, Member, body_of
from synthd.config import Job, Price
from synthd.config_jobs import BatchFallback
from synthd.cost import BATCH_DISCOUNT, price_usd
from synthd.filters import FilterChain
from synthd.models import Outcome, Rejection, Reply, Source, WorkItem


def item_of(m: Member, source: Source) -> WorkItem:
    return WorkItem(source, m.seq, m.line, m.end, m.fields, m.meta)


def prompt_of(body: dict[str, Any]) -> Any:
    """The messages (chat) or the prompt (completions) of a request body, as recorded."""
    return body["messages"] if "messages" in body else body.get("prompt")


def completed(
    job: Job,
    filters: FilterChain,
    m: Member,
    source: Source,
    line: bytes,
    params: dict[str, Any],
    reply: Reply,
    batch_id: str | None,
    price: Price | None,
    now: float,
) -> tuple[Outcome, list[Rejection]]:
    """One success line's outcome (through the job's filters), and its rejections."""
    results = [filters.apply(c.text, c.finish_reason) for c in reply.choices]
    item = item_of(m, source)
    prompt = prompt_of(body_of(line))
    out = records.completed(job, item, prompt, params, reply, results, now, m.sent_context)
    cost = price_usd(price, reply.prompt_tokens, reply.completion_tokens)
    for kind in ("records", "rejects"):
        for ln in out.lines.get(kind, ()):
            ln["batch_id"] = batch_id
            if cost is not None and kind == "records":
                ln["cost_usd"] = round((cost[0] + cost[1]) * BATCH_DISCOUNT, 8)
    return out, [r for r in results if isinstance(r, Rejection)]


def dead(
    job: Job,
    m: Member,
    source: Source,
    failure: LineResult | None,
    whole: str,
    batch_id: str | None,
    now: float,
) -> Outcome:
    """The dead letter of an item out of rounds: its own line's error, else the batch's."""
    reason = failure.error if failure is not None else whole
    detail = f"{reason}: {failure.detail}" if failure is not None and failure.detail else reason
    out = records.dead_letter(job, item_of(m, source), str(detail), "batch", m.tries + 1, now)
    for d in out.lines["dead"]:
        d["batch_id"] = batch_id
    return out


def unfinished(
    members: list[Member],
    handled: Collection[str],
    sources: Mapping[int, Source],
    status: str,
    fallback: BatchFallback,
    max_resubmits: int,
) -> tuple[list[Member], list[Member], list[Member]]:
    """What becomes of a closed batch's members without a result: sent in the next round
    (their tries counted), sent online (an expiry, with ``batch_fallback = "online"``),
    or dead letters (out of rounds); each in the members' order. A member already done,
    or whose source is gone, is none of these."""
    again: list[Member] = []
    online: list[Member] = []
    dead: list[Member] = []
    for m in members:
        if m.custom_id in handled or m.source_id not in sources:
            continue
        if status == "expired" and fallback == "online":
            online.append(m)
        elif m.tries < max_resubmits:
            again.append(replace(m, tries=m.tries + 1))
        else:
            dead.append(m)
    return again, online, dead
