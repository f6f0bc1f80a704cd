"""Supervision: the ways feeding could stop without a word, each tried for real.

A failure that belongs to one file or line sets that file or line aside with its
reason and the job goes on; anything else stops the daemon with a non-zero exit
and the reason in its log, so that systemd or Docker restart it into recovery.
Every test ends with every other file and line done exactly once.
"""

from __future__ import annotations

import asyncio
import os
import resource
import secrets
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from synthd.checkpoint import Checkpoint
from synthd.daemon import STATE_FILE
from synthd.models import Outcome
from synthd.sim import SimConfig, running_sim
from tests.helpers import (
    Workdir,
    assert_good_once,
    drop_good,
    events,
    run_once,
    simple_job,
)

RUN = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml", "--once"]


def nested(depth: int) -> bytes:
    """A JSON array nested ``depth`` levels (orjson itself would refuse to write 300)."""
    return b"[" * depth + b'"leaf"' + b"]" * depth


def items_once(work: Workdir, name: str, count: int) -> None:
    """Items 0..count-1 of ``name`` have exactly one line each, all streams."""
    lines = [*work.lines("q"), *work.lines("q", "rejects"), *work.lines("q", "dead")]
    seqs = Counter(ln["source"]["seq"] for ln in lines if ln["source"]["file"] == name)
    assert seqs == dict.fromkeys(range(count), 1)


async def test_claim_ids_never_collide_even_when_random_bits_repeat(
    work: Workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every random draw the same: the claims must still be distinct."""
    monkeypatch.setattr(secrets, "token_hex", lambda n=None: "ab" * (n or 4))
    spool = work.spool("q")
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, simple_job("q"))
        for i in range(20):
            (spool / f"t{i}.txt").write_text(f"passage {i} about tides")
        drop_good(spool)
        await asyncio.wait_for(run_once(work), 60)
    done = {p.name for p in (spool / "done").iterdir()}
    assert {f"t{i}.txt" for i in range(20)} <= done
    assert_good_once(work)
    claims = [r["source"]["claim"] for r in work.lines("q")]
    assert len(set(claims)) == len(claims) == 23


async def test_a_file_vanishing_between_listing_and_stat_is_skipped(
    work: Workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second daemon or a producer's clean-up deletes a file right after the listing."""
    spool = work.spool("q")
    real_scandir = os.scandir

    class Vanishing:
        def __init__(self, path: Any) -> None:
            self._it = real_scandir(path)

        def __enter__(self) -> Vanishing:
            return self

        def __exit__(self, *exc: object) -> None:
            self._it.close()

        def __iter__(self) -> Iterator[os.DirEntry[str]]:
            for entry in self._it:
                if entry.name == "vanish.txt":
                    os.unlink(entry.path)  # gone before anyone can stat it
                yield entry

        def close(self) -> None:
            self._it.close()

    monkeypatch.setattr(os, "scandir", Vanishing)
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, simple_job("q"))
        (spool / "vanish.txt").write_text("here for a moment")
        drop_good(spool)
        await asyncio.wait_for(run_once(work), 60)
    assert_good_once(work)
    assert not any("vanish" in ln["source"]["file"] for ln in work.lines("q"))


@pytest.mark.parametrize("depth", [300, 253])
async def test_a_deeply_nested_jsonl_line_is_rejected_alone(work: Workdir, depth: int) -> None:
    """300 levels is past orjson's limit; 253 passes it until the record adds two more."""
    spool = work.spool("q")
    rows = [orjson.dumps({"text": f"context {i}", "i": i}) for i in range(10)]
    rows[4] = b'{"text": "deep", "extra": ' + nested(depth) + b"}"
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, simple_job("q"))
        (spool / "deep.jsonl").write_bytes(b"\n".join(rows) + b"\n")
        drop_good(spool)
        with capture_logs() as logs:
            await asyncio.wait_for(run_once(work), 60)
    items_once(work, "deep.jsonl", 10)
    (bad,) = [r for r in work.lines("q", "rejects") if r["source"]["file"] == "deep.jsonl"]
    assert bad["stage"] == "input" and bad["source"]["seq"] == 4
    assert bad["reason"] == "too_deep"
    assert events(logs, "bad_input_line")
    assert (spool / "done" / "deep.jsonl").exists()
    assert_good_once(work)


