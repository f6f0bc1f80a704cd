"""``synthd report`` on a large job: wall time, CPU and peak memory for ``--records`` records.

Writes a job's shards as the daemon would (10,000 records per shard, a reject for every
tenth record, records of about ``--record-bytes`` bytes with contexts from ``--contexts``),
then runs ``synthd report`` on them as a subprocess and prints its figures.

    .venv/bin/python bench/report.py --contexts ../shared/data/contexts.jsonl.gz [--records 1000000]
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from common import emit

CONFIG = """
[provider]
base_url = "http://127.0.0.1:9/v1"
[jobs.bench]
prompt = "prompt.txt"
model = "sim-1"
[jobs.bench.filters]
split = "lines"
"""


def write_shards(root: Path, contexts: list[str], n: int) -> int:
    out = root / "out" / "bench"
    (out / "rejects").mkdir(parents=True)
    size = 0
    rec_f = rej_f = None
    for i in range(n):
        if i % 10_000 == 0:
            for f in (rec_f, rej_f):
                if f is not None:
                    f.close()
            num = i // 10_000 + 1
            rec_f = open(out / f"bench-{num:06d}.jsonl", "wb")  # noqa: SIM115
            rej_f = open(out / "rejects" / f"rejects-{num:06d}.jsonl", "wb")  # noqa: SIM115
        assert rec_f is not None and rej_f is not None
        ctx = contexts[i % len(contexts)][:1500]
        words = ctx.split()
        items = [" ".join(words[j : j + 8]) + "?" for j in range(0, min(40, len(words)), 8)]
        base = {
            "id": f"{i:020x}",
            "job": "bench",
            "source": {
                "file": f"f{i // 100}.txt",
                "line": 1,
                "seq": i % 100,
                "claim": "c",
                "end": 1,
            },
            "sample": 0,
        }
        line = orjson.dumps(
            {
                **base,
                "messages": [{"role": "user", "content": "Read the passage. " + ctx}],
                "context": ctx,
                "completion": "\n".join(items),
                "items": items,
                "model": "sim-1",
                "params": {"temperature": 0.7, "max_tokens": 256, "n": 1},
                "usage": {"prompt_tokens": 300, "completion_tokens": 60, "total_tokens": 360},
                "finish_reason": "stop",
                "fingerprint": "f",
                "created": 1_790_000_000 + i // 500,
            }
        )
        rec_f.write(line + b"\n")
        size += len(line) + 1
        if i % 10 == 0:
            rej = {**base, "stage": "filter", "reason": "too_few_items", "completion": "Why?"}
            rej_f.write(orjson.dumps({**rej, "created": 1_790_000_000 + i // 500}) + b"\n")
    for f in (rec_f, rej_f):
        if f is not None:
            f.close()
    return size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=Path, required=True)
    ap.add_argument("--records", type=int, default=1_000_000)
    args = ap.parse_args()
    with gzip.open(args.contexts) as f:
        contexts = [orjson.loads(line)["text"] for line in f]
    with tempfile.TemporaryDirectory(prefix="report-bench-") as d:
        root = Path(d)
        (root / "prompt.txt").write_text("Read the passage. {context}\n")
        (root / "synthd.toml").write_text(CONFIG)
        size = write_shards(root, contexts, args.records)
        cmd = [sys.executable, "-m", "synthd", "report", "bench", "--config", "synthd.toml"]
        t0 = time.perf_counter()
        proc = subprocess.Popen([*cmd, "--out", "report"], cwd=root, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        data = orjson.loads((root / "report" / "report.json").read_bytes())
        assert data["totals"]["records"] == args.records, data["totals"]
        emit(
            {
                "records": args.records,
                "shard_mb": round(size / 1e6),
                "exit": os.waitstatus_to_exitcode(status),
                "wall_s": round(wall, 1),
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                "cpu_us_per_record": round(
                    (usage.ru_utime + usage.ru_stime) / args.records * 1e6, 1
                ),
                "peak_rss_mb": round(usage.ru_maxrss / 1024),  # KiB on Linux
                "html_kb": round((root / "report" / "report.html").stat().st_size / 1e3),
            }
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
