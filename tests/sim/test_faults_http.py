"""Each fault over real sockets, with its probability at 1.0, as a client experiences it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from synthd.sim import SimConfig, running_sim

CHAT_BODY = {"model": "m", "messages": [{"role": "user", "content": "Write questions on tea"}]}
TEXT_BODY = {"model": "m", "prompt": "Write questions on tea"}
# Limits high enough never to refuse, so that every response carries the x-ratelimit headers.
LIMITS: dict[str, Any] = {"rpm": 60_000, "tpm": 10_000_000}


async def call(fault: str, path: str = "/chat/completions", **cfg: Any) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request to a sim where ``fault`` always happens."""
    config = SimConfig(port=0, **{f"p_{fault}": 1.0}, **LIMITS, **cfg)
    body = CHAT_BODY if path == "/chat/completions" else TEXT_BODY
    async with running_sim(config) as sim, aiohttp.ClientSession() as session:
        async with session.post(sim.base_url + path, json=body) as resp:
            assert "x-ratelimit-remaining-requests" in resp.headers
            result = resp.status, resp.content_type, await resp.read()
        assert sim.stats()["faults"] == {fault: 1}
    return result


@pytest.mark.parametrize(
    ("fault", "status", "message"),
    [("500", 500, "The server had an error"), ("503", 503, "The engine is currently overloaded")],
)
async def test_server_errors_have_openai_bodies(fault: str, status: int, message: str) -> None:
    got_status, ctype, raw = await call(fault)
    error = orjson.loads(raw)["error"]
    assert (got_status, ctype) == (status, "application/json")
    assert error["message"].startswith(message)
    assert (error["type"], error["param"], error["code"]) == ("server_error", None, None)


async def test_html_is_a_502_from_a_proxy() -> None:
    status, ctype, raw = await call("html")
    assert (status, ctype) == (502, "text/html")
    assert raw.startswith(b"<html>") and b"Bad Gateway" in raw
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)


async def test_truncate_is_a_200_with_half_a_json_body() -> None:
    status, ctype, raw = await call("truncate")
    assert (status, ctype) == (200, "application/json")
    assert raw.startswith(b'{"id":"chatcmpl-')
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
async def test_empty_choices(path: str) -> None:
    status, _, raw = await call("empty_choices", path)
    body = orjson.loads(raw)
    assert status == 200 and body["choices"] == [] and body["usage"]["completion_tokens"] == 0
    (ChatCompletion if path == "/chat/completions" else Completion).model_validate(body)


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
async def test_content_filter(path: str) -> None:
    status, _, raw = await call("content_filter", path)
    body = orjson.loads(raw)
    (choice,) = body["choices"]
    assert status == 200 and choice["finish_reason"] == "content_filter"
    if path == "/chat/completions":
        assert ChatCompletion.model_validate(body).choices[0].message.content is None
    else:
        assert Completion.model_validate(body).choices[0].text == ""


async def test_no_usage() -> None:
    status, _, raw = await call("no_usage")
    body = orjson.loads(raw)
    assert status == 200 and "usage" not in body and body["choices"][0]["message"]["content"]
    assert ChatCompletion.model_validate(body).usage is None


async def test_drop_closes_the_connection_without_a_response() -> None:
    config = SimConfig(port=0, p_drop=1.0)
    async with running_sim(config) as sim, aiohttp.ClientSession() as session:
        for _ in range(3):  # also on a reused keep-alive connection
            with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
                async with session.post(sim.base_url + "/chat/completions", json=CHAT_BODY) as r:
                    await r.read()
        stats = sim.stats()
    assert stats["faults"] == {"drop": 3} and stats["by_status"] == {}


async def test_hang_outlasts_a_client_timeout_and_ends_at_shutdown() -> None:
    config = SimConfig(port=0, p_hang=1.0, hang_s=60)

    async def post_text(session: aiohttp.ClientSession, url: str) -> int:
        async with session.post(url, json=TEXT_BODY) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession() as session:
        async with running_sim(config) as sim:
            timeout = aiohttp.ClientTimeout(total=0.3)
            with pytest.raises(asyncio.TimeoutError):
                async with session.post(
                    sim.base_url + "/chat/completions", json=CHAT_BODY, timeout=timeout
                ) as r:
                    await r.read()
            # A second hang is still in flight when the server stops...
            pending = asyncio.create_task(post_text(session, sim.base_url + "/completions"))
            await asyncio.sleep(0.05)
            stopping = time.monotonic()
        # ...and the shutdown ends it at once, with its normal answer.
        assert time.monotonic() - stopping < 2
        assert await pending == 200


async def test_a_short_hang_then_answers_normally() -> None:
    started = time.monotonic()
    status, _, raw = await call("hang", hang_s=0.3)
    assert time.monotonic() - started >= 0.3
    assert status == 200 and ChatCompletion.model_validate(orjson.loads(raw)).choices


async def test_faults_are_reproducible_from_the_seed() -> None:
    async def statuses(seed: int) -> list[int]:
        config = SimConfig(port=0, p_500=0.3, p_503=0.2, fault_seed=seed)
        async with running_sim(config) as sim, aiohttp.ClientSession() as session:
            out = []
            for _ in range(40):
                async with session.post(sim.base_url + "/completions", json=TEXT_BODY) as r:
                    out.append(r.status)
            return out

    first = await statuses(11)
    assert first == await statuses(11) and first != await statuses(12)
    assert {200, 500, 503} == set(first)


async def test_faults_come_after_admission_and_consume_budget() -> None:
    config = SimConfig(port=0, p_500=1.0, rpm=6, limit_window_s=20)  # 2 requests of burst
    async with running_sim(config) as sim, aiohttp.ClientSession() as session:
        got = []
        for _ in range(3):
            async with session.post(sim.base_url + "/completions", json=TEXT_BODY) as r:
                got.append(r.status)
        stats = sim.stats()
    assert got == [500, 500, 429]
    assert stats["faults"] == {"500": 2} and stats["rate_limited"] == 1


async def test_latency_is_applied_and_zero_means_immediate() -> None:
    config = SimConfig(port=0, latency_ms=150, latency_spread_ms=20, latency_per_token_ms=0.1)
    async with running_sim(config) as sim, aiohttp.ClientSession() as session:
        started = time.monotonic()
        results = await asyncio.gather(
            *(session.post(sim.base_url + "/completions", json=TEXT_BODY) for _ in range(10))
        )
        elapsed = time.monotonic() - started
        for r in results:
            assert r.status == 200
            r.release()
    # Served one after another, ten waits of 150 +- 20 ms would take 1.5 s (1.3 s is three
    # deviations below): the bound is that sum, not a guess at how fast a busy machine is.
    assert 0.08 < elapsed < 1.3
