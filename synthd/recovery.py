"""Recovery at start-up: the shards reconciled with the checkpoint after a crash.

A crash between the writer's fsync and its commit leaves lines past the offset
the checkpoint vouches for. ``recover`` reads each shard's tail past that
offset, adopts the items whose lines are all there (their requests are not
paid for again), and cuts the rest, a torn last line included, by truncation
only: a cut is one ``ftruncate``, which a second crash cannot tear.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson
import structlog

from synthd import crashpoints
from synthd.checkpoint import Checkpoint
from synthd.models import Outcome, Source
from synthd.neardup import Params
from synthd.nearindex import near_keep
from synthd.records import digest
from synthd.shards import ShardStream, Tail
from synthd.stagestore import StageLinks, hand_over

log = structlog.get_logger("synthd.recovery")


def recover(
    cp: Checkpoint,
    streams_of: dict[str, dict[str, ShardStream]],
    links: StageLinks | None = None,
    near: Mapping[str, Params] | None = None,
) -> int:
    """Reconcile every job's shards with the checkpoint; returns the items adopted.

    An adopted record hands its pipeline stages (``links``) their items in the same
    transaction, and joins its job's de-duplication index (exact, and ``near`` where the
    job has it), as the commit the crash cut short would have.

    Blocking; runs once, before any work is read and before any shard is appended to.
    """
    adopted = 0
    for job, streams in streams_of.items():
        tails: dict[str, list[Tail]] = {}
        for kind, stream in streams.items():
            stream.last_number = max(stream.last_number, cp.last_shard(job, kind))
            tails[kind] = [
                stream.recover(p, cp.shard_offset((job, kind, stream.number_of(p)), old))
                for p, old in stream.parts_with_legacy_paths()
            ]
        adopted += _adopt(cp, job, tails, links or {}, (near or {}).get(job))
        for stream in streams.values():
            parts = stream.parts()
            if parts[:-1]:
                cp.sync()  # see _rotate_pending
            for p in parts[:-1]:  # only the newest may stay open
                os.rename(p, p.with_name(p.name.removesuffix(".part")))
            if parts:
                stream.resume(parts[-1])
    return adopted


def _adopt(
    cp: Checkpoint,
    job: str,
    tails: dict[str, list[Tail]],
    links: StageLinks,
    near: Params | None,
) -> int:
    """Adopt the complete items past the committed offsets; cut the rest.

    Only truncation, never a rewrite: each tail is cut at its first line
    that is not kept, and an item with a line past any cut is not kept
    either (it is redone), until that settles.
    """
    keyed: list[tuple[str, Tail, list[tuple[str, int] | None]]] = []
    lines_of: dict[tuple[str, int], list[tuple[str, dict[str, Any], bytes]]] = {}
    for kind, kind_tails in tails.items():
        for tail in kind_tails:
            keys: list[tuple[str, int] | None] = []
            for raw in tail.lines:
                try:
                    obj = orjson.loads(raw)
                    key = (obj["source"]["claim"], int(obj["source"]["seq"]))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    keys.append(None)  # not ours or garbage: cut below
                    continue
                keys.append(key)
                lines_of.setdefault(key, []).append((kind, obj, raw))
            keyed.append((kind, tail, keys))
    ids = cp.claim_ids(c for c, _ in lines_of)
    keep = {k for k, v in lines_of.items() if k[0] in ids and _complete(v)}
    cut_at: dict[str, int] = {}
    while True:
        dropped: set[tuple[str, int]] = set()
        for _, tail, keys in keyed:
            first = next((i for i, k in enumerate(keys) if k not in keep), len(keys))
            cut_at[tail.path] = first
            dropped.update(k for k in keys[first:] if k in keep)
        if not dropped:
            break
        keep -= dropped
    outcomes = [_outcome_from_lines(ids[k[0]], job, k[1], lines_of[k]) for k in keep]
    with cp.transaction() as tx:
        for kind, tail, _ in keyed:
            size = tail.start + sum(len(raw) + 1 for raw in tail.lines[: cut_at[tail.path]])
            if tail.lines or size != os.path.getsize(tail.path):
                crashpoints.hit("recovery_cut")  # a tail to settle: cut, adopt or both
                ShardStream.cut(tail.path, size)
            tx.shard_offsets({(job, kind, tail.number): size})
        tx.record(outcomes)
        tx.dedupe(job, [d for o in outcomes for d in o.digests])
        if job in links:
            ours = sorted(keep)
            kept = [(job, r) for k in ours for kind, r, _ in lines_of[k] if kind == "records"]
            hand_over(tx.db, kept, links)
        if near is not None:
            for k in keep:
                for kind, obj, _ in lines_of[k]:
                    if kind == "records":
                        near_keep(tx.db, job, obj["id"], near.keys(obj))
    if any(tail.lines for _, tail, _ in keyed):
        crashpoints.hit("recovery_adopted")
    for o in outcomes:
        log.info("record_adopted", job=job, claim=o.source.claim, seq=o.seq)
    return len(outcomes)


def _complete(lines: list[tuple[str, dict[str, Any], bytes]]) -> bool:
    """An item's lines are complete when every sample it asked for is there."""
    samples = [obj for _, obj, _ in lines if obj.get("sample") is not None]
    if not samples:
        return True  # a dead letter or a bad input line stands alone
    n = int(samples[0].get("params", {}).get("n", 1))
    return len({obj["sample"] for obj in samples}) == n


def _outcome_from_lines(
    source_id: int, job: str, seq: int, lines: list[tuple[str, dict[str, Any], bytes]]
) -> Outcome:
    kinds = {kind for kind, _, _ in lines}
    first = lines[0][1]
    src = Source(source_id, job, first["source"]["claim"], first["source"].get("file", ""), "", "")
    state = "record" if "records" in kinds else "dead" if "dead" in kinds else "rejected"
    if state == "rejected" and first.get("stage") == "input":
        state = "bad_input"
    usage = first.get("usage") or {}
    records = [obj for k, obj, _ in lines if k == "records"]
    return Outcome(
        source=src,
        seq=seq,
        line=int(first["source"].get("line", 0)),
        end=int(first["source"].get("end", 0)),
        state=state,
        digests=[digest(obj["completion"]) for obj in records],
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        records_written=len(records),
    )
