"""Several daemons on one rate limit: a budget shared through Redis, or split by hand.

Runs the simulator with a strict requests/minute limit (over a 1 s window, as providers
enforce) and 200 ms latency, then N daemons (``--nodes``, default 1 2 4) at once, each a
``synthd run --once`` process, in two set-ups:

  shared  one spool, one out folder, one Redis (``[coordination]``): every daemon's
          budget is the whole limit, and the shared budget in Redis keeps them to it
  split   no Redis: each daemon has its own spool (the items dealt out evenly, or with
          ``--deal uneven`` in proportion 1 : 2 : ... : N, as work rarely splits evenly), its
          own out and state, and a budget of limit / N, as one would deploy without it

For each it prints the requests/s the server admitted divided by the limit, over the
steady part of the run (while a backlog exists: from the second full second until 95% of
the requests were admitted) and over the whole run, the share of 429s among all requests,
and whether every item has exactly one outcome. The goal for ``shared``: at least 0.97 of
the limit with under 0.5% 429s at every N.

    .venv/bin/python bench/scaleout.py [--rpm 6000] [--seconds 30] [--nodes 1 2 4]
        [--setup shared split] [--deal even|uneven] [--contexts ../shared/data/contexts.jsonl.gz]

Needs ``redis-server`` on the PATH (``make sysdeps`` installs it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from common import ROOT, contexts, emit, sim_stats, start_sim, stop
from ratelimit import backlog_window

FILE_ITEMS = 100  # items per spool file: a node claims one file at a time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed (make sysdeps installs it)")
    port = free_port()
    cmd = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen(
        [*cmd, "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def write_config(
    path: Path, base: Path, url: str, rpm: int, node: str, redis_url: str | None
) -> None:
    lines = [
        "[provider]",
        f'base_url = "{url}"',
        f"rpm = {rpm}",
        "tpm = 1000000000",
        "max_in_flight = 512",
        "request_timeout_s = 3.0",
        "max_attempts = 8",
        "[paths]",
        f'spool = "{base / "spool"}"',
        f'out = "{base / "out"}"',
        f'state = "{base / "state"}"',
        "[service]",
        'listen = ""',
        "settle_s = 0",
        "scan_interval_s = 0.1",
    ]
    if redis_url is not None:
        lines += ["[coordination]", f'redis_url = "{redis_url}"', f'node = "{node}"']
    lines += [
        "[jobs.bench]",
        f'prompt = "{ROOT / "prompts" / "questions.txt"}"',
        'model = "gpt-4o-mini"',
        "max_tokens = 120",
        'input = "jsonl"',
        "[jobs.bench.filters]",
        "dedupe = false",
    ]
    path.write_text("\n".join(lines) + "\n")


def spool(folder: Path, texts: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(texts), FILE_ITEMS):
        chunk = texts[start : start + FILE_ITEMS]
        body = b"".join(
            orjson.dumps({"text": t, "i": start + i}) + b"\n" for i, t in enumerate(chunk)
        )
        (folder / f"part-{start // FILE_ITEMS:05d}.jsonl").write_bytes(body)


def outcomes(out: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in out.rglob("*.jsonl*"))


def deal(texts: list[str], nodes: int, how: str) -> list[list[str]]:
    """The items of each node's own spool: evenly, or node i gets a share i + 1."""
    if how == "even":
        return [texts[n::nodes] for n in range(nodes)]
    weights = list(range(1, nodes + 1))
    out, start = [], 0
    for n, w in enumerate(weights):
        end = len(texts) if n == nodes - 1 else start + len(texts) * w // sum(weights)
        out.append(texts[start:end])
        start = end
    return out


def run(
    setup: str, nodes: int, rpm: int, seconds: float, data: Path | None, how: str = "even"
) -> dict[str, Any]:
    items = int(rpm / 60 * seconds)
    texts = list(contexts(data, items))
    limits = ["--rpm", str(rpm), "--tpm", "1000000000", "--limit-window-s", "1"]
    sim, url = start_sim(["--latency-ms", "200", "--latency-spread-ms", "50", *limits])
    work = Path(tempfile.mkdtemp(prefix="synthd-scaleout-"))
    redis = None
    procs: list[tuple[subprocess.Popen[bytes], Any]] = []
    try:
        redis_url = None
        if setup == "shared":
            redis, redis_url = start_redis(work)
            spool(work / "spool" / "bench", texts)
        dealt = deal(texts, nodes, how)
        for n in range(nodes):
            node = f"n{n}"
            base = work if setup == "shared" else work / node
            if setup == "split":
                spool(base / "spool" / "bench", dealt[n])
            budget = rpm if setup == "shared" else rpm // nodes
            cfg = work / f"{node}.toml"
            write_config(cfg, base, url, budget, node, redis_url)
        started = time.monotonic()
        for n in range(nodes):
            log = open(work / f"n{n}.log", "wb")  # noqa: SIM115 - closed below
            cmd = [sys.executable, "-m", "synthd", "run", "--once", "--config", f"n{n}.toml"]
            procs.append((subprocess.Popen(cmd, cwd=work, stdout=log, stderr=log), log))
        cpu = 0.0
        codes = []
        for proc, log in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
            cpu += usage.ru_utime + usage.ru_stime
            log.close()
        wall = time.monotonic() - started
        stats = sim_stats(url)
    finally:
        stop(sim)
        if redis is not None:
            redis.kill()
            redis.wait()
    per_s = sorted(stats["per_second"])
    limit_per_s = rpm / 60
    steady = backlog_window([count for _, count in per_s])
    admitted = sum(count for _, count in per_s)
    span = per_s[-1][0] - per_s[0][0] + 1 if per_s else 1
    done = (
        outcomes(work / "out")
        if setup == "shared"
        else sum(outcomes(work / f"n{n}" / "out") for n in range(nodes))
    )
    limited = stats["by_status"].get("429", 0)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "setup": setup if setup == "shared" else f"split-{how}",
        "nodes": nodes,
        "server_rpm": rpm,
        "items": items,
        "requests": stats["requests"],
        "ratio_steady": round(sum(steady) / len(steady) / limit_per_s, 3) if steady else None,
        "ratio_whole_run": round(admitted / span / limit_per_s, 3),
        "share_429": round(limited / max(stats["requests"], 1), 4),
        "accounted": done == items,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "exit": codes,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rpm", type=int, default=6000)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--setup", nargs="+", default=["shared", "split"], choices=["shared", "split"])
    p.add_argument("--deal", choices=["even", "uneven"], default="even", help="split's items")
    p.add_argument("--contexts", type=Path)
    args = p.parse_args()
    for n in args.nodes:
        for setup in args.setup:
            emit(run(setup, n, args.rpm, args.seconds, args.contexts, args.deal))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
