"""Peak RSS on a very large input: memory must not grow with the file's length.

Drops one JSONL file of ``--lines`` lines (1,000,000 by default) into the spool,
runs the daemon with ``max_in_flight`` 2048 against a simulator with no rate
limit, and samples the daemon's RSS as the run goes. Prints RSS at 10%, 50% and
90% of the items, the peak (from wait4), requests/s and CPU per request.

    .venv/bin/python bench/memory.py [--lines 1000000] [--contexts ../shared/data/contexts.jsonl.gz]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import Workdir, contexts, emit, peak_rss_mb, rss_mb, sim_stats, simulator


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--in-flight", type=int, default=2048)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--contexts", type=Path)
    args = p.parse_args()
    with simulator(["--latency-ms", str(args.latency_ms)]) as url, Workdir() as work:
        work.config(
            url, {"rpm": 100_000_000, "tpm": 100_000_000_000, "max_in_flight": args.in_flight}
        )
        n = work.spool_jsonl(contexts(args.contexts, args.lines))
        size_mb = (work.path / "spool" / "bench" / "input.jsonl").stat().st_size / 1e6
        emit({"input_lines": n, "input_mb": round(size_mb, 1), "max_in_flight": args.in_flight})
        cmd = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml", "--once"]
        started = time.monotonic()
        with open(work.path / "daemon.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=work.path, stdout=log, stderr=subprocess.STDOUT)
        marks = [0.1, 0.5, 0.9]
        curve = []
        highest = (0.0, 0.0, 0.0)  # rss, elapsed, share done
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            done = sim_stats(url)["by_status"].get("200", 0) / n
            now_rss = rss_mb(proc.pid)
            if now_rss > highest[0]:
                highest = (now_rss, time.monotonic() - started, done)
            if marks and done >= marks[0]:
                mark = marks.pop(0)
                curve.append(
                    {
                        "at": f"{mark:.0%}",
                        "rss_mb": round(rss_mb(proc.pid), 1),
                        "elapsed_s": round(time.monotonic() - started, 1),
                    }
                )
                emit(curve[-1])
            time.sleep(0.25)
        wall = time.monotonic() - started
        served = sim_stats(url)["by_status"].get("200", 0)
        emit(
            {
                "items": n,
                "requests": served,
                "records": work.count_lines(),
                "wall_s": round(wall, 1),
                "requests_per_s": round(served / wall, 1),
                "cpu_us_per_request": round(1e6 * (usage.ru_utime + usage.ru_stime) / served, 1),
                "peak_rss_mb": round(peak_rss_mb(usage), 1),
                "rss_curve": curve,
                "highest_sample": {
                    "rss_mb": round(highest[0], 1),
                    "elapsed_s": round(highest[1], 1),
                    "done": f"{highest[2]:.0%}",
                },
                "exit": os.waitstatus_to_exitcode(status),
            }
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
