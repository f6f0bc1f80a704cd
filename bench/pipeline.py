"""The shipped pipeline (config/qa.toml) over N contexts: questions -> answers -> qa_judge.

Runs the daemon with ``--once`` against a simulator with no rate limit and prints one JSON
line: wall time, requests per stage, final records (judged pairs kept), and per final
record the requests, the daemon's CPU (user + system, from wait4) and the wall time. Then,
in the same run, the first stage alone over the same contexts, and the pipeline's CPU per
request against it: on a shared machine that ratio is the robust figure.

    .venv/bin/python bench/pipeline.py [--contexts ../shared/data/contexts.jsonl.gz]
        [--items 10000] [--latency-ms 0] [--in-flight 512]
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import orjson
from common import (
    ROOT,
    Workdir,
    arguments,
    contexts,
    emit,
    parse,
    ratio,
    sim_reset,
    sim_stats,
    simulator,
)

STAGES = ("questions", "answers", "qa_judge")


def main() -> int:
    p = arguments(__doc__)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--in-flight", type=int, default=512)
    args = parse(p)
    with simulator(["--latency-ms", str(args.latency_ms)]) as url:
        chain = measure(url, args, STAGES)
        alone = measure(url, args, STAGES[:1])
    emit({"pipeline_vs_one_stage_cpu_per_request": ratio(chain, alone, "cpu_us_per_request")})
    return 0


def configure(work: Workdir, url: str, in_flight: int, jobs: tuple[str, ...]) -> None:
    """config/qa.toml as shipped, at the simulator, unlimited, keeping only ``jobs``."""
    text = (ROOT / "config" / "qa.toml").read_text()
    text = re.sub(r'base_url = "[^"]*"', f'base_url = "{url}"', text, count=1)
    text = re.sub(r"rpm = \d+", "rpm = 10000000", text, count=1)
    text = re.sub(r"tpm = \d+", "tpm = 10000000000", text, count=1)
    text = re.sub(r"max_in_flight = \d+", f"max_in_flight = {in_flight}", text, count=1)
    text = re.sub(r'listen = "[^"]*"', 'listen = ""\nsettle_s = 0', text, count=1)
    if len(jobs) == 1:  # the first stage alone: cut the config before the second
        text = text[: text.index("# Stage 2")]
    (work.path / "config" / "synthd.toml").write_text(text)


def measure(url: str, args: argparse.Namespace, jobs: tuple[str, ...]) -> dict[str, Any]:
    sim_reset(url)
    work = Workdir()
    configure(work, url, args.in_flight, jobs)
    folder = work.path / "spool" / "questions"
    folder.mkdir(parents=True)
    n = 0
    with open(folder / "contexts.jsonl", "wb") as f:
        for i, text in enumerate(contexts(args.contexts, args.items)):
            f.write(orjson.dumps({"text": text, "i": i}) + b"\n")
            n += 1
    run = work.run("--once")
    served = sim_stats(url)["by_status"].get("200", 0)
    per_stage = {
        job: {"records": work.count_lines(job=job), "rejects": work.count_lines("rejects", job)}
        for job in jobs
    }
    final = per_stage[jobs[-1]]["records"]
    figures = {
        "stages": list(jobs),
        "contexts": n,
        "requests": served,
        "per_stage": per_stage,
        "final_records": final,
        "requests_per_final_record": round(served / max(final, 1), 2),
        "cpu_ms_per_final_record": round(1e3 * run.cpu_s / max(final, 1), 3),
        "wall_ms_per_final_record": round(1e3 * run.wall_s / max(final, 1), 3),
        "cpu_us_per_request": round(1e6 * run.cpu_s / max(served, 1), 1),
        "requests_per_s": round(served / run.wall_s, 1),
        **run.figures(),
    }
    return work.report(figures, args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
