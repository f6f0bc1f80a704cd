"""Near-duplicate filter: quality on real contexts, then cost at scale.

Runs the writer's near-dedupe path as the daemon does (keys hashed, then
``nearindex.near_match`` and ``near_keep`` in one checkpoint transaction per commit of
``--batch`` records) without the daemon around it, so that the figures are its own.

1. Quality: every distinct context of ``--contexts`` goes through the index; a flag whose
   exact Jaccard similarity (over the same shingles) is below the threshold is a false
   positive. Then a planted variant of each of ``--planted`` kept contexts (clauses
   reordered, one word changed, case and punctuation changed): the share caught is the recall.
2. Scale: ``--records`` texts, each two halves of different contexts (distinct, but alike in
   kind), of which every tenth is a planted variant of an earlier one: records per second
   of CPU, resident memory and database bytes per million records.

    .venv/bin/python bench/near_dedupe.py --contexts ../shared/data/contexts.jsonl.gz \
        [--records 1000000] [--threshold 0.85] [--shingle-words 1]
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import tempfile
import time
from pathlib import Path

import orjson
from common import emit

from synthd import neardup
from synthd.checkpoint import Checkpoint
from synthd.nearindex import near_keep, near_match


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def plant(text: str, rng: random.Random) -> str:
    words = text.split()
    kind = rng.randrange(3)
    if kind == 0 and len(words) > 4:  # clauses reordered
        cut = rng.randrange(1, len(words))
        return " ".join(words[cut:] + words[:cut])
    words[rng.randrange(len(words))] = "really"  # one word changed
    out = " ".join(words)
    return out.upper().replace(",", " ;") if kind == 2 else out


def jaccard(a: str, b: str, k: int) -> float:
    x, y = set(neardup.shingles(a, k)), set(neardup.shingles(b, k))
    return len(x & y) / len(x | y)


def quality(texts: list[str], p: neardup.Params, planted: int) -> dict[str, object]:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as d:
        cp = Checkpoint(Path(d) / "synthd.db")
        kept: dict[str, str] = {}
        flagged = false_pos = 0
        with cp.transaction() as tx:
            for i, t in enumerate(texts):
                keys = p.keys({"completion": t})
                m = near_match(tx.db, "q", keys, p.threshold)
                if m is None:
                    near_keep(tx.db, "q", str(i), keys)
                    kept[str(i)] = t
                    continue
                flagged += 1
                false_pos += jaccard(t, kept[m[0]], p.shingle_words) < p.threshold
            sample = rng.sample(sorted(kept), min(planted, len(kept)))
            caught = sum(
                near_match(tx.db, "q", p.keys({"completion": plant(kept[k], rng)}), p.threshold)
                is not None
                for k in sample
            )
        cp.close()
    return {
        "contexts": len(texts),
        "flagged": flagged,
        "false_positives": false_pos,
        "false_positive_rate": round(false_pos / len(texts), 6),
        "planted": len(sample),
        "planted_caught": caught,
        "recall": round(caught / max(1, len(sample)), 4),
    }


def scale(
    texts: list[str], p: neardup.Params, n: int, batch: int, progress_every: int = 100_000
) -> dict[str, object]:
    rng = random.Random(11)
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "synthd.db"
        cp = Checkpoint(db)
        recent: list[str] = []
        rss0, cpu0, wall0 = rss_mb(), time.process_time(), time.perf_counter()
        rejected = 0
        for start in range(0, n, batch):
            made = []
            for i in range(start, min(n, start + batch)):
                if i % 10 == 9 and recent:
                    made.append(plant(rng.choice(recent), rng))
                    continue
                # The second half's context moves on every pass over the contexts, so that
                # no two texts are alike, though each first half comes back.
                n_ctx = len(texts)
                a, b = texts[i % n_ctx], texts[(i * 7919 + 13 + i // n_ctx * 104_729) % n_ctx]
                t = a[: len(a) // 2] + " " + b[len(b) // 2 :] + f" {i}"
                made.append(t)
                if len(recent) < 1000:
                    recent.append(t)
                else:
                    recent[rng.randrange(1000)] = t
            keys = [p.keys({"completion": t}) for t in made]  # the writer, before its lock
            with cp.transaction() as tx:
                for j, k in enumerate(keys):
                    if near_match(tx.db, "q", k, p.threshold) is None:
                        near_keep(tx.db, "q", f"r{start + j}", k)
                    else:
                        rejected += 1
            done = start + len(made)
            if done % progress_every == 0 and done < n:
                so_far = time.process_time() - cpu0
                grown_mb = rss_mb() - rss0
                db_mb = sum(f.stat().st_size for f in Path(d).iterdir()) / 1e6
                emit(
                    {
                        "records_so_far": done,
                        "rejected": rejected,
                        "cpu_us_per_record": round(so_far / done * 1e6, 1),
                        "rss_growth_mb": round(grown_mb, 1),
                        "db_mb": round(db_mb, 1),
                    }
                )
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        grown = rss_mb() - rss0
        cp.close()
        size = sum(f.stat().st_size for f in Path(d).iterdir())
    return {
        "records": n,
        "rejected": rejected,
        "records_per_cpu_s": round(n / cpu),
        "records_per_wall_s": round(n / wall),
        "cpu_us_per_record": round(cpu / n * 1e6, 1),
        "rss_growth_mb_per_million": round(grown / n * 1e6, 1),
        "db_mb_per_million": round(size / 1e6 / n * 1e6, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=Path, required=True)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--threshold", type=float, default=0.85)
    ap.add_argument("--shingle-words", type=int, default=1)
    ap.add_argument("--planted", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    with gzip.open(args.contexts) as f:
        texts = list(dict.fromkeys(orjson.loads(line)["text"] for line in f))
    p = neardup.Params(args.threshold, "completion", args.shingle_words)
    out: dict[str, object] = {"threshold": p.threshold, "shingle_words": p.shingle_words}
    out["band_rows"] = p.rows
    if not args.skip_quality:
        out.update(quality(texts, p, args.planted))
    if not args.skip_scale:
        out.update(scale(texts, p, args.records, args.batch))
    emit(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
