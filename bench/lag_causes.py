"""What the event loop's lag is made of, at full speed: collections, bursts, the CPU.

Runs one ``bench/throughput.py`` cell per ``--in-flight`` and input shape, with the
daemon under a probe (this file, re-run inside the daemon's process) that times
every collection (``gc.callbacks``: wall and CPU), samples every thread's stack
while the loop is over 20 ms late, and notes the loop thread's CPU time at each
lag sample, and its time waiting in the CPU's run queue (``/proc`` schedstat).
Prints one JSON line per cell: the lag's median, p99 and max; per generation, the
collections' count and longest pause; how many late samples fell in the first 5 s
(ramp-up); how much of the time in late samples was inside a collection; where the
loop thread was while late (``late_split``: running, runnable but waiting for a CPU,
or neither: waiting for the GIL or in a blocking call); the connections opened; the
simulator's CPU per request (it shares the cores); and the stacks seen most while late.

    .venv/bin/python bench/lag_causes.py [--contexts ../shared/data/contexts.jsonl.gz]
        [--items 6000] [--latency-ms 50] [--in-flight 512 2048] [--files] [--sim-nice 5]
"""

from __future__ import annotations

import collections
import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

LATE_S = 0.02


def probe_daemon(argv: list[str]) -> int:
    """Inside the daemon's process: instrument, run ``synthd``, dump what was seen."""
    t0 = time.perf_counter()
    collections_seen: list[tuple[int, float, float, float]] = []  # gen, end, wall, cpu
    started: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["w"], started["c"] = time.perf_counter(), time.thread_time()
        elif "w" in started:
            now = time.perf_counter()
            wall, cpu = now - started["w"], time.thread_time() - started["c"]
            collections_seen.append((info["generation"], now - t0, wall, cpu))

    gc.callbacks.append(on_gc)
    beat = [float("inf")]  # not late until the loop starts beating
    stacks: collections.Counter[str] = collections.Counter()
    main = threading.get_ident()

    def watch() -> None:
        me = threading.get_ident()
        while True:
            time.sleep(0.002)
            if time.perf_counter() - beat[0] <= LATE_S:
                continue
            for tid, frame in sys._current_frames().items():
                if tid == me:
                    continue
                names = []
                f: Any = frame
                while f is not None and len(names) < 4:
                    names.append(f"{os.path.basename(f.f_code.co_filename)}:{f.f_code.co_name}")
                    f = f.f_back
                if names[0] != "threading.py:wait" and "thread.py:_worker" not in names[0]:
                    stacks[("loop " if tid == main else "thread ") + " < ".join(names)] += 1

    threading.Thread(target=watch, daemon=True).start()

    import asyncio

    from synthd import looplag

    # at, lag, wall, loop-thread cpu, loop-thread run-queue wait (each since the last sample)
    lags: list[tuple[float, float, float, float, float]] = []
    observe, sample = looplag.LoopLag.observe, looplag.LoopLag.run
    last: dict[str, float] = {}
    schedstat = f"/proc/self/task/{threading.get_native_id()}/schedstat"

    def observed(self: looplag.LoopLag, lag_s: float) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        with open(schedstat) as f:  # on-CPU ns, run-queue ns, slices
            queued = int(f.read().split()[1]) / 1e9
        wall, used = now - last.get("w", now), cpu - last.get("c", cpu)
        lags.append((now - t0, lag_s, wall, used, queued - last.get("q", queued)))
        last["w"], last["c"], last["q"] = now, cpu, queued
        observe(self, lag_s)

    async def sampled(self: looplag.LoopLag) -> None:
        async def heartbeat() -> None:
            while True:
                beat[0] = time.perf_counter()
                await asyncio.sleep(0.005)

        task = asyncio.ensure_future(heartbeat())
        try:
            await sample(self)
        finally:
            task.cancel()

    import aiohttp.connector

    connects: list[float] = []
    create = aiohttp.connector.TCPConnector._create_connection

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        connects.append(time.perf_counter() - t0)
        return await create(self, *args, **kwargs)

    aiohttp.connector.TCPConnector._create_connection = counted  # type: ignore[method-assign]
    looplag.LoopLag.observe = observed  # type: ignore[method-assign]
    looplag.LoopLag.run = sampled  # type: ignore[method-assign]

    def dump() -> None:
        data = {"gc": collections_seen, "lags": lags, "stacks": stacks.most_common(8)}
        data["connects"] = connects
        Path(os.environ["LAG_CAUSES_OUT"]).write_bytes(orjson.dumps(data))

    import atexit

    atexit.register(dump)
    from synthd.cli import main as synthd_main

    return synthd_main(argv)


