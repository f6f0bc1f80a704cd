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
import os
import platform
from pathlib import Path
from typing import Any

from common import Workdir, contexts, emit, sim_reset, sim_stats, start_sim, stop


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contexts", type=Path, help="contexts.jsonl.gz (default: synthetic)")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--batch-requests", type=int, default=10_000, help="batch_max_requests")
    p.add_argument("--batch-time-s", type=float, default=2.0, help="the simulator's batch time")
    p.add_argument("--online", action="store_true", help="also run online mode; the CPU ratio")
    p.add_argument("--keep", action="store_true", help="keep the work folders")
    args = p.parse_args()
    emit(
        {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    )
    sim, url = start_sim(["--batch-time-s", str(args.batch_time_s)])
    try:
        batch = measure(url, args, "batch")
        if args.online:
            online = measure(url, args, "online")
            emit(
                {
                    "batch_vs_online_cpu_per_item": round(
                        batch["cpu_us_per_item"] / online["cpu_us_per_item"], 2
                    ),
                    "batch_vs_online_peak_rss": round(
                        batch["peak_rss_mb"] / online["peak_rss_mb"], 2
                    ),
                }
            )
    finally:
        stop(sim)
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
        "wall_s": round(run.wall_s, 2),
        "items_per_s": round(n / run.wall_s, 1),
        "cpu_us_per_item": round(1e6 * run.cpu_s / max(n, 1), 1),
        "daemon_cpu_s": round(run.cpu_s, 2),
        "peak_rss_mb": round(run.max_rss_mb, 1),
        "exit": run.returncode,
    }
    emit(figures)
    if not args.keep:
        work.remove()
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
