"""What a job's output holds, counted line by line: the numbers of ``synthd report``. Pure.

``Tally`` takes the record, reject and dead-letter lines one at a time and keeps only
counters, one small integer per line for the length distributions, and fixed-size samples,
so a million records cost tens of MB, whatever their size. ``to_json`` turns it into the
report's JSON (the HTML page draws the same dict).

Lexical diversity is measured on a uniform sample of ``DIVERSITY_SAMPLE`` completions
(reservoir sampling with a fixed seed: the same shards give the same figures): distinct
n-grams over all n-grams, and distinct n-grams per record.
"""

from __future__ import annotations

import random
import re
from array import array
from collections import Counter
from typing import Any

DIVERSITY_SAMPLE = 10_000
SIDE_BY_SIDE = 6  # kept and rejected records shown in the report
TOP_OPENINGS = 15
_WORD = re.compile(r"\w+")
_NICE_BUCKETS_S = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 21600, 86400)
_MAX_BUCKETS = 120

# A reject's reason -> the filter (config key) that gave it.
_FILTER_OF = {
    "duplicate": "dedupe",
    "near_duplicate": "near_dedupe",
    "empty": "empty completion",
    "drop_if_matching": "drop_if_matching",
    "not_single_paragraph": "single_paragraph",
    "too_few_items": "min_items",
    "unknown_speaker": "split = turns",
    "text_before_first_turn": "split = turns",
    "broken_alternation": "split = turns",
    "empty_turn": "split = turns",
    "too_few_turns": "min_turns",
    "invalid_json": "require_json",
    "schema": "json_schema",
    "too_short": "min_chars",
    "too_long": "max_chars",
}


def filter_of(reject: dict[str, Any]) -> str:
    """The filter behind a reject line: a config key, or the stage that refused it."""
    reason = str(reject.get("reason", ""))
    if reject.get("stage") == "input":
        return "input"
    if reason.startswith("finish_reason:"):
        return "reject_finish_reasons"
    return _FILTER_OF.get(reason, reason or "unknown")


def opening(text: str, words: int = 2) -> str:
    """The first words of a text, as a reader sees them repeat ("Here are", "As a")."""
    return " ".join(text.split(None, words)[:words])


class Reservoir:
    """A uniform sample of fixed size from a stream of unknown length (Algorithm R)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seen = 0
        self.items: list[Any] = []
        self._rng = random.Random(seed)

    def add(self, item: Any) -> None:
        if (slot := self.slot()) is not None:
            self.put(slot, item)

    def slot(self) -> int | None:
        """Count one more item; the slot it takes, or None if it is not sampled. Lets a
        caller build an expensive item only when it is kept."""
        self.seen += 1
        if len(self.items) < self.size:
            return len(self.items)
        j = self._rng.randrange(self.seen)
        return j if j < self.size else None

    def put(self, slot: int, item: Any) -> None:
        if slot == len(self.items):
            self.items.append(item)
        else:
            self.items[slot] = item


class Tally:
    """Counts over one job's lines; feed it with ``record``, ``reject`` and ``dead``."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.records = 0
        self.rejects = 0
        self.dead = 0
        self.by_reason: Counter[str] = Counter()
        self.by_filter: Counter[str] = Counter()
        self.dead_by_kind: Counter[str] = Counter()
        self.timeline: dict[str, Counter[int]] = {k: Counter() for k in ("records", "rejects")}
        self.timeline["dead"] = Counter()
        self.undated = 0
        self.context_chars = array("I")
        self.completion_chars = array("I")
        self.item_chars = array("I")
        self.items_per_record = array("I")
        self.openings: Counter[str] = Counter()
        self.item_openings: Counter[str] = Counter()
        self.similarities = array("d")
        self._diversity = Reservoir(DIVERSITY_SAMPLE, 1)
        self._kept = Reservoir(SIDE_BY_SIDE, 2)
        self._rejected = Reservoir(SIDE_BY_SIDE, 3)

    def _when(self, stream: str, t: Any) -> None:
        if isinstance(t, int | float) and t > 0:
            self.timeline[stream][int(t)] += 1  # per second; bucketed by to_json
        else:
            self.undated += 1

    def record(self, rec: dict[str, Any]) -> None:
        self.records += 1
        self._when("records", rec.get("created"))
        completion = str(rec.get("completion") or "")
        self.context_chars.append(len(str(rec.get("context") or "")))
        self.completion_chars.append(len(completion))
        self.openings[opening(completion)] += 1
        items = rec.get("items")
        if isinstance(items, list):
            self.items_per_record.append(len(items))
            for item in items:
                text = item if isinstance(item, str) else str(item)
                self.item_chars.append(len(text))
                self.item_openings[" ".join(text.split(None, 2)[:2])] += 1  # opening(), inline
        self._diversity.add(completion)
        if (slot := self._kept.slot()) is not None:
            self._kept.put(slot, _shown(rec))

    def reject(self, rej: dict[str, Any]) -> None:
        self.rejects += 1
        self._when("rejects", rej.get("created"))
        self.by_reason[str(rej.get("reason", "unknown"))] += 1
        self.by_filter[filter_of(rej)] += 1
        if rej.get("reason") == "near_duplicate" and isinstance(rej.get("similarity"), float):
            self.similarities.append(rej["similarity"])
        if (slot := self._rejected.slot()) is not None:
            self._rejected.put(slot, _shown(rej))

    def dead_letter(self, dead: dict[str, Any]) -> None:
        self.dead += 1
        self._when("dead", dead.get("failed_at"))
        self.dead_by_kind[str(dead.get("kind", "unknown"))] += 1

    def to_json(self) -> dict[str, Any]:
        judged = self.records + self.rejects
        near = self.by_reason.get("near_duplicate", 0)
        return {
            "job": self.job,
            "totals": {"records": self.records, "rejects": self.rejects, "dead": self.dead},
            "pass_rate": round(self.records / judged, 4) if judged else None,
            "timeline": timeline(self.timeline, self.undated),
            "rejects_by_reason": dict(self.by_reason.most_common()),
            "rejects_by_filter": dict(self.by_filter.most_common()),
            "dead_by_kind": dict(self.dead_by_kind.most_common()),
            "near_duplicates": {
                "count": near,
                "share": round(near / (self.records + near), 4) if self.records + near else 0.0,
                "similarity": summary(self.similarities),
            },
            "lengths": {
                "context_chars": summary(self.context_chars),
                "completion_chars": summary(self.completion_chars),
                "item_chars": summary(self.item_chars),
                "items_per_record": summary(self.items_per_record),
            },
            "diversity": diversity(self._diversity.items, self._diversity.seen),
            "openings": [[k, n] for k, n in self.openings.most_common(TOP_OPENINGS)],
            "item_openings": [[k, n] for k, n in self.item_openings.most_common(TOP_OPENINGS)],
            "samples": {"kept": self._kept.items, "rejected": self._rejected.items},
        }


