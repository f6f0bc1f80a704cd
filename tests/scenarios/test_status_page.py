"""The live status page (``/``, ``/api/status``) of a running daemon, as a browser sees it.

The page is opened in a real headless Chromium while one job has finished a file and another
has requests on the wire that the provider holds: every number the page renders must equal
the one ``/metrics`` exports (and the cost the one ``synthd status`` computes). Beyond
loopback the page and its JSON need the token; the API key is never on any page.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from synthd import config, status
from synthd.daemon import Daemon
from synthd.sim import SimConfig, running_sim
from tests import chromium
from tests.helpers import ROOT, Workdir, simple_job, wait_until
from tests.scenarios.test_service import (
    by_label,
    parse_metrics,
    run_until_file_done,
    topics,
    write_config,
)

KEY = "sk-sentinel-never-shown-4242"
TOKEN = "status-token-for-tests-77"
PRICES = '\n[prices."sim-1"]\ninput_per_mtok = 0.15\noutput_per_mtok = 0.6\n'
DOM_VALUE = re.compile(r'data-k="([^"]+)" data-v="([^"]*)"')


def held_job(hang_url: str) -> str:
    """Job "held" on provider "held", whose server holds every request (in flight, stable)."""
    return (
        PRICES
        + f'\n[providers.held]\nbase_url = "{hang_url}"\nmax_in_flight = 4\n'
        + "request_timeout_s = 120\nmax_attempts = 1\n\n"
        + simple_job("held", input='"lines"', provider='"held"')
    )


async def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.read()


def expected_from_metrics(text: str) -> dict[str, float]:
    """What the page must show, keyed as its ``data-k`` cells, from a /metrics scrape."""
    m = parse_metrics(text)
    out: dict[str, float] = {}
    per_job = {
        "items_done": "synthd_items_done_total",
        "records": "synthd_records_written_total",
        "dead": "synthd_dead_letters_total",
        "backlog": "synthd_backlog_items",
    }
    per_provider = {
        "in_flight": "synthd_in_flight",
        "queued": "synthd_queue_depth",
        "rate_limited": "synthd_rate_limited_total",
        "up": "synthd_provider_up",
        "outages": "synthd_provider_outages_total",
        "rpm": "synthd_budget_requests_per_minute",
        "tpm": "synthd_budget_tokens_per_minute",
    }
    for scope, names in (("job", per_job), ("provider", per_provider)):
        for key, name in names.items():
            for label, v in by_label(m, name, scope).items():
                out[f"{scope}.{label}.{key}"] = v
    for job in by_label(m, "synthd_items_done_total", "job"):
        tokens = by_label(m, "synthd_tokens_total", "kind", job=job)
        out[f"job.{job}.prompt_tokens"] = tokens["prompt"]
        out[f"job.{job}.completion_tokens"] = tokens["completion"]
        rejects = by_label(m, "synthd_rejects_total", "reason", job=job)
        out[f"job.{job}.rejected"] = sum(rejects.values())
        out.update({f"job.{job}.rejects.{r}": v for r, v in rejects.items()})
    return out


async def test_the_page_in_chromium_shows_what_metrics_says(
    work: Workdir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chromium.require()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    fast = SimConfig(port=0, latency_ms=2, spurious_429_at=4)
    hold = SimConfig(port=0, p_hang=1.0, hang_s=600)
    async with running_sim(fast) as sim, running_sim(hold) as held:
        cfg_path = write_config(work, sim.base_url, grace_s=0.2, extra=held_job(held.base_url))
        cfg = config.load(cfg_path)
        (work.spool("q") / "topics.txt").write_text(topics(30))
        (work.spool("held") / "topics.txt").write_text(topics(20))
        daemon = Daemon(cfg, handle_signals=False)

        async def look() -> tuple[chromium.Page, str, status.Status]:
            held_stats = daemon.provider_stats["held"]
            await wait_until(lambda: held_stats.in_flight == 4 and held_stats.queued == 16, 20)
            base = f"http://127.0.0.1:{daemon.http_port}"
            shot = tmp_path / "status-page.png"
            page = await asyncio.to_thread(chromium.render, f"{base}/", 4000)
            await asyncio.to_thread(chromium.screenshot, f"{base}/", shot, (1280, 860), 4000)
            if target := os.environ.get("SYNTHD_DOCS_SCREENSHOT"):  # regenerates docs/'s
                shutil.copy(shot, ROOT / target)
            _, metrics = await fetch(f"{base}/metrics")
            st = await asyncio.to_thread(status.collect, cfg, f"{base}/metrics")
            return page, metrics.decode(), st

        page, metrics, st = await run_until_file_done(daemon, look)

    assert 'data-loaded="1"' in page.dom, page.console
    assert page.console == [], page.console  # no error, no warning, no log line
    shown = {k: v for k, v in DOM_VALUE.findall(page.dom)}
    expected = expected_from_metrics(metrics)
    assert expected["job.q.items_done"] == 30 and expected["job.q.rejected"] > 0
    assert expected["provider.default.rate_limited"] == 1  # the 429 the sim sent
    assert expected["provider.held.in_flight"] == 4 and expected["job.held.backlog"] == 20
    assert {k: float(shown[k]) for k in expected} == expected
    # Cost and totals as `synthd status` computes them from the checkpoint.
    q = next(j for j in st.jobs if j.job == "q")
    assert float(shown["job.q.cost_usd"]) == pytest.approx(q.cost_usd, abs=1e-6)
    assert (q.records, q.prompt_tokens) == (
        expected["job.q.records"],
        expected["job.q.prompt_tokens"],
    )
    # The held job: running, nothing done, no ETA yet.
    assert shown["job.held.items_done"] == "0" and shown["job.held.eta_s"] == ""
    # The last accepted and rejected lines, with their reason.
    accepted = {r["completion"][:40] for r in work.lines("q")}
    assert any(text[:40] in page.dom for text in accepted)
    reasons = {r["reason"] for r in work.lines("q", "rejects")}
    assert any(f'class="reason">{r}<' in page.dom for r in reasons)
    assert KEY not in page.dom


@asynccontextmanager
async def idle_daemon(work: Workdir, listen: str) -> AsyncIterator[str]:
    """A daemon with one job and nothing to do, listening on ``listen``; yields its base URL."""
    async with running_sim(SimConfig(port=0)) as sim:
        cfg = config.load(write_config(work, sim.base_url, listen=listen))
        work.spool("q")
        daemon = Daemon(cfg, handle_signals=False)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(daemon.ready.wait(), 20)
            yield f"http://127.0.0.1:{daemon.http_port}"
        finally:
            daemon.stop()
            assert await asyncio.wait_for(task, 20) == 0


async def test_beyond_loopback_the_page_needs_the_token(
    work: Workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNTHD_STATUS_TOKEN", TOKEN)
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    async with idle_daemon(work, "0.0.0.0:0") as base:
        bare = [await fetch(f"{base}{p}") for p in ("/", "/api/status")]
        wrong = await fetch(f"{base}/api/status", {"Authorization": "Bearer not-the-token"})
        key_as_token = await fetch(f"{base}/", {"Authorization": f"Bearer {TOKEN}x"})
        bearer = await fetch(f"{base}/api/status", {"Authorization": f"Bearer {TOKEN}"})
        browser = await fetch(f"{base}/", {"Authorization": f"Basic {basic}"})
        open_ = [await fetch(f"{base}{p}") for p in ("/metrics", "/healthz", "/static/status.js")]
    assert [s for s, _ in bare] == [401, 401]
    assert wrong[0] == 401 and key_as_token[0] == 401
    assert bearer[0] == 200 and orjson.loads(bearer[1])["jobs"][0]["job"] == "q"
    assert browser[0] == 200 and b"<title>synthd status</title>" in browser[1]
    assert [s for s, _ in open_] == [200, 200, 200]
    assert TOKEN.encode() not in bearer[1]


async def test_beyond_loopback_without_a_token_the_page_is_off(
    work: Workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SYNTHD_STATUS_TOKEN", raising=False)
    with capture_logs() as logs:
        async with idle_daemon(work, "0.0.0.0:0") as base:
            page = [await fetch(f"{base}{p}") for p in ("/", "/api/status")]
            metrics = await fetch(f"{base}/metrics")
    assert [s for s, _ in page] == [403, 403]
    assert b"SYNTHD_STATUS_TOKEN" in page[0][1]
    assert metrics[0] == 200
    assert [e for e in logs if e["event"] == "status_page_off"]


async def test_on_loopback_the_page_is_open_and_never_shows_the_api_key(
    work: Workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("SYNTHD_STATUS_TOKEN", TOKEN)
    async with running_sim(SimConfig(port=0)) as sim:
        cfg = config.load(write_config(work, sim.base_url))
        (work.spool("q") / "topics.txt").write_text(topics(5))
        daemon = Daemon(cfg, handle_signals=False)

        async def everything() -> list[tuple[int, bytes]]:
            base = f"http://127.0.0.1:{daemon.http_port}"
            paths = ("/", "/api/status", "/static/status.js", "/static/status.css")
            async with aiohttp.ClientSession() as http, http.get(f"{base}/") as resp:
                csp.append(resp.headers["Content-Security-Policy"])
            return [await fetch(f"{base}{p}") for p in (*paths, "/metrics", "/healthz")]

        csp: list[str] = []
        pages = await run_until_file_done(daemon, everything)
    assert [s for s, _ in pages] == [200] * 6
    # The page's Content-Security-Policy allows only the daemon itself: the Chromium test,
    # which allows no console line, proves the page keeps to it.
    assert csp == ["default-src 'self'; frame-ancestors 'none'; base-uri 'none'"]
    doc = orjson.loads(pages[1][1])
    assert doc["jobs"][0]["items_done"] == 5 and doc["recent"]["accepted"]
    # The dashboard's gauges after the run: the writer's commits are timed, nothing is left.
    m = parse_metrics(pages[4][1].decode())
    assert m[("synthd_writer_commit_seconds_count", frozenset())] >= 1
    assert m[("synthd_backlog_items", frozenset({("job", "q")}))] == 0
    assert m[("synthd_output_blocked", frozenset())] == 0
    info = frozenset({("job", "q"), ("provider", "default"), ("model", "sim-1")})
    assert m[("synthd_job_info", info)] == 1
    for _, body in pages:
        assert KEY.encode() not in body and TOKEN.encode() not in body
