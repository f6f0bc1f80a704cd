"""Batch mode: ``--items`` contexts through the simulator's Batch API with ``--once``.

One JSON line per run: wall time (start-up to the last record, the simulator's batch
processing time included), batches made, the daemon's CPU microseconds per item (user +
system, from wait4), its peak RSS, and the outcomes written. With ``--online`` the same
items go through online mode too, and a last line gives batch mode's CPU per item as a
share of online mode's: on a shared machine that ratio is the robust figure.

    .venv/bin/python bench/batch.py [--contexts ../shared/data/contexts.jsonl.gz]
        [--items 100000] [--batch-requests 10000] [--batch-time-s 2] [--online]
"""

from __future__ import annotations

import argparse
from typing import Any

from common import Workdir, arguments, contexts, emit, parse, ratio, sim_reset, sim_stats, simulator


def main() -> int:
    p = arguments(__doc__)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--batch-requests", type=int, default=10_000, help="batch_max_requests")
    p.add_argument("--batch-time-s", type=float, default=2.0, help="the simulator's batch time")
    p.add_argument("--online", action="store_true", help="also run online mode; the CPU ratio")
    args = parse(p)
    with simulator(["--batch-time-s", str(args.batch_time_s)]) as url:
        batch = measure(url, args, "batch")
        if args.online:
            online = measure(url, args, "online")
            emit(
                {
                    "batch_vs_online_cpu_per_item": ratio(batch, online, "cpu_us_per_item"),
                    "batch_vs_online_peak_rss": ratio(batch, online, "peak_rss_mb"),
                }
            )
    return 0


def measure(url: str, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    sim_reset(url)
    work = Workdir()
    job = ""
    if mode == "batch":
        job = "\n".join(
            [
                'mode = "batch"',
                f"batch_max_requests = {args.batch_requests}",
                "batch_poll_s = 0.5",
                "batch_poll_max_s = 2",
            ]
        )
    work.config(url, {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_in_flight": 512}, job)
    n = work.spool_jsonl(contexts(args.contexts, args.items))
    run = work.run("--once")
    stats = sim_stats(url)
    outcomes = work.count_lines() + work.count_lines("rejects") + work.count_lines("dead-letter")
    made = [e for e in run.log if e.get("event") == "batch_created"]
    figures = {
        "mode": mode,
        "items": n,
        "outcomes": outcomes,
        "batches_made": len(made),
        "online_requests": stats["by_status"].get("200", 0),
        "items_per_s": round(n / run.wall_s, 1),
        "cpu_us_per_item": round(1e6 * run.cpu_s / max(n, 1), 1),
        **run.figures(),
    }
    return work.report(figures, args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
