"""``synthd status``: a known checkpoint and spool, read while nothing runs and while the
daemon works."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from synthd import cli, config, status
from synthd.checkpoint import Checkpoint
from synthd.daemon import Daemon
from synthd.models import Outcome, Source
from tests.helpers import PRICED_JOB, Workdir, write_provider_config

JOBS = (
    PRICED_JOB
    + """
[jobs.u]
prompt = "prompts/t.txt"
model = "m-2"
"""
)


def write_config(work: Workdir, base_url: str = "http://127.0.0.1:9/v1", **service: Any) -> Path:
    (work.path / "prompts" / "t.txt").write_text("Ask about: {{context}}")
    keys = {"scan_interval_s": 0.05, **service}
    return write_provider_config(work, base_url, JOBS, service_keys=keys, max_in_flight=2)


def outcome(
    src: Source, seq: int, state: str, records: int = 0, pt: int = 0, ct: int = 0
) -> Outcome:
    lines = {"records": [{}] * records} if records else {}
    return Outcome(
        src, seq, seq + 1, 10 * (seq + 1), state, lines, [], pt, ct, records_written=records
    )


def build_fixture(work: Workdir) -> None:
    """Job t: a.txt done (4 items, one per state), b.txt failed, c.txt active with one item
    done, two files pending. Job gone: in the checkpoint only. Job u: in the config only."""
    cp = Checkpoint(work.path / "state" / "synthd.db")
    a = cp.add_source("t", "00000001", "a.txt", "spool/t/.work/00000001-a.txt", "fp")
    b = cp.add_source("t", "00000002", "b.txt", "spool/t/.work/00000002-b.txt", "fp")
    c = cp.add_source("t", "00000003", "c.txt", "spool/t/.work/00000003-c.txt", "fp")
    g = cp.add_source("gone", "00000004", "g.txt", "spool/gone/.work/00000004-g.txt", "fp")
    with cp.transaction() as tx:
        tx.record(
            [
                outcome(a, 0, "record", records=2, pt=100, ct=50),
                outcome(a, 1, "rejected", pt=80, ct=40),
                outcome(a, 2, "dead"),
                outcome(a, 3, "bad_input"),
                outcome(c, 0, "record", records=1, pt=10, ct=5),
                outcome(g, 0, "record", records=1, pt=1000, ct=2000),
            ]
        )
    cp.end_source(a.id, "done", "spool/t/done/a.txt", None)
    cp.end_source(b.id, "failed", "spool/t/failed/b.txt", "binary: NUL bytes")
    cp.close()
    spool = work.spool("t")
    for name in ("new1.txt", "new2.jsonl", ".hidden.txt", "upload.txt.part"):
        (spool / name).write_text("a line\n")
    (spool / "done").mkdir()  # the daemon's own folders are not pending files


T_JSON = {
    "job": "t",
    "model": "m-1",
    "provider": "default",
    "files": {"pending": 2, "active": 1, "done": 1, "failed": 1},
    "items": {"record": 2, "rejected": 1, "dead": 1, "bad_input": 1, "done": 5},
    "records": 3,
    "in_flight": None,
    "queued": None,
    "provider_up": None,
    "tokens": {"prompt": 190, "completion": 95},
    "cost_usd": 0.00133,  # (190 x 2.0 + 95 x 10.0) / 1e6
    "stage": None,  # reads the spool: not a pipeline stage
}


def test_json_figures_for_a_known_checkpoint(
    work: Workdir, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_path = write_config(work)
    build_fixture(work)
    assert cli.main(["status", "--config", str(cfg_path), "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["daemon_running"] is False and out["metrics_url"] is None
    assert out["state"] == "state/synthd.db"
    t, u, gone = out["jobs"]
    assert t == T_JSON
    assert u["job"] == "u" and u["model"] == "m-2"
    assert u["files"] == {"pending": 0, "active": 0, "done": 0, "failed": 0}
    assert u["items"]["done"] == 0 and u["cost_usd"] is None  # m-2 has no price
    assert gone["job"] == "gone" and gone["model"] is None and gone["provider"] is None
    assert gone["files"]["active"] == 1 and gone["records"] == 1
    assert gone["tokens"] == {"prompt": 1000, "completion": 2000}


def test_table_for_a_known_checkpoint(work: Workdir, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = write_config(work)
    build_fixture(work)
    assert cli.main(["status", "--config", str(cfg_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("daemon: no metrics address")
    header, t, u, gone = (line.split() for line in lines[2:6])
    assert header == [
        "job", "pending", "active", "done", "failed", "record", "rejected", "dead",
        "bad_input", "records", "in_flight", "queued", "prompt_tokens", "completion_tokens",
        "cost_usd",
    ]  # fmt: skip
    assert " ".join(t) == "t 2 1 1 1 2 1 1 1 3 - - 190 95 $0.0013"
    assert " ".join(u) == "u 0 0 0 0 0 0 0 0 0 - - 0 0 -"
    assert " ".join(gone) == "gone 0 1 0 0 1 0 0 0 1 - - 1,000 2,000 -"
    assert 'no [prices."<model>"] for: m-2' in lines
    assert "in the checkpoint but not in the config: gone" in lines


def test_a_daemon_that_does_not_answer_shows_dashes(work: Workdir) -> None:
    with socket.socket() as s:  # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config.load(write_config(work, listen=f"127.0.0.1:{port}"))
    build_fixture(work)
    result = status.collect(cfg)
    assert result.metrics_url == f"http://127.0.0.1:{port}/metrics"
    assert result.daemon_running is False
    assert [(j.in_flight, j.queued) for j in result.jobs] == [(None, None)] * 3
    assert "daemon: not answering at" in status.render(result)


def test_no_state_yet_reads_as_zeros_and_creates_nothing(work: Workdir) -> None:
    cfg = config.load(write_config(work))
    (work.spool("t") / "first.txt").write_text("a line\n")
    result = status.collect(cfg)
    assert [j.job for j in result.jobs] == ["t", "u"]
    t = result.jobs[0]
    assert t.files_pending == 1 and t.items_done == 0 and t.records == 0
    assert t.cost_usd == 0.0
    assert not (work.path / "state").exists()


async def test_live_figures_while_the_daemon_works(work: Workdir) -> None:
    """Four items, two senders (max_in_flight = 2), and a provider that holds every request:
    2 requests on the wire, 2 items waiting for a sender."""
    arrived, release = asyncio.Event(), asyncio.Event()
    seen = 0

    async def complete(request: web.Request) -> web.Response:
        nonlocal seen
        seen += 1
        if seen == 2:
            arrived.set()
        await release.wait()
        return web.json_response({"error": {"message": "closing"}}, status=503)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", complete)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        path = write_config(work, url, listen="127.0.0.1:0", grace_s=0)
        cfg = config.load(path)
        (work.spool("t") / "lines.txt").write_text("".join(f"line {i}\n" for i in range(4)))
        daemon = Daemon(cfg, handle_signals=False)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(arrived.wait(), 10)
            metrics = f"http://127.0.0.1:{daemon.http_port}/metrics"
            # In a thread: the daemon answering /metrics runs on this loop.
            result = await asyncio.to_thread(status.collect, cfg, metrics)
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 10)
    finally:
        release.set()
        await runner.cleanup()
    assert result.daemon_running is True
    t = result.jobs[0]
    assert (t.in_flight, t.queued) == (2, 2)
    assert (t.files_pending, t.files_active, t.items_done) == (0, 1, 0)
    # u shares the provider, so it shows the same senders.
    assert (result.jobs[1].in_flight, result.jobs[1].queued) == (2, 2)
    assert "in flight and queued are per provider" in status.render(result)
