"""The daemon's HTTP endpoint after a real run, and ``synthd run --log-file``.

The figures ``/metrics`` reports are checked against what others saw: the
simulator's own ``/stats`` (requests by status, tokens) and the shard files
(records and rejects written).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from synthd import config
from synthd.daemon import Daemon
from synthd.sim import SimConfig, running_sim
from tests.helpers import Workdir, sim_process, write_provider_config

# A prompt of its own: the project's prompts change; the sim answers "question" prompts
# with question lists, a few of them too short for min_items.
PROMPT = "Write the questions a reader would ask about this passage.\n\n{{context}}\n"
JOB = """
[jobs.q]
prompt = "prompts/test-questions.txt"
model = "sim-1"
input = "lines"
max_tokens = 120

[jobs.q.filters]
split = "lines"
keep_lines_matching = '\\?\\s*$'
min_items = 3
"""


def write_config(
    work: Workdir, base_url: str, listen: str = "127.0.0.1:0", grace_s: float = 5, extra: str = ""
) -> Path:
    (work.path / "prompts" / "test-questions.txt").write_text(PROMPT)
    service = {"listen": listen, "grace_s": grace_s, "scan_interval_s": 0.05}
    return write_provider_config(
        work,
        base_url,
        JOB + extra,
        service_keys={**service, "progress_interval_s": 60},
        rpm=600_000,
        tpm=100_000_000,
        max_in_flight=8,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )


def topics(n: int) -> str:
    return "".join(
        f"Topic {i}: the ferry to island {i * 7} was cancelled twice.\n" for i in range(n)
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """(sample name, labels) -> value, for every sample on the page."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by_label(samples: Samples, name: str, label: str, **match: str) -> dict[str, float]:
    """One metric's values keyed by ``label``, among samples whose labels include ``match``."""
    out = {}
    for (sample, labels), value in samples.items():
        d = dict(labels)
        if sample == name and all(d.get(k) == v for k, v in match.items()):
            out[d[label]] = value
    return out


