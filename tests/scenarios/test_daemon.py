"""The daemon end to end against the simulator over a real socket."""

from __future__ import annotations

import contextlib
import gc
import socket
import subprocess
import sys
from collections import Counter

import orjson
import pytest
from structlog.testing import capture_logs

from synthd import memory
from synthd.sim import SimConfig, running_sim
from tests.helpers import Workdir, run_once, sim_process, simple_job


async def test_ten_thousand_items_each_recorded_once(work: Workdir) -> None:
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, simple_job("q"))
        rows = b"".join(
            orjson.dumps({"text": f"context number {i} about item {i * 7}", "n": i}) + b"\n"
            for i in range(10_000)
        )
        (work.spool("q") / "big.jsonl").write_bytes(rows)
        await run_once(work)
        assert sim.stats()["by_status"] == {"200": 10_000}
    records = work.lines("q")
    assert len(records) == 10_000
    assert len({r["id"] for r in records}) == 10_000
    assert sorted(r["meta"]["n"] for r in records) == list(range(10_000))
    assert (work.spool("q") / "done" / "big.jsonl").exists()
    assert not list((work.spool("q") / ".work").iterdir())
    # A clean stop gives every shard its final name.
    assert [p.name for p in (work.path / "out" / "q").glob("*.jsonl")] == ["q-000001.jsonl"]


