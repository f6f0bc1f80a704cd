"""How many requests per second the simulator serves, and its CPU time per request.

Starts ``python -m synthd.sim`` as a subprocess (no latency, no limits, no faults), drives it
with an aiohttp + orjson client at high concurrency for a fixed duration, then prints the
achieved rate and the simulator's own CPU time per request, read from /proc/<pid>/stat.
The client shares the machine, so on a small box the rate is a lower bound of what the
simulator could do alone; ``1 / cpu_per_request`` is its single-core ceiling.

    .venv/bin/python bench/sim_capacity.py [--seconds 10] [--concurrency 64] [--endpoint chat]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import aiohttp
import orjson
from common import cpu_seconds, start_sim

PROMPT = (
    "Write five questions about the following text.\n\nText: Photosynthesis lets green plants "
    "turn sunlight, water and carbon dioxide into sugar and oxygen. Chlorophyll in the leaves "
    "absorbs light, mostly red and blue, and the energy drives the reactions."
)


async def drive(url: str, body: bytes, seconds: float, concurrency: int) -> tuple[int, int, float]:
    """(ok, failed, elapsed) after ``concurrency`` workers post ``body`` for ``seconds``."""
    ok = failed = 0
    deadline = time.monotonic() + seconds
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal ok, failed
            while time.monotonic() < deadline:
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        payload = await resp.read()
                    good = resp.status == 200 and bool(orjson.loads(payload)["choices"])
                except (aiohttp.ClientError, orjson.JSONDecodeError, KeyError):
                    good = False  # a fault the simulator was asked to inject
                if good:
                    ok += 1
                else:
                    failed += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ok, failed, time.monotonic() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("sim_args", nargs="*", help="extra simulator flags, after --")
    args = p.parse_args()

    if args.endpoint == "chat":
        path = "/chat/completions"
        request = {"model": "sim-1", "messages": [{"role": "user", "content": PROMPT}]}
    else:
        path = "/completions"
        request = {"model": "sim-1", "prompt": PROMPT}
    request["max_tokens"] = args.max_tokens

    proc, base_url = start_sim(args.sim_args)
    try:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        # Warm up (connections, caches), then measure.
        asyncio.run(drive(base_url + path, orjson.dumps(request), 1.0, args.concurrency))
        cpu_before = cpu_seconds(proc.pid)
        ok, failed, elapsed = asyncio.run(
            drive(base_url + path, orjson.dumps(request), args.seconds, args.concurrency)
        )
        cpu = cpu_seconds(proc.pid) - cpu_before
    finally:
        proc.terminate()
        proc.wait(10)

    total = ok + failed
    print(
        orjson.dumps(
            {
                "endpoint": args.endpoint,
                "concurrency": args.concurrency,
                "seconds": round(elapsed, 2),
                "requests": total,
                "failed": failed,
                "requests_per_s": round(total / elapsed, 1),
                "sim_cpu_s": round(cpu, 2),
                "sim_cpu_ms_per_request": round(1000 * cpu / max(total, 1), 4),
                "sim_single_core_ceiling_per_s": round(total / cpu, 1) if cpu else None,
                "cpus": os.cpu_count(),
            }
        ).decode()
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