async def run_until_file_done(daemon: Daemon, check: Any) -> Any:
    """Run a (non-once) daemon until its first file is done, call ``check``, stop it.

    The endpoint lives as long as the daemon: a once-mode run would take it down
    with the last commit, before anything could read the final figures.
    """
    done = asyncio.Event()

    def watch(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event.get("event") == "file_done":
            done.set()
        return event

    with capture_logs(processors=[watch]):
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(done.wait(), 10)
            return await check()
        finally:
            daemon.stop()
            assert await asyncio.wait_for(task, 10) == 0


async def get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.read()


async def test_metrics_health_and_readiness_after_a_run(work: Workdir) -> None:
    faults = SimConfig(port=0, latency_ms=2, p_500=0.2, fault_seed=3)
    async with running_sim(faults) as sim:
        cfg = config.load(write_config(work, sim.base_url))
        (work.spool("q") / "topics.txt").write_text(topics(30))
        daemon = Daemon(cfg, handle_signals=False)

        async def scrape() -> tuple[tuple[int, bytes], ...]:
            base = f"http://127.0.0.1:{daemon.http_port}"
            return await asyncio.gather(
                get(f"{base}/healthz"), get(f"{base}/readyz"), get(f"{base}/metrics")
            )

        healthz, readyz, metrics = await run_until_file_done(daemon, scrape)
        seen = sim.stats()

    assert healthz[0] == 200
    health = orjson.loads(healthz[1])
    assert health["status"] == "ok" and health["ready"] is True
    assert health["output_blocked"] is None
    assert readyz == (200, b'{"ready": true}')

    assert metrics[0] == 200
    m = parse_metrics(metrics[1].decode())
    records, rejects = work.lines("q"), work.lines("q", "rejects")
    requests = by_label(m, "synthd_requests_total", "status", job="q")
    # Every request the sim saw is counted under the status it answered with.
    assert requests == {k: float(v) for k, v in seen["by_status"].items()}
    assert sum(requests.values()) == seen["requests"]
    assert requests["200"] == 30 and requests["500"] > 0  # the faults did happen
    # Each 500 was sent again (none exhausted its attempts), and nothing died.
    assert m[("synthd_retries_total", frozenset({("job", "q")}))] == requests["500"]
    assert m[("synthd_dead_letters_total", frozenset({("job", "q")}))] == 0
    # The latency histogram holds one observation per answered request.
    count = m[("synthd_request_latency_seconds_count", frozenset({("job", "q")}))]
    assert count == requests["200"]
    inf = frozenset({("job", "q"), ("le", "+Inf")})
    assert m[("synthd_request_latency_seconds_bucket", inf)] == count
    # Records and filter rejects as the shards hold them.
    assert m[("synthd_records_written_total", frozenset({("job", "q")}))] == len(records)
    assert m[("synthd_items_done_total", frozenset({("job", "q")}))] == 30
    filtered = by_label(m, "synthd_rejects_total", "reason", job="q")
    assert records and filtered
    assert sum(filtered.values()) == len(rejects)
    assert len(records) + len(rejects) == 30
    tokens = by_label(m, "synthd_tokens_total", "kind", job="q")
    assert tokens == {"prompt": seen["prompt_tokens"], "completion": seen["completion_tokens"]}
    provider = frozenset({("provider", "default")})
    assert m[("synthd_in_flight", provider)] == 0
    assert m[("synthd_queue_depth", provider)] == 0
    assert m[("synthd_rate_limited_total", provider)] == 0


async def test_not_ready_until_the_provider_answers(work: Workdir) -> None:
    """A request is out, no answer yet: alive, not ready."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.json_response({"error": {"message": "closing"}}, status=503)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", hold)
    app.router.add_get("/v1/models", hold)  # the start-up probe is held too
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        # No grace: the request is held, and waiting for it proves nothing.
        base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        cfg = config.load(write_config(work, base_url, grace_s=0))
        (work.spool("q") / "topics.txt").write_text(topics(1))
        daemon = Daemon(cfg, handle_signals=False)
        task = asyncio.create_task(daemon.run())
        try:
            # Once the request is out, the file has been read and closed: stopping now
            # cannot catch the reader half-way.
            await asyncio.wait_for(arrived.wait(), 10)
            base = f"http://127.0.0.1:{daemon.http_port}"
            healthz, readyz = await get(f"{base}/healthz"), await get(f"{base}/readyz")
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 10)
    finally:
        release.set()
        await runner.cleanup()
    assert healthz[0] == 200 and orjson.loads(healthz[1])["ready"] is False
    assert readyz == (503, b'{"ready": false}')


async def test_ready_ignores_a_provider_no_job_uses(work: Workdir) -> None:
    async with running_sim(SimConfig(port=0)) as sim:
        spare = '[providers.spare]\nbase_url = "http://127.0.0.1:9/v1"\n'
        cfg = config.load(write_config(work, sim.base_url, extra=spare))
        (work.spool("q") / "topics.txt").write_text(topics(2))
        daemon = Daemon(cfg, handle_signals=False)

        async def scrape() -> tuple[int, bytes]:
            return await get(f"http://127.0.0.1:{daemon.http_port}/readyz")

        readyz = await run_until_file_done(daemon, scrape)
    assert readyz == (200, b'{"ready": true}')


async def test_records_written_counts_only_what_the_shards_hold(work: Workdir) -> None:
    async with running_sim(SimConfig(port=0)) as sim:
        cfg = config.load(write_config(work, sim.base_url))
        # The same line three times: the sim answers identically, dedupe keeps one.
        line = "Topic: the ferry to the island was cancelled twice.\n"
        (work.spool("q") / "same.txt").write_text(line * 3)
        daemon = Daemon(cfg, handle_signals=False)

        async def scrape() -> tuple[int, bytes]:
            return await get(f"http://127.0.0.1:{daemon.http_port}/metrics")

        _, body = await run_until_file_done(daemon, scrape)
    m = parse_metrics(body.decode())
    records, rejects = work.lines("q"), work.lines("q", "rejects")
    assert len(records) == 1 and len(rejects) == 2
    assert m[("synthd_records_written_total", frozenset({("job", "q")}))] == len(records)
    assert sum(by_label(m, "synthd_rejects_total", "reason", job="q").values()) == len(rejects)


def test_run_log_file_gets_json_lines(work: Workdir) -> None:
    with sim_process() as url:
        cfg = write_config(work, url, listen="")
        (work.spool("q") / "topics.txt").write_text(topics(3))
        log_file = work.path / "synthd.log"
        run = ["run", "--config", str(cfg), "--once", "--log-file", str(log_file)]
        result = subprocess.run(
            [sys.executable, "-m", "synthd", *run],
            capture_output=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b""  # the logs went to the file, not to stdout
    events = [orjson.loads(line) for line in log_file.read_bytes().splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "recovered" and names[-1] == "stopped"
    assert {"started", "summary"} <= set(names)
    assert "file_done" not in names  # a file that went well: debug only
    assert all({"timestamp", "level"} <= e.keys() for e in events)
    summary = next(e for e in events if e["event"] == "summary")
    assert summary["job"] == "q" and summary["done"] == 3
    assert len(work.lines("q")) == summary["records"]
