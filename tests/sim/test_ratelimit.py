"""Rate limits over HTTP: 429s with OpenAI's body and headers, and silence below the limits."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import openai
import orjson
import pytest

from synthd.sim import SimConfig, running_sim
from tests.helpers import CHAT, chat, post

RESET = re.compile(r"^(?:\d+h)?(?:\d+m)?(?:\d+(?:\.\d+)?s|\d+ms)$")
LIMIT_HEADERS = {
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
}


async def test_a_burst_over_rpm_gets_429s_with_headers() -> None:
    # 6 rpm over a 100 s window: 10 requests of burst, then 0.1 more per second.
    cfg = SimConfig(port=0, rpm=6, tpm=1_000_000, limit_window_s=100)
    async with running_sim(cfg) as sim, aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(post(session, sim, chat()) for _ in range(15)))
        stats = sim.stats()
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 10 + [429] * 5
    for status, headers, body in results:
        assert set(headers) >= LIMIT_HEADERS
        assert headers["x-ratelimit-limit-requests"] == "6"
        assert headers["x-ratelimit-limit-tokens"] == "1000000"
        assert RESET.match(headers["x-ratelimit-reset-requests"])
        assert RESET.match(headers["x-ratelimit-reset-tokens"])
        if status == 429:
            assert body == {
                "error": {
                    "message": body["error"]["message"],
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            }
            assert body["error"]["message"].startswith("Rate limit reached for requests")
            assert headers["x-ratelimit-remaining-requests"] == "0"
            # 1 request missing at 0.1 per second: about 10 s.
            assert headers["retry-after"] == "10"
            assert 9900 < int(headers["retry-after-ms"]) <= 10000
    assert stats["rate_limited"] == 5 and stats["by_status"] == {"200": 10, "429": 5}
    assert stats["accepted_tokens"] == 10 * (7 + 10)  # refused requests are not charged


async def test_below_the_limits_nothing_is_refused() -> None:
    cfg = SimConfig(port=0, rpm=6000, tpm=600_000)  # 100 requests, 10 000 tokens per second
    async with running_sim(cfg) as sim, aiohttp.ClientSession() as session:
        remaining = []
        for _ in range(50):
            status, headers, _ = await post(session, sim, chat(max_tokens=100))
            assert status == 200
            remaining.append(int(headers["x-ratelimit-remaining-requests"]))
        assert sim.stats()["rate_limited"] == 0
    # The bucket refills at 100/s while we send: on a busy machine a slow request can
    # let it gain one back, so the count only has to stay within what was spent.
    assert remaining[0] == 99 and all(50 <= r <= 99 for r in remaining)


async def test_tokens_limit_and_retry_after_is_enough() -> None:
    cfg = SimConfig(port=0, tpm=6000)  # 100 tokens per 1 s window, 100 per second
    async with running_sim(cfg) as sim, aiohttp.ClientSession() as session:
        status, headers, _ = await post(session, sim, chat(max_tokens=53))  # 60 tokens
        assert status == 200 and headers["x-ratelimit-remaining-tokens"] == "40"
        assert "x-ratelimit-limit-requests" not in headers  # rpm unlimited: no request headers
        status, headers, body = await post(session, sim, chat(max_tokens=53))
        assert status == 429 and body["error"]["type"] == "tokens"
        assert body["error"]["message"].startswith("Rate limit reached for tokens")
        wait_ms = int(headers["retry-after-ms"])
        assert 0 < wait_ms <= 200 and headers["retry-after"] == "1"
        await asyncio.sleep(wait_ms / 1000)
        status, _, _ = await post(session, sim, chat(max_tokens=53))
        assert status == 200


async def test_keys_have_their_own_buckets_and_no_key_is_anonymous() -> None:
    cfg = SimConfig(port=0, rpm=6, limit_window_s=10)  # one request per key
    async with running_sim(cfg) as sim, aiohttp.ClientSession() as session:
        assert (await post(session, sim, chat(), key="a"))[0] == 200
        assert (await post(session, sim, chat(), key="a"))[0] == 429
        assert (await post(session, sim, chat(), key="b"))[0] == 200
        url = sim.base_url + CHAT
        async with session.post(url, data=orjson.dumps(chat())) as resp:
            assert resp.status == 200
        async with session.post(url, data=orjson.dumps(chat())) as resp:
            assert resp.status == 429


async def test_a_request_larger_than_tpm_is_refused_for_good() -> None:
    async with running_sim(SimConfig(port=0, tpm=600)) as sim, aiohttp.ClientSession() as session:
        status, headers, body = await post(session, sim, chat(max_tokens=1000))
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["message"].startswith("Request too large")
    assert "retry-after" not in headers and "x-ratelimit-limit-tokens" in headers


async def test_the_openai_sdk_sees_a_rate_limit_error() -> None:
    async with running_sim(SimConfig(port=0, rpm=6, limit_window_s=10)) as sim:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-a", max_retries=0)
        async with client:
            await client.completions.create(model="m", prompt="hi")
            with pytest.raises(openai.RateLimitError) as exc:
                await client.completions.create(model="m", prompt="hi")
    assert exc.value.code == "rate_limit_exceeded" and exc.value.type == "requests"
    assert int(exc.value.response.headers["retry-after"]) >= 1


async def test_unlimited_sends_no_ratelimit_headers() -> None:
    async with running_sim(SimConfig(port=0)) as sim, aiohttp.ClientSession() as session:
        status, headers, _ = await post(session, sim, chat())
    assert status == 200 and not {h for h in headers if h.startswith("x-ratelimit")}