def fsize_limited(limit: int) -> Any:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return preexec


def test_a_claim_the_disk_refuses_exits_non_zero_then_recovers(work: Workdir) -> None:
    """The checkpoint cannot grow (RLIMIT_FSIZE: EFBIG, as a full disk) when a claim is
    recorded: the daemon says why and exits non-zero; restarted, it finishes everything."""
    spool = work.spool("q")
    with running_sim_process() as url:
        work.write_config(url, simple_job("q"))
        drop_good(spool)
        assert subprocess.run(RUN, cwd=work.path, capture_output=True, timeout=60).returncode == 0
        # The state exists now; its WAL and shm are gone after the clean stop. Past the
        # 32 KB shm, only a few WAL pages fit: one claim batch of long names does not.
        names = [f"{i:03d}-{'x' * 200}.txt" for i in range(300)]
        for name in names:
            (spool / name).write_text(f"passage {name[:3]}")
        first = subprocess.run(
            RUN,
            cwd=work.path,
            capture_output=True,
            timeout=30,
            preexec_fn=fsize_limited(40 * 1024),
        )
        assert first.returncode != 0
        log = [orjson.loads(raw) for raw in first.stdout.splitlines() if raw.startswith(b"{")]
        (failed,) = [e for e in log if e["event"] == "daemon_failed"]
        assert "disk" in failed["error"] or "full" in failed["error"]
        assert b"synthd: feed-q: " in first.stderr
        assert subprocess.run(RUN, cwd=work.path, capture_output=True, timeout=120).returncode == 0
    for name in names:
        items_once(work, name, 1)
    assert_good_once(work)
    assert not [p for p in spool.iterdir() if p.is_file()]


def running_sim_process() -> Any:
    from tests.conftest import sim_process

    return sim_process()


# -- the two settler and recovery points of issue 14 ---------------------------------------


async def test_a_file_with_a_future_mtime_is_still_claimed(work: Workdir) -> None:
    spool = work.spool("q")
    async with running_sim(SimConfig(port=0)) as sim:
        cfg = work.write_config(sim.base_url, simple_job("q"))
        cfg.write_text(cfg.read_text().replace("settle_s = 0\n", "settle_s = 0.3\n"))
        (spool / "future.txt").write_text("a clock set an hour ahead")
        ahead = time.time() + 3600
        os.utime(spool / "future.txt", (ahead, ahead))
        drop_good(spool)
        await asyncio.wait_for(run_once(work), 30)
    assert (spool / "done" / "future.txt").exists()
    items_once(work, "future.txt", 1)
    assert_good_once(work)


async def test_a_vanished_claim_with_out_of_order_items_is_failed_not_forgotten(
    work: Workdir,
) -> None:
    """Item 1 done, item 0 not (resume point 0), and the claimed file gone: the done
    item's claim must stay known, and the file reported, not silently forgotten."""
    spool = work.spool("q")
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, simple_job("q", input='"lines"'))
        cp = Checkpoint(work.path / "state" / STATE_FILE)
        src = cp.add_source("q", "0badc1a1", "gone.txt", str(spool / ".work/0badc1a1-gone.txt"), "")
        with cp.transaction() as tx:
            tx.record([Outcome(src, 1, 2, 20, "record", [], 3, 4, 1)])
        cp.close()
        drop_good(spool)
        await asyncio.wait_for(run_once(work), 30)
    with sqlite3.connect(work.path / "state" / STATE_FILE) as db:
        rows = list(db.execute("SELECT status FROM sources WHERE claim = '0badc1a1'"))
    assert rows == [("failed",)]
    report = orjson.loads((spool / "failed" / "gone.txt.error.json").read_bytes())
    assert report["reason"] == "unreadable"
    assert_good_once(work)