def timeline(per_second: dict[str, Counter[int]], undated: int) -> dict[str, Any]:
    """Each stream's lines per bucket: the smallest round bucket that gives at most
    ``_MAX_BUCKETS`` of them over the whole span, so a short run and a week both read."""
    times = [t for c in per_second.values() for t in c]
    span = max(times) - min(times) if times else 0
    bucket = next((b for b in _NICE_BUCKETS_S if span // b < _MAX_BUCKETS), _NICE_BUCKETS_S[-1])
    out: dict[str, Any] = {"bucket_s": bucket, "undated": undated}
    for stream, counts in per_second.items():
        binned: Counter[int] = Counter()
        for t, n in counts.items():
            binned[t // bucket * bucket] += n
        out[stream] = [[t, n] for t, n in sorted(binned.items())]
    return out


def summary(values: array[Any]) -> dict[str, Any]:
    """Count, mean, percentiles and a 20-bin histogram of a length or score column."""
    n = len(values)
    if n == 0:
        return {"count": 0}
    ordered = sorted(values)
    lo, hi = ordered[0], ordered[-1]
    width = (hi - lo) / 20 or 1
    bins = [0] * 20
    for v in ordered:
        bins[min(19, int((v - lo) / width))] += 1
    return {
        "count": n,
        "mean": round(sum(ordered) / n, 2),
        "min": lo,
        "p50": ordered[n // 2],
        "p90": ordered[min(n - 1, n * 9 // 10)],
        "p99": ordered[min(n - 1, n * 99 // 100)],
        "max": hi,
        "histogram": {"edges": [round(lo + i * width, 4) for i in range(21)], "counts": bins},
    }


def diversity(texts: list[str], population: int) -> dict[str, Any]:
    """distinct-n (distinct n-grams / all n-grams) and distinct n-grams per record."""
    out: dict[str, Any] = {"sample": len(texts), "of": population}
    for n in (1, 2, 3):
        grams: set[tuple[str, ...]] = set()
        total = 0
        for t in texts:
            w = _WORD.findall(t.lower())
            g = list(zip(*(w[i:] for i in range(n)), strict=False))
            total += len(g)
            grams.update(g)
        out[f"distinct_{n}"] = round(len(grams) / total, 4) if total else 0.0
        out[f"distinct_{n}_per_record"] = round(len(grams) / len(texts), 2) if texts else 0.0
    return out


def _shown(line: dict[str, Any]) -> dict[str, Any]:
    """What the side-by-side sample shows of a line."""
    return {
        "id": line.get("id"),
        "source": line.get("source"),
        "context": _cut(line.get("context")),
        "completion": _cut(line.get("completion")),
        "reason": line.get("reason"),
        "detail": line.get("detail"),
        "kept": line.get("kept"),
    }


def _cut(text: Any, limit: int = 600) -> str | None:
    if text is None:
        return None
    s = str(text)
    return s if len(s) <= limit else s[:limit] + "…"
