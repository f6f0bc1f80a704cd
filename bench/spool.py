"""The spool at scale: many files dropped at once, then a huge idle folder.

Phase 1 drops ``--files`` contexts as one ``.txt`` file each into the spool at
once and runs the daemon with ``--once`` against a simulator (no rate limit,
``--latency-ms``): it prints files/s, the daemon's CPU per file (user +
system, from wait4, start-up included), its peak RSS and event-loop lag, and
checks that every file was done exactly once (one record each, all in done/).

Phase 2 leaves ``--idle`` files in the job's folder that are not work (``.tmp``
names: files a producer is still writing) beside phase 1's done/ folder, runs
the daemon (not once), and prints the CPU it burns per minute doing nothing,
measured over ``--idle-s`` seconds after a warm-up. For scale it also prints
what one full listing of that folder costs, which a scan that re-read the
folder every ``scan_interval_s`` would pay each time.

    .venv/bin/python bench/spool.py [--contexts ../shared/data/contexts.jsonl.gz]
        [--files 200000] [--idle 1000000] [--idle-s 60] [--latency-ms 20] [--in-flight 512]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
from common import Workdir, contexts, cpu_seconds, emit, rss_mb, start_sim, stop

from synthd import spool


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contexts", type=Path, help="contexts.jsonl.gz (default: synthetic)")
    p.add_argument("--files", type=int, default=200_000)
    p.add_argument("--idle", type=int, default=1_000_000)
    p.add_argument("--idle-s", type=float, default=60.0)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--in-flight", type=int, default=512)
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args()
    sim, url = start_sim(["--latency-ms", str(args.latency_ms)])
    work = Workdir()
    try:
        work.config(
            url,
            {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_in_flight": args.in_flight},
            scan_interval_s=0.5,
        )
        folder = work.path / "spool" / "bench"
        started = time.monotonic()
        n = work.spool_files(contexts(args.contexts, args.files))
        emit({"phase": "drop", "files": n, "write_s": round(time.monotonic() - started, 1)})
        run = work.run("--once")
        stopped = run.event("stopped")
        once = check_once(work, n)
        emit(
            {
                "phase": "drop_at_once",
                "files": n,
                "latency_ms": args.latency_ms,
                "max_in_flight": args.in_flight,
                "wall_s": round(run.wall_s, 1),
                "files_per_s": round(n / run.wall_s, 1),
                "cpu_us_per_file": round(1e6 * run.cpu_s / n, 1),
                "daemon_cpu_s": round(run.cpu_s, 1),
                "peak_rss_mb": round(run.max_rss_mb, 1),
                "loop_lag_p99_ms": stopped.get("loop_lag_p99_ms"),
                "loop_lag_max_ms": stopped.get("loop_lag_max_ms"),
                "exactly_once": once,
                "exit": run.returncode,
            }
        )
        idle(work, folder, args)
    finally:
        stop(sim)
        if not args.keep:
            work.remove()
    return 0


def check_once(work: Workdir, n: int) -> bool:
    """One record per file, no reject or dead letter, every file in done/."""
    seen: Counter[str] = Counter()
    for shard in (work.path / "out" / "bench").glob("*.jsonl*"):
        for raw in shard.read_bytes().splitlines():
            seen[orjson.loads(raw)["source"]["file"]] += 1
    done = sum(1 for _ in os.scandir(work.path / "spool" / "bench" / "done"))
    return len(seen) == n and set(seen.values()) == {1} and done == n


def idle(work: Workdir, folder: Path, args: argparse.Namespace) -> None:
    started = time.monotonic()
    for i in range(args.idle):
        # Empty and unfinished: a producer's files, which the daemon must leave alone.
        os.close(os.open(folder / f"incoming-{i:07d}.tmp", os.O_CREAT | os.O_WRONLY, 0o644))
    made_s = time.monotonic() - started
    t0 = time.perf_counter()
    candidates = spool.scan(folder)
    listing_s = time.perf_counter() - t0
    cmd = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml"]
    with open(work.path / "idle.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=work.path, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(5.0)  # start-up, recovery and the first listings
        cpu0 = cpu_seconds(proc.pid)
        time.sleep(args.idle_s)
        cpu = cpu_seconds(proc.pid) - cpu0
        rss = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    emit(
        {
            "phase": "idle",
            "idle_files": args.idle,
            "done_files": sum(1 for _ in os.scandir(folder / "done")),
            "make_s": round(made_s, 1),
            "measured_s": args.idle_s,
            "cpu_s_per_min": round(60 * cpu / args.idle_s, 3),
            "rss_mb": round(rss, 1),
            "one_full_listing_s": round(listing_s, 3),
            "full_listing_every_0_5_s_cpu_s_per_min": round(120 * listing_s, 1),
            "candidates": len(candidates),
        }
    )


if __name__ == "__main__":
    raise SystemExit(main())
