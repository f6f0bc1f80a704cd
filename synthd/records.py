"""Record formats: the JSON lines an item's outcome adds to out/<job>/. Pure.

Every line carries ``source`` = {file, line, seq, claim, end}: the input it came
from, and what recovery needs to tie it back to the checkpoint.
"""

from __future__ import annotations

import hashlib
from typing import Any

from synthd.config import Job
from synthd.models import Accepted, BadLine, Outcome, Rejection, Reply, Source, WorkItem


def record_id(job: str, source: str, line: int, sample: int, context: str) -> str:
    """Stable across re-runs: the same job, input and sample give the same id."""
    h = hashlib.blake2b(digest_size=10)
    h.update(f"{job}\0{source}\0{line}\0{sample}\0".encode())
    h.update(context.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def digest(text: str) -> int:
    """The de-duplication key of a completion: 63 bits, to fit SQLite's INTEGER."""
    raw = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "big") >> 1


def source_of(item: WorkItem | BadLine) -> dict[str, Any]:
    src = item.source
    out: dict[str, Any] = {
        "file": src.name,
        "line": item.line,
        "seq": item.seq,
        "claim": src.claim,
        "end": item.end,
    }
    if isinstance(item, WorkItem) and item.span is not None:
        out["chunk"] = item.chunk
        out["span"] = list(item.span)
    return out


def lineage(source: Source) -> dict[str, Any]:
    """A pipeline stage's outcome names the upstream record it was made from."""
    if source.parent is None:
        return {}
    return {"parent": source.parent, "parent_fingerprint": source.parent_fingerprint}


def completed(
    job: Job,
    item: WorkItem,
    prompt: Any,
    params: dict[str, Any],
    reply: Reply,
    results: list[Accepted | Rejection],
    now: float,
    sent_context: str | None = None,
) -> Outcome:
    """The outcome of an item whose request succeeded: records and rejects.

    ``sent_context`` is the context as the model saw it, when the prompt was
    truncated; ids stay derived from the full input, so they stay stable.
    """
    source = source_of(item)
    usage = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    prompt_key = "messages" if job.config.api == "chat" else "prompt"
    context = item.fields["context"]
    records: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    digests: list[int] = []
    parent = lineage(item.source)
    judged = item.fields.get("completion") if job.config.judge is not None else None
    for sample, (choice, result) in enumerate(zip(reply.choices, results, strict=True)):
        base = {
            "id": record_id(job.name, item.source.name, item.line, sample, context),
            "job": job.name,
            "source": source,
            "sample": sample,
            **parent,
        }
        if isinstance(result, Rejection):
            reject = {
                **base,
                "stage": "filter",
                "reason": result.reason,
                "detail": result.detail,
                "completion": choice.text,
                "finish_reason": choice.finish_reason,
                "params": params,
                "created": int(now),  # for the report's timeline
                "context": context if sent_context is None else sent_context,
                **({"meta": item.meta} if item.meta else {}),
            }
            if result.score is not None:
                reject["score"] = result.score
            rejects.append(reject)
            continue
        rec: dict[str, Any] = {
            **base,
            prompt_key: prompt,
            "context": context if sent_context is None else sent_context,  # for exports
            "completion": result.text,
            "model": reply.model,
            "params": params,
            "usage": usage,
            "finish_reason": choice.finish_reason,
            "fingerprint": job.fingerprint,
            "created": int(now),
        }
        if result.items is not None:
            rec["items"] = result.items
        if result.turns is not None:
            rec["turns"] = [{"speaker": s, "text": t} for s, t in result.turns]
        if result.data is not None:
            rec["data"] = result.data
        if item.meta:
            rec["meta"] = item.meta
        if "item" in item.fields and item.source.parent is not None:
            rec["item"] = item.fields["item"]  # a stage's element travels down the chain
        if judged is not None:
            # A judge's record is the record it judged, with the verdict beside it.
            rec["completion"] = judged
            rec["score"] = result.data["score"]
            rec["judge"] = {"completion": result.text, **result.data}
            del rec["data"]
        records.append(rec)
        digests.append(digest(rec["completion"]))
    lines: dict[str, list[dict[str, Any]]] = {}
    if records:
        lines["records"] = records
    if rejects:
        lines["rejects"] = rejects
    return Outcome(
        source=item.source,
        seq=item.seq,
        line=item.line,
        end=item.end,
        state="record" if records else "rejected",
        lines=lines,
        digests=digests if job.config.filters.dedupe else [],
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
    )


def dead_letter(
    job: Job, item: WorkItem, error: str, kind: str, attempts: int, now: float
) -> Outcome:
    """The outcome of an item that exhausted its attempts or was refused."""
    line = {
        "job": job.name,
        "source": source_of(item),
        "sample": None,
        **lineage(item.source),
        "error": error,
        "kind": kind,
        "attempts": attempts,
        "fields": item.fields,
        "failed_at": now,
    }
    return Outcome(item.source, item.seq, item.line, item.end, "dead", {"dead": [line]})


def bad_input(job: Job, bad: BadLine, now: float) -> Outcome:
    """The outcome of an input line that could not become an item."""
    line = {
        "job": job.name,
        "source": source_of(bad),
        "sample": None,
        **lineage(bad.source),
        "stage": "input",
        "reason": bad.reason,
        "detail": bad.detail,
        "created": now,
    }
    return Outcome(bad.source, bad.seq, bad.line, bad.end, "bad_input", {"rejects": [line]})
