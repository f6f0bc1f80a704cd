"""Requests/s and the daemon's CPU per request, at several max_in_flight settings.

For each server latency (none, then 50 ms) and each ``max_in_flight`` (64, 512,
2048) this runs a fresh daemon with ``--once`` on ``--items`` contexts against a
simulator with no rate limit, and prints one JSON line: requests/s served
(items / wall time, start-up included), the daemon's CPU microseconds per
request (user + system time of its process, from wait4, start-up included) and
its peak RSS.

    .venv/bin/python bench/throughput.py [--contexts ../shared/data/contexts.jsonl.gz]
        [--items 6000] [--latency-ms 0 50] [--in-flight 64 512 2048]
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

from common import Workdir, contexts, emit, sim_reset, sim_stats, start_sim, stop


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contexts", type=Path, help="contexts.jsonl.gz (default: synthetic)")
    p.add_argument("--items", type=int, default=6000)
    p.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 50.0])
    p.add_argument("--in-flight", type=int, nargs="+", default=[64, 512, 2048])
    p.add_argument("--keep", action="store_true", help="keep the work folders")
    args = p.parse_args()
    emit(
        {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    )
    for latency in args.latency_ms:
        sim, url = start_sim(["--latency-ms", str(latency)])
        try:
            for in_flight in args.in_flight:
                sim_reset(url)
                work = Workdir()
                work.config(
                    url, {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_in_flight": in_flight}
                )
                n = work.spool_jsonl(contexts(args.contexts, args.items))
                run = work.run("--once")
                served = sim_stats(url)["by_status"].get("200", 0)
                records = work.count_lines() + work.count_lines("rejects")
                emit(
                    {
                        "latency_ms": latency,
                        "max_in_flight": in_flight,
                        "items": n,
                        "outcomes": records,
                        "requests": served,
                        "wall_s": round(run.wall_s, 2),
                        "requests_per_s": round(served / run.wall_s, 1),
                        "cpu_us_per_request": round(1e6 * run.cpu_s / max(served, 1), 1),
                        "daemon_cpu_s": round(run.cpu_s, 2),
                        "peak_rss_mb": round(run.max_rss_mb, 1),
                        "exit": run.returncode,
                    }
                )
                if not args.keep:
                    work.remove()
        finally:
            stop(sim)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