async def test_spool_lifecycle_done_and_failed(work: Workdir) -> None:
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, simple_job("q"))
        spool = work.spool("q")
        (spool / "a.txt").write_text("A passage about the river and the bridge.")
        (spool / "b.txt").write_text("Another passage, about a long night shift.")
        (spool / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
        (spool / "empty.txt").write_text("   \n\n")
        (spool / ".hidden.txt").write_text("not for us")
        (spool / "partial.txt.part").write_text("still being written")
        with capture_logs() as logs:
            await run_once(work)
    assert sorted(p.name for p in (spool / "done").iterdir()) == ["a.txt", "b.txt"]
    failed = sorted(p.name for p in (spool / "failed").iterdir())
    assert failed == ["empty.txt", "empty.txt.error.json", "image.txt", "image.txt.error.json"]
    reasons = {
        name: orjson.loads((spool / "failed" / f"{name}.error.json").read_bytes())["reason"]
        for name in ("empty.txt", "image.txt")
    }
    assert reasons == {"empty.txt": "empty", "image.txt": "binary"}
    assert (spool / ".hidden.txt").exists() and (spool / "partial.txt.part").exists()
    assert sorted(r["source"]["file"] for r in work.lines("q")) == ["a.txt", "b.txt"]
    assert {e["file"] for e in logs if e["event"] == "file_failed"} == {"empty.txt", "image.txt"}


async def test_several_jobs_share_one_daemon(work: Workdir) -> None:
    async with running_sim(SimConfig(port=0, latency_ms=5)) as sim:
        jobs = simple_job("alpha") + simple_job("beta", input='"lines"', samples=2)
        work.write_config(sim.base_url, jobs)
        for i in range(20):
            (work.spool("alpha") / f"c{i}.txt").write_text(f"alpha context {i}")
        (work.spool("beta") / "topics.txt").write_text("\n".join(f"topic {i}" for i in range(15)))
        daemon = await run_once(work)
    assert len(work.lines("alpha")) == 20
    beta = work.lines("beta")
    assert len(beta) == 30  # 15 topics, 2 samples each
    assert Counter(r["sample"] for r in beta) == {0: 15, 1: 15}
    assert daemon.jobs["alpha"].dispatcher is daemon.jobs["beta"].dispatcher


async def test_rejects_are_kept_with_their_reason(work: Workdir) -> None:
    async with running_sim(SimConfig(port=0)) as sim:
        job = simple_job("q", f_split='"lines"', f_keep_lines_matching="'\\?\\s*$'", f_min_items=5)
        work.write_config(sim.base_url, job)
        for i in range(40):
            (work.spool("q") / f"c{i}.txt").write_text(f"question context {i}: the council vote")
        await run_once(work)
    records, rejects = work.lines("q"), work.lines("q", "rejects")
    assert len(records) + len(rejects) == 40
    assert rejects and {r["reason"] for r in rejects} == {"too_few_items"}
    assert all(all(q.endswith("?") for q in r["items"]) for r in records)


async def test_identical_completions_are_deduplicated(work: Workdir) -> None:
    async with running_sim(SimConfig(port=0)) as sim:
        job = simple_job("q", f_dedupe="true")
        work.write_config(sim.base_url, job)
        for i in range(5):  # the same context five times: the sim answers identically
            (work.spool("q") / f"same{i}.txt").write_text("one and the same passage")
        await run_once(work)
    assert len(work.lines("q")) == 1
    assert [r["reason"] for r in work.lines("q", "rejects")] == ["duplicate"] * 4


def test_cli_once_exits_zero_with_its_start_up_heap_frozen(work: Workdir) -> None:
    """``synthd run --once`` exits 0 when done. Before any work, the start-up heap
    (modules, config, clients) is moved out of the collector's reach and full
    collections are made rare: each one would walk every live object while the loop
    waits (bench/throughput.py shows the lag)."""
    with sim_process() as url:
        work.write_config(url, simple_job("q"))
        (work.spool("q") / "a.txt").write_text("a passage")
        result = subprocess.run(
            [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml", "--once"],
            capture_output=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr.decode()
    events = [orjson.loads(line) for line in result.stdout.splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "recovered" and names[-1] == "stopped"
    assert len(work.lines("q")) == 1
    assert names.index("gc_frozen") < names.index("started")
    frozen = events[names.index("gc_frozen")]
    assert frozen["objects"] > 0
    assert frozen["thresholds"] == list(memory.GC_THRESHOLDS)


async def test_an_embedded_daemon_leaves_the_hosts_collector_alone(work: Workdir) -> None:
    before = (gc.get_freeze_count(), gc.get_threshold())
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, simple_job("q"))
        (work.spool("q") / "a.txt").write_text("a passage")
        await run_once(work)
    assert len(work.lines("q")) == 1
    assert (gc.get_freeze_count(), gc.get_threshold()) == before


def test_cli_config_error_exit_code(work: Workdir) -> None:
    work.write_config("http://127.0.0.1:9/v1", simple_job("q") + "bogus = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml"],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert b"config/synthd.toml: jobs.q.filters.bogus: unknown key" in result.stderr


async def test_systemd_readiness_and_stopping_over_a_real_socket(
    work: Workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(work.path / "notify.sock"))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(work.path / "notify.sock"))
    try:
        async with running_sim(SimConfig(port=0)) as sim:
            work.write_config(sim.base_url, simple_job("q"))
            (work.spool("q") / "a.txt").write_text("a passage")
            await run_once(work)
        messages = []
        with contextlib.suppress(BlockingIOError):
            while True:
                messages.append(sock.recv(4096))
    finally:
        sock.close()
    assert messages[0] == b"READY=1"
    assert b"STOPPING=1" in messages
    assert any(m.startswith(b"STATUS=") for m in messages)


async def test_progress_line_reports_an_eta_from_the_byte_backlog(work: Workdir) -> None:
    async with running_sim(SimConfig(port=0, latency_ms=20)) as sim:
        work.write_config(
            sim.base_url,
            simple_job("q", input='"lines"'),
            service="progress_interval_s = 0.2",
            rpm=6000,  # 100 items/s: the 300 items take ~3 s, several progress lines
        )
        (work.spool("q") / "t.txt").write_text("\n".join(f"topic {i}" for i in range(300)))
        with capture_logs() as logs:
            await run_once(work)
    etas = [e["eta_s"] for e in logs if e["event"] == "progress" and e["done"] > 0]
    assert etas, "progress lines were logged while work went on"
    assert all(isinstance(eta, int | float) and 0 <= eta < 60 for eta in etas if eta is not None)
    assert any(eta is not None and eta > 0 for eta in etas)
    summary = next(e for e in logs if e["event"] == "summary")
    assert summary["eta_s"] == 0


async def test_the_sdk_transport_gives_the_same_records(work: Workdir) -> None:
    """transport = "sdk" sends through the openai package: same records, same accounting."""
    async with running_sim(SimConfig(port=0, p_500=0.2, fault_seed=5)) as sim:
        work.write_config(
            sim.base_url, simple_job("q"), provider='transport = "sdk"\nmax_attempts = 8'
        )
        for i in range(12):
            (work.spool("q") / f"c{i}.txt").write_text(f"passage {i} for the sdk transport")
        daemon = await run_once(work)
        stats = sim.stats()
    records = work.lines("q")
    assert len(records) == 12
    assert all(r["usage"]["prompt_tokens"] > 0 for r in records)
    assert stats["by_status"]["200"] == 12
    assert daemon.jobs["q"].stats.retries == stats["by_status"].get("500", 0)