def summary(raw: dict[str, Any]) -> dict[str, Any]:
    lags = raw["lags"]
    ordered = sorted(lag for _, lag, *_ in lags) or [0.0]

    def ms(x: float) -> float:
        return round(1000 * x, 1)

    late = [(at - lag, at, wall, cpu, q) for at, lag, wall, cpu, q in lags if lag > LATE_S]
    in_gc = sum(
        max(0.0, min(b, end) - max(a, end - wall))
        for a, b, *_ in late
        for _, end, wall, _ in raw["gc"]
    )
    late_s = sum(b - a for a, b, *_ in late)
    gens = {}
    for g in (0, 1, 2):
        these = [c for c in raw["gc"] if c[0] == g]
        if these:
            gens[f"gen{g}"] = {
                "n": len(these),
                "max_ms": ms(max(c[2] for c in these)),
                "max_cpu_ms": ms(max(c[3] for c in these)),
                "cpu_ms": ms(sum(c[3] for c in these)),
            }
    wall = sum(w for _, _, w, _, _ in late)
    running = sum(c for _, _, _, c, _ in late)
    queued = sum(q for *_, q in late)

    def share(x: float) -> float | None:
        return round(x / wall, 2) if wall else None

    return {
        "lag_p50_ms": ms(ordered[len(ordered) // 2]),
        "lag_p99_ms": ms(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]),
        "lag_max_ms": ms(ordered[-1]),
        "samples": len(lags),
        "late_samples": len(late),
        # Ramp-up (connections opened, the first items read) apart from steady state.
        "late_in_first_5s": sum(1 for _, b, *_ in late if lags and b - lags[0][0] < 5),
        "late_in_gc": round(in_gc / late_s, 2) if late_s else 0.0,
        # Where the loop thread was in the samples that came late: on a CPU (its own work,
        # collections included), runnable but waiting for a CPU (other threads, other
        # processes: the simulator), or neither (waiting for the GIL, or a blocking call).
        "late_split": {
            "running": share(running),
            "run_queue": share(queued),
            "gil_or_blocked": share(max(0.0, wall - running - queued)),
        },
        "collections": gens,
        # Opening a connection is loop work (socket, handshake): a burst of them is a lag.
        "connects": len(raw["connects"]),
        "connects_after_5s": sum(1 for at in raw["connects"] if lags and at - lags[0][0] >= 5),
        "stacks_when_late": raw["stacks"],
    }


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import (
        Workdir,
        arguments,
        contexts,
        emit,
        parse,
        sim_cpu_s,
        sim_reset,
        sim_stats,
        start_sim,
        stop,
    )

    p = arguments(__doc__)
    p.add_argument("--items", type=int, default=6000)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--in-flight", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--files", action="store_true", help="also one .txt per context")
    args = parse(p)
    sim, url = start_sim(["--latency-ms", str(args.latency_ms)], args.sim_nice)
    try:
        for in_flight in args.in_flight:
            for shape in ["jsonl", "files"] if args.files else ["jsonl"]:
                sim_reset(url)
                work = Workdir()
                provider = {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_in_flight": in_flight}
                work.config(url, provider)
                texts = contexts(args.contexts, args.items)
                n = work.spool_files(texts) if shape == "files" else work.spool_jsonl(texts)
                out = work.path / "lag.json"
                cmd = [sys.executable, __file__, "--daemon", "run"]
                cmd += ["--config", "config/synthd.toml", "--once"]
                started, sim_before = time.monotonic(), sim_cpu_s(url)
                with open(work.path / "daemon.log", "wb") as log:
                    env = {**os.environ, "LAG_CAUSES_OUT": str(out)}
                    code = subprocess.run(cmd, cwd=work.path, stdout=log, stderr=log, env=env)
                wall = time.monotonic() - started
                served = sim_stats(url)["by_status"].get("200", 0)
                figures = {"input": shape, "max_in_flight": in_flight, "items": n}
                figures |= {"requests_per_s": round(served / wall, 1), "exit": code.returncode}
                figures |= summary(orjson.loads(out.read_bytes()))
                sim_used = sim_cpu_s(url) - sim_before
                figures["sim_cpu_us_per_request"] = round(1e6 * sim_used / max(1, served))
                emit(figures)
                work.remove()
    finally:
        stop(sim)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--daemon"]:
        raise SystemExit(probe_daemon(sys.argv[2:]))
    raise SystemExit(main())
