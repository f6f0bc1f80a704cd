"""Restart time with a million items already done, and the write path's cost per record.

Part 1 builds a state as a long run would leave it: one input file of
``--done + 1000`` lines claimed in ``.work/``, a million items in the checkpoint,
the resume point 1,000 lines before the end. It then starts the daemon with
``--once`` and reports the time from exec to the ``started`` log line (recovery
and resume included) and to the last of the 1,000 remaining items.

Part 2 drives the single writer alone (no network) with ``--records`` outcomes
of realistic size, committed in groups as the daemon does, fsync on, and
reports microseconds per record and fsyncs per second.

    .venv/bin/python bench/restart.py [--done 1000000] [--records 50000]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from pathlib import Path

from common import ROOT, Workdir, emit, start_sim, stop

sys.path.insert(0, str(ROOT))

from synthd import config as config_mod
from synthd import records
from synthd.checkpoint import Checkpoint
from synthd.models import Accepted, Choice, Reply, Source, WorkItem
from synthd.writer import Writer

REMAINING = 1000


def build_state(work: Workdir, done: int) -> None:
    spool = work.path / "spool" / "bench" / ".work"
    spool.mkdir(parents=True)
    path = spool / "c0ffee00-big.jsonl"
    offsets = []
    with open(path, "wb") as f:
        pos = 0
        for i in range(done + REMAINING):
            line = b'{"text": "context %d about a topic"}\n' % i
            f.write(line)
            pos += len(line)
            offsets.append(pos)
    state = work.path / "state"
    cp = Checkpoint(state / "synthd.db")
    src = cp.add_source("bench", "c0ffee00", "big.jsonl", str(path.relative_to(work.path)), "x")
    cp.close()
    db = sqlite3.connect(state / "synthd.db", isolation_level=None)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?, 'record', 1, 20, 40)",
        ((src.id, i, i + 1, offsets[i]) for i in range(done)),
    )
    db.execute(
        "UPDATE sources SET resume_seq = ?, resume_line = ?, resume_offset = ? WHERE id = ?",
        (done, done, offsets[done - 1], src.id),
    )
    db.execute("COMMIT")
    db.close()


def restart(done: int) -> None:
    sim, url = start_sim([])
    work = Workdir()
    try:
        work.config(url, {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_in_flight": 256})
        t0 = time.monotonic()
        build_state(work, done)
        built = time.monotonic() - t0
        db_mb = (work.path / "state" / "synthd.db").stat().st_size / 1e6
        run = work.run("--once")
        started = _ts(run.event("started")["timestamp"])
        recovered = _ts(run.event("recovered")["timestamp"])
        emit(
            {
                "items_done_before": done,
                "state_db_mb": round(db_mb, 1),
                "state_build_s": round(built, 1),
                "exec_to_started_s": round(started - run.exec_at, 2),
                "recovery_to_started_s": round(started - recovered, 3),
                "whole_run_s": round(run.wall_s, 2),
                "remaining_done": work.count_lines(),
                "exit": run.returncode,
            }
        )
    finally:
        stop(sim)
        work.remove()


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def write_path(count: int, batch: int) -> None:
    work = Workdir()
    try:
        os.chdir(work.path)
        work.config("http://127.0.0.1:9/v1", {})
        cfg = config_mod.load(Path("config/synthd.toml"))
        job = cfg.jobs["bench"]
        cp = Checkpoint(Path("state/synthd.db"))
        writer = Writer(cfg, cp, lambda _: None, lambda _s, _p: None)
        src = Source(
            cp.add_source("bench", "feed", "in.jsonl", "x", "fp").id,
            "bench",
            "feed",
            "in.jsonl",
            "x",
            "fp",
        )
        writer.track(src, {})
        context = "A passage of about five hundred characters. " * 11
        prompt = [{"role": "user", "content": job.template.render({"context": context})}]
        outcomes = []
        for i in range(count):
            item = WorkItem(src, i, i + 1, (i + 1) * 500, {"context": context})
            reply = Reply(
                [Choice("What happened? Why? Who was there?", "stop")], "m", 150, 30, True
            )
            outcomes.append(
                records.completed(
                    job,
                    item,
                    prompt,
                    {"n": 1},
                    reply,
                    [Accepted("What happened?\nWhy?")],
                    time.time(),
                )
            )
        fsyncs = 0
        started = time.perf_counter()
        cpu0 = time.process_time()
        for i in range(0, count, batch):
            writer._commit(list(outcomes[i : i + batch]))
            fsyncs += 1
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        shard_bytes = sum(p.stat().st_size for p in Path("out/bench").glob("*.jsonl*"))
        emit(
            {
                "records": count,
                "batch": batch,
                "wall_us_per_record": round(1e6 * elapsed / count, 1),
                "cpu_us_per_record": round(1e6 * cpu / count, 1),
                "commits_per_s": round(fsyncs / elapsed, 1),
                "bytes_per_record": shard_bytes // count,
            }
        )
        cp.close()
    finally:
        os.chdir(ROOT)
        work.remove()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--done", type=int, default=1_000_000)
    p.add_argument("--records", type=int, default=50_000)
    args = p.parse_args()
    restart(args.done)
    for batch in (50, 250, 1000):
        write_path(args.records, batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
