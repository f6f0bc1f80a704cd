"""What an open status page costs the daemon: its CPU while /api/status is polled.

Runs the daemon (a subprocess) on a job kept busy at a fixed request rate (``--rpm``), and
measures its CPU in three windows of ``--seconds`` each: no page, the page polling, no page
again. The page polls every 3 s; to see its cost above the noise the poll here runs
``--speedup`` times as often, and the extra CPU per poll is scaled back to one page open
for an hour (1,200 polls). CPU is read from /proc, so it is meaningful on a busy machine;
the baseline is the mean of the two windows without the page.

    .venv/bin/python bench/status_page.py [--seconds 60] [--speedup 10] [--rpm 1200]
        [--contexts ../shared/data/contexts.jsonl.gz]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import Workdir, contexts, cpu_seconds, emit, start_sim, stop

PAGE_POLL_S = 3.0  # REFRESH_MS in synthd/static/status.js
POLLS_PER_HOUR = 3600 / PAGE_POLL_S


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        return bytes(resp.read())


def window(pid: int, seconds: float, poll_url: str | None, every_s: float) -> tuple[float, int]:
    """CPU seconds the daemon used over ``seconds``, polling ``poll_url`` if given."""
    before = cpu_seconds(pid)
    polls = 0
    end = time.monotonic() + seconds
    next_poll = time.monotonic()
    while (now := time.monotonic()) < end:
        if poll_url is not None and now >= next_poll:
            get(poll_url)
            polls += 1
            next_poll += every_s
        time.sleep(max(0.0, min(end, next_poll if poll_url else end) - time.monotonic()))
    return cpu_seconds(pid) - before, polls


def full_history_build_ms(jobs: int = 3, providers: int = 2) -> tuple[float, int]:
    """CPU ms to build and encode /api/status once the 15-minute chart is full, and its bytes.

    The daemon run above starts with an empty chart; this builds the document in-process
    from a full history (181 samples per provider and job) with the daemon's own code.
    """
    import orjson

    from synthd.history import EVERY_S, History, ProviderSample
    from synthd.livestatus import Health, RecentLines, snapshot
    from synthd.metrics import JobStats, ProviderStats
    from synthd.monitor import JobInfo, Limits

    history = History()
    names = [f"p{i}" for i in range(providers)]
    for t in range(history.keep):
        for name in names:
            history.sample_provider(name, ProviderSample(t * EVERY_S, t * 100, t * 90_000, t))
        for j in range(jobs):
            history.sample_job(f"j{j}", t * EVERY_S, t * 50)
    stats = {f"j{j}": JobStats(records=10**6, prompt_tokens=10**9) for j in range(jobs)}
    for s in stats.values():
        s.rejects = {"too_few_items": 1234, "empty": 5, "duplicate": 77}
    kwargs = {
        "version": "x",
        "health": Health("ok", True, None, None, 3600.0),
        "jobs": stats,
        "info": {f"j{j}": JobInfo(names[j % providers], "m") for j in range(jobs)},
        "prices": {},
        "providers": {name: ProviderStats() for name in names},
        "limits": {name: Limits(3500.0, 2e6) for name in names},
        "history": history,
        "recent": RecentLines(),
        "now": history.keep * EVERY_S,
    }
    rounds = 2000
    started = time.process_time()
    for _ in range(rounds):
        body = orjson.dumps(snapshot(**kwargs))  # type: ignore[arg-type]
    return 1000 * (time.process_time() - started) / rounds, len(body)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="length of each window")
    p.add_argument("--speedup", type=float, default=10.0, help="polls this much more often")
    p.add_argument("--rpm", type=int, default=1200, help="the job's request rate")
    p.add_argument("--contexts", type=Path)
    args = p.parse_args()
    items = int(args.rpm / 60 * args.seconds * 3 * 1.5) + 100  # busy through all windows
    sim, url = start_sim(["--latency-ms", "50"])
    work = Workdir()
    port = free_port()
    proc = None
    try:
        work.config(url, {"rpm": args.rpm, "tpm": 100_000_000}, listen=f"127.0.0.1:{port}")
        work.spool_jsonl(contexts(args.contexts, items))
        cmd = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml"]
        with open(work.path / "daemon.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=work.path, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                get(f"{base}/healthz")
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(5)  # past start-up and the cold bucket
        page = len(get(f"{base}/api/status"))
        every = PAGE_POLL_S / args.speedup
        quiet1, _ = window(proc.pid, args.seconds, None, every)
        busy, polls = window(proc.pid, args.seconds, f"{base}/api/status", every)
        quiet2, _ = window(proc.pid, args.seconds, None, every)
        if proc.poll() is not None:
            raise SystemExit("the daemon stopped during the run: see its log")
        baseline = (quiet1 + quiet2) / 2
        per_poll = max(0.0, busy - baseline) / polls
        emit(
            {
                "window_s": args.seconds,
                "job_rpm": args.rpm,
                "api_status_bytes": page,
                "polls": polls,
                "cpu_s_without_page": [round(quiet1, 3), round(quiet2, 3)],
                "cpu_s_with_page": round(busy, 3),
                "cpu_ms_per_poll": round(1000 * per_poll, 3),
                "cpu_s_per_page_hour": round(per_poll * POLLS_PER_HOUR, 2),
                "share_of_a_core": f"{per_poll * POLLS_PER_HOUR / 3600:.3%}",
            }
        )
        build_ms, full_bytes = full_history_build_ms()
        emit(
            {
                "full_chart_api_status_bytes": full_bytes,
                "full_chart_build_cpu_ms": round(build_ms, 3),
                # An upper bound: the measured poll already built a (shorter) chart.
                "full_chart_cpu_s_per_page_hour_at_most": round(
                    (per_poll + build_ms / 1000) * POLLS_PER_HOUR, 2
                ),
            }
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        stop(sim)
        work.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
