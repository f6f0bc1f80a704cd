"""How much of a provider's rate limit synthd uses, and how many 429s it earns.

Runs the simulator with a strict requests/minute limit (over a 1 s window, as
providers enforce) and 200 ms latency, then the daemon with ``--once`` on
enough items for ``--seconds`` of traffic, in three scenarios:

  a  the daemon's budget equals the server's limit
  b  the daemon's budget is set twice too high
  c  the budget equals the limit, and 5% of requests fail (500, 503, dropped
     connections, truncated bodies, hangs past the timeout)

For each it prints requests/s the server admitted divided by the limit, over
the steady part of the run (while a backlog exists: from the second full second
until 95% of the requests were admitted) and over the whole run, the share
of 429s among all requests, and whether every item is accounted for
(records + rejects + dead letters = items).

    .venv/bin/python bench/ratelimit.py [--rpm 6000] [--seconds 30] [--scenario a b c]
        [--contexts ../shared/data/contexts.jsonl.gz]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common import Workdir, contexts, emit, sim_stats, start_sim, stop

FAULTS = [
    "--p-500",
    "0.015",
    "--p-503",
    "0.015",
    "--p-drop",
    "0.01",
    "--p-truncate",
    "0.005",
    "--p-hang",
    "0.005",
    "--hang-s",
    "30",
]
SCENARIOS = {
    "a": {"budget": 1.0, "faults": []},
    "b": {"budget": 2.0, "faults": []},
    "c": {"budget": 1.0, "faults": FAULTS},
}


def run(name: str, rpm: int, seconds: float, data: Path | None) -> dict[str, Any]:
    spec = SCENARIOS[name]
    items = int(rpm / 60 * seconds)
    sim, url = start_sim(
        [
            "--latency-ms",
            "200",
            "--latency-spread-ms",
            "50",
            "--rpm",
            str(rpm),
            "--tpm",
            "1000000000",
            "--limit-window-s",
            "1",
            *spec["faults"],
        ]
    )
    work = Workdir()
    try:
        provider = {
            "rpm": int(rpm * spec["budget"]),
            "tpm": 1_000_000_000,
            "max_in_flight": 512,
            "request_timeout_s": 3.0,
            "max_attempts": 8,
        }
        work.config(url, provider)
        n = work.spool_jsonl(contexts(data, items))
        result = work.run("--once")
        stats = sim_stats(url)
    finally:
        stop(sim)
    per_s = sorted(stats["per_second"])
    limit_per_s = rpm / 60
    steady = backlog_window([count for _, count in per_s])
    admitted = sum(count for _, count in per_s)
    span = per_s[-1][0] - per_s[0][0] + 1 if per_s else 1
    outcomes = work.count_lines() + work.count_lines("rejects") + work.count_lines("dead-letter")
    limited = stats["by_status"].get("429", 0)
    work.remove()
    return {
        "scenario": name,
        "server_rpm": rpm,
        "daemon_rpm": provider["rpm"],
        "items": n,
        "requests": stats["requests"],
        "ratio_steady": round(sum(steady) / len(steady) / limit_per_s, 3) if steady else None,
        "ratio_whole_run": round(admitted / span / limit_per_s, 3),
        "share_429": round(limited / max(stats["requests"], 1), 4),
        "status": stats["by_status"],
        "faults": stats["faults"],
        "accounted": outcomes == n,
        "outcomes": outcomes,
        "wall_s": round(result.wall_s, 1),
        "exit": result.returncode,
    }


def backlog_window(counts: list[int]) -> list[int]:
    """The seconds when the daemon still had a backlog: from the second full second
    until 95% of all requests were admitted (after that only retries trickle in)."""
    total, running = sum(counts), 0
    for end, count in enumerate(counts):
        running += count
        if running >= 0.95 * total:
            return counts[1:end]
    return counts[1:]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rpm", type=int, default=6000)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--scenario", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument("--contexts", type=Path)
    args = p.parse_args()
    for name in args.scenario:
        emit(run(name, args.rpm, args.seconds, args.contexts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
