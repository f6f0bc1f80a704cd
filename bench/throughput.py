"""Requests/s and the daemon's CPU per request, at several max_in_flight settings.

For each server latency (none, then 50 ms) and each ``max_in_flight`` (64, 512,
2048) this runs a fresh daemon with ``--once`` on ``--items`` contexts against a
simulator with no rate limit, and prints one JSON line: requests/s served
(items / wall time, start-up included), the daemon's CPU microseconds per
request (user + system time of its process, from wait4, start-up included),
its peak RSS, the event loop's lag (p99 and max over the run) and the simulator's CPU per
request (it shares the machine's cores; ``--sim-nice`` lowers its priority).

With ``--files`` each cell runs twice, the same contexts as one JSONL and as
one ``.txt`` file each, and prints the files' ratio to the JSONL run: CPU per
request and requests/s. On a shared machine the ratio is the robust figure.

    .venv/bin/python bench/throughput.py [--contexts ../shared/data/contexts.jsonl.gz]
        [--items 6000] [--latency-ms 0 50] [--in-flight 64 512 2048] [--files] [--sim-nice 5]
"""

from __future__ import annotations

import argparse
from typing import Any

from common import (
    Workdir,
    arguments,
    contexts,
    emit,
    parse,
    ratio,
    sim_cpu_s,
    sim_reset,
    sim_stats,
    simulator,
)


def main() -> int:
    p = arguments(__doc__)
    p.add_argument("--items", type=int, default=6000)
    p.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 50.0])
    p.add_argument("--in-flight", type=int, nargs="+", default=[64, 512, 2048])
    p.add_argument("--files", action="store_true", help="also one .txt per context; ratios")
    args = parse(p)
    for latency in args.latency_ms:
        with simulator(["--latency-ms", str(latency)], args.sim_nice) as url:
            for in_flight in args.in_flight:
                shapes = ["jsonl", "files"] if args.files else ["jsonl"]
                figures = {shape: measure(url, args, latency, in_flight, shape) for shape in shapes}
                if args.files:
                    j, f = figures["jsonl"], figures["files"]
                    emit(
                        {
                            "latency_ms": latency,
                            "max_in_flight": in_flight,
                            "files_vs_jsonl_cpu": ratio(f, j, "cpu_us_per_request"),
                            "files_vs_jsonl_requests_per_s": ratio(f, j, "requests_per_s"),
                        }
                    )
    return 0


def measure(
    url: str, args: argparse.Namespace, latency: float, in_flight: int, shape: str
) -> dict[str, Any]:
    sim_reset(url)
    work = Workdir()
    work.config(url, {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_in_flight": in_flight})
    texts = contexts(args.contexts, args.items)
    n = work.spool_files(texts) if shape == "files" else work.spool_jsonl(texts)
    sim_before = sim_cpu_s(url)
    run = work.run("--once")
    sim_used = sim_cpu_s(url) - sim_before
    served = sim_stats(url)["by_status"].get("200", 0)
    records = work.count_lines() + work.count_lines("rejects")
    stopped = run.event("stopped")
    figures = {
        "latency_ms": latency,
        "max_in_flight": in_flight,
        "input": shape,
        "items": n,
        "outcomes": records,
        "requests": served,
        "requests_per_s": round(served / run.wall_s, 1),
        "cpu_us_per_request": round(1e6 * run.cpu_s / max(served, 1), 1),
        # The simulator shares this machine's cores: what it takes, the daemon waits for.
        "sim_cpu_us_per_request": round(1e6 * sim_used / max(served, 1), 1),
        "loop_lag_p99_ms": stopped.get("loop_lag_p99_ms"),
        "loop_lag_max_ms": stopped.get("loop_lag_max_ms"),
        **run.figures(),
    }
    return work.report(figures, args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
