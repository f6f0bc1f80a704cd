"""How much of a provider's rate limit synthd uses, and how many 429s it earns.

Runs the simulator with a strict requests/minute limit (over a 1 s window, as
providers enforce) and 200 ms latency, then the daemon with ``--once`` on
enough items for ``--seconds`` of traffic, in three scenarios:

  a  the daemon's budget equals the server's limit
  b  the daemon's budget is set twice too high
  c  the budget equals the limit, and 5% of requests fail (500, 503, dropped
     connections, truncated bodies, hangs past the timeout)

Provider trouble (issue 15):

  d  another client on the same key takes half its limit; the daemon's budget is the
     whole limit. The share is of the remainder.
  e  the server is down (connections refused) for --outage-s (default 300) from a third
     of the run; prints dead letters and how long after the server's return sending
     resumed (resume_s)
  f  one spurious 429 (retry-after 1 s) early in the run (the 20th request); prints how
     long after it the rate was back at 0.9 of the limit (recovered_s)
  g  a fixed 60-second window answering every 429 with retry-after: 60 and no limit
     headers, the daemon's budget 10x too high; limit --rpm / 10 so a window is 600
     requests by default, and --seconds should cover a few windows (default 180)

For each it prints requests/s the server admitted divided by the limit, over
the steady part of the run (while a backlog exists: from the second full second
until 95% of the requests were admitted) and over the whole run, the share
of 429s among all requests, dead letters, and whether every item is accounted for
(records + rejects + dead letters = items).

    .venv/bin/python bench/ratelimit.py [--rpm 6000] [--seconds 30] [--scenario a b c d e f g]
        [--outage-s 300] [--contexts ../shared/data/contexts.jsonl.gz]

``--seconds`` is the traffic each scenario is sized for (items = limit x seconds); d, e, f
and g have their own defaults (60, 60, 30, 180) unless it is given.
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
SCENARIOS: dict[str, dict[str, Any]] = {
    "a": {"budget": 1.0, "faults": []},
    "b": {"budget": 2.0, "faults": []},
    "c": {"budget": 1.0, "faults": FAULTS},
    "d": {"budget": 1.0, "faults": [], "shared": 0.5, "seconds": 60},
    "e": {"budget": 1.0, "faults": [], "outage": True, "seconds": 60},
    "f": {"budget": 1.0, "faults": ["--spurious-429-at", "20"], "seconds": 30},
    "g": {
        "budget": 10.0,
        "server_share": 0.1,
        "faults": ["--limit-kind", "fixed", "--retry-after-s", "60", "--no-rate-headers"],
        "window_s": 60,
        "seconds": 180,
    },
}


def run(
    name: str, rpm: int, seconds: float | None, outage_s: float, data: Path | None
) -> dict[str, Any]:
    spec = SCENARIOS[name]
    server_rpm = int(rpm * spec.get("server_share", 1.0))
    seconds = seconds if seconds is not None else spec.get("seconds", 30.0)
    # What is left for the daemon: the limit, less another client's share of the key.
    ours_rpm = server_rpm * (1.0 - spec.get("shared", 0.0))
    items = int(ours_rpm / 60 * seconds)
    extra = list(spec["faults"])
    if "shared" in spec:
        extra += ["--shared-rpm", str(int(server_rpm * spec["shared"]))]
    if spec.get("outage"):
        extra += ["--outage-kind", "refuse", "--outage-at-s", str(seconds / 3)]
        extra += ["--outage-s", str(outage_s)]
    sim, url = start_sim(
        [
            "--latency-ms",
            "200",
            "--latency-spread-ms",
            "50",
            "--rpm",
            str(server_rpm),
            "--tpm",
            "1000000000",
            "--limit-window-s",
            str(spec.get("window_s", 1)),
            *extra,
        ]
    )
    work = Workdir()
    try:
        provider = {
            "rpm": int(server_rpm * spec["budget"]),
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
    limit_per_s = ours_rpm / 60
    steady = backlog_window([count for _, count in per_s])
    admitted = sum(count for _, count in per_s)
    span = per_s[-1][0] - per_s[0][0] + 1 if per_s else 1
    dead = work.count_lines("dead-letter")
    outcomes = work.count_lines() + work.count_lines("rejects") + dead
    limited = stats["by_status"].get("429", 0)
    out: dict[str, Any] = {
        "scenario": name,
        "server_rpm": server_rpm,
        "remainder_rpm": round(ours_rpm),
        "daemon_rpm": provider["rpm"],
        "items": n,
        "requests": stats["requests"],
        "ratio_steady": round(sum(steady) / len(steady) / limit_per_s, 3) if steady else None,
        "ratio_whole_run": round(admitted / span / limit_per_s, 3),
        "share_429": round(limited / max(stats["requests"], 1), 4),
        "dead_letters": dead,
        "status": stats["by_status"],
        "faults": stats["faults"],
        "accounted": outcomes == n,
        "outcomes": outcomes,
        "wall_s": round(result.wall_s, 1),
        "exit": result.returncode,
    }
    if "outage" in stats:
        out["outage_s"] = outage_s
        out["resume_s"] = resumed_after(per_s, stats["outage"]["end"])
        out["provider_down_logged"] = sum(
            1 for e in result.log if e.get("event") == "provider_down"
        )
    if "spurious_429_at" in stats:
        out["recovered_s"] = recovered_after(per_s, stats["spurious_429_at"], 0.9 * limit_per_s)
    if "shared" in spec:
        out["shared_admitted"] = stats.get("shared_admitted")
    work.remove()
    return out


def resumed_after(per_s: list[list[int]], end: float) -> float | None:
    """Seconds from the server's return to the first second with an admitted request."""
    after = [second for second, count in per_s if second >= int(end) and count > 0]
    return round(max(0.0, after[0] - end), 1) if after else None


def recovered_after(per_s: list[list[int]], at: float, rate: float) -> float | None:
    """Seconds from ``at`` to the end of the first whole second admitting ``rate`` or more."""
    after = [second for second, count in per_s if second > at and count >= rate]
    return round(after[0] + 1 - at, 1) if after else None


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
    p.add_argument("--seconds", type=float, default=None, help="default: 30, or the scenario's")
    p.add_argument("--outage-s", type=float, default=300.0, help="scenario e's outage")
    p.add_argument("--scenario", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument("--contexts", type=Path)
    args = p.parse_args()
    for name in args.scenario:
        emit(run(name, args.rpm, args.seconds, args.outage_s, args.contexts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
