"""`make demo`: run a shipped job end to end and say where the records are.

`make demo JOB=qa` runs the pipeline in config/qa.toml instead (questions -> answers ->
qa_judge): the passages in examples/qa/ go to its first stage's spool, every stage's
records are reported, and the judged pairs are exported as chat fine-tuning data.

With OPENAI_API_KEY set, the job calls the configured provider (SYNTHD_BASE_URL
overrides the config's base_url). Without it, the demo starts the bundled
OpenAI-compatible simulator on a free port and says so first.

``--inputs DIR`` (``make demo INPUTS=DIR``) runs the job on DIR's files instead of
examples/<job>/, cut into passages (``input = "chunks"``): ``examples/long`` holds a
1 MB public-domain text and a saved web page.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--job", default="questions")
    p.add_argument("--workdir", type=Path, default=ROOT / "demo-run")
    p.add_argument("--inputs", type=Path, help="long documents to cut into passages")
    args = p.parse_args()
    inputs = args.inputs.resolve() if args.inputs else ROOT / "examples" / args.job
    if not inputs.is_dir():
        print(f"demo: no example inputs for job {args.job!r} in {inputs}", file=sys.stderr)
        return 2
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    (work / "config").mkdir(parents=True)
    shutil.copytree(ROOT / "prompts", work / "prompts")
    pipeline = ROOT / "config" / f"{args.job}.toml"  # a shipped pipeline, named for the demo
    source = pipeline if pipeline.is_file() else ROOT / "config" / "synthd.toml"
    stages = pipeline_jobs(source) if pipeline.is_file() else [(args.job, None)]
    first = next(name for name, up in stages if up is None)
    shutil.copytree(inputs, work / "spool" / first)
    sim = None
    config = source.read_text()
    if os.environ.get("OPENAI_API_KEY"):
        base_url = os.environ.get("SYNTHD_BASE_URL", "https://api.openai.com/v1")
        print(f"demo: OPENAI_API_KEY is set: calling {base_url}", flush=True)
    else:
        # A long document is many passages: the simulator's limits are raised so that the
        # demo takes seconds, not the minutes a 200k-tpm account would.
        sim, base_url = start_simulator(fast=args.inputs is not None)
        print(
            f"demo: no OPENAI_API_KEY set: running against the bundled simulator at {base_url}"
            " (synthd sim); set OPENAI_API_KEY to call a real provider",
            flush=True,
        )
    config = re.sub(r'base_url = "[^"]*"', f'base_url = "{base_url}"', config, count=1)
    config = re.sub(r'listen = "[^"]*"', 'listen = ""', config, count=1)
    if args.inputs:
        config = as_chunks(config, args.job)
        print(f'demo: the files in {args.inputs} are cut into passages (input = "chunks")')
    (work / "config" / "synthd.toml").write_text(config)
    try:
        started = time.monotonic()
        cmd = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml", "--once"]
        rc = subprocess.call(cmd, cwd=work)
        elapsed = time.monotonic() - started
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(timeout=10)
    if rc != 0:
        print(f"demo: synthd exited with {rc}", file=sys.stderr)
        return rc
    if len(stages) == 1:
        report(work, args.job, elapsed)
        return 0
    print(f"\ndemo: pipeline {' -> '.join(name for name, _ in stages)} in {elapsed:.1f}s")
    for name, _ in stages:
        report_stage(work, name)
    last = stages[-1][0]
    ft = work / "ft" / f"{args.job}.jsonl"
    export = [sys.executable, "-m", "synthd", "export", last, "--config", "config/synthd.toml"]
    rc = subprocess.call([*export, "--format", "chat", "--out", str(ft)], cwd=work)
    if rc == 0:
        example = orjson.loads(ft.read_bytes().splitlines()[0]) if ft.read_bytes() else None
        print(f"demo: chat fine-tuning data in {ft}")
        if example is not None:
            for m in example["messages"]:
                print(f"  {m['role']}: " + m["content"].replace("\n", "\n    "))
    return rc


def pipeline_jobs(path: Path) -> list[tuple[str, str | None]]:
    """A pipeline config's jobs in order, each with the job it takes its input from."""
    jobs = tomllib.loads(path.read_text())["jobs"]
    return [(name, job.get("from")) for name, job in jobs.items()]


def report_stage(work: Path, job: str) -> None:
    out = work / "out" / job
    counts = {
        kind: sum(len(s.read_bytes().splitlines()) for s in sorted(folder.glob("*.jsonl")))
        for kind, folder in (("records", out), ("rejects", out / "rejects"))
    }
    reasons = Counter(
        orjson.loads(line).get("reason")
        for s in sorted((out / "rejects").glob("*.jsonl"))
        for line in s.read_bytes().splitlines()
    )
    why = ", ".join(f"{r} {n}" for r, n in reasons.most_common())
    print(f"demo: {job}: {counts['records']} records, {counts['rejects']} rejects ({why}) in {out}")


def as_chunks(config: str, job: str) -> str:
    """The config with ``job`` reading its files as passages (``input = "chunks"``)."""
    head, sep, rest = config.partition(f"[jobs.{job}]\n")
    if not sep:
        raise SystemExit(f"demo: no [jobs.{job}] in config/synthd.toml")
    body, nxt, tail = rest.partition("\n[")
    body = re.sub(r'^input = "[^"]*"', 'input = "chunks"', body, count=1, flags=re.M)
    if 'input = "chunks"' not in body:
        body += '\ninput = "chunks"'
    return head + sep + body + nxt + tail


def start_simulator(fast: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    cmd = [
        sys.executable,
        "-m",
        "synthd.sim",
        "--port",
        "0",
        "--latency-ms",
        "300",
        "--latency-spread-ms",
        "100",
        "--rpm",
        "6000" if fast else "600",
        "--tpm",
        "4000000" if fast else "200000",
    ]
    sim = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert sim.stdout is not None
    first = orjson.loads(sim.stdout.readline())
    return sim, str(first["url"])


def report(work: Path, job: str, elapsed: float) -> None:
    out = work / "out" / job
    shards = sorted(out.glob(f"{job}-*.jsonl"))
    records = [orjson.loads(line) for s in shards for line in s.read_bytes().splitlines()]
    rejects = sum(
        len(s.read_bytes().splitlines()) for s in sorted((out / "rejects").glob("*.jsonl"))
    )
    print(f"\ndemo: {len(records)} records, {rejects} rejects in {elapsed:.1f}s")
    for s in shards:
        print(f"demo: records in {s}")
    if records:
        first = records[0]
        print(f"demo: first record's completion, from {first['source']['file']}:")
        print("  " + first["completion"].replace("\n", "\n  "))


if __name__ == "__main__":
    raise SystemExit(main())
