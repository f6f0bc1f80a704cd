"""The HTTP client: status and body mapped to our errors; requests to the simulator."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from synthd.client import Client, make_client, status_error
from synthd.config import ProviderConfig
from synthd.errors import (
    ConnectionLost,
    MalformedResponse,
    QuotaExhausted,
    RateLimited,
    Rejected,
    ServerError,
    Timeout,
)
from synthd.sim import SimConfig, running_sim


def test_a_429_is_throttling_unless_the_quota_is_used_up() -> None:
    too_many = b'{"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}'
    quota = b'{"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}'  # noqa: E501
    too_large = b'{"error": {"message": "Request too large for m on tokens per min (TPM)"}}'
    assert isinstance(status_error(429, too_many, {"retry-after": "2"}), RateLimited)
    assert isinstance(status_error(429, quota, {}), QuotaExhausted)
    assert isinstance(status_error(429, too_large, {}), Rejected)


# -- requests over real sockets to the simulator ----------------------------------------------


def chat_body(content: str = "Ask one question about harbours.", max_tokens: int = 20) -> bytes:
    return orjson.dumps(
        {
            "model": "sim-1",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
        }
    )


@contextlib.asynccontextmanager
async def started(base_url: str, transport: str = "http", **cfg: Any) -> AsyncIterator[Client]:
    settings = {"request_timeout_s": 5, "max_in_flight": 4, **cfg}
    client = make_client(
        ProviderConfig(base_url=base_url, transport=transport, **settings), "sk-test"
    )
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.parametrize("transport", ["http", "sdk"])
async def test_a_chat_completion_comes_back_parsed_with_its_usage(transport: str) -> None:
    async with running_sim(SimConfig(port=0)) as sim, started(sim.base_url, transport) as client:
        reply, _ = await client.complete("chat", chat_body())
        assert await client.probe() and await client.serving()
        stats = sim.stats()
    assert stats["by_status"] == {"200": 1}
    assert len(reply.choices) == 1 and reply.choices[0].text
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage_reported and reply.prompt_tokens > 0 and reply.completion_tokens > 0


async def test_the_rate_headers_of_a_reply_are_parsed() -> None:
    sim_cfg = SimConfig(port=0, rpm=600, tpm=100_000)
    async with running_sim(sim_cfg) as sim, started(sim.base_url) as client:
        _, rate = await client.complete("chat", chat_body())
    assert rate is not None
    assert rate.limit_requests == 600 and rate.limit_tokens == 100_000
    assert rate.remaining_requests is not None and rate.remaining_requests < 600


async def test_a_429_over_the_limit_raises_rate_limited_with_the_headers() -> None:
    # 1 request a minute over a minute's window: the second request is refused.
    sim_cfg = SimConfig(port=0, rpm=1, tpm=1_000_000, limit_window_s=60)
    async with running_sim(sim_cfg) as sim, started(sim.base_url) as client:
        await client.complete("chat", chat_body())
        with pytest.raises(RateLimited) as caught:
            await client.complete("chat", chat_body())
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 0
    assert caught.value.rate is not None and caught.value.rate.limit_requests == 1


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("p_500", ServerError),
        ("p_503", ServerError),
        ("p_html", ServerError),
        ("p_drop", ConnectionLost),
        ("p_truncate", MalformedResponse),
        ("p_empty_choices", MalformedResponse),
    ],
)
async def test_a_provider_fault_becomes_one_of_our_errors(fault: str, error: type) -> None:
    async with running_sim(SimConfig(port=0, **{fault: 1.0})) as sim, started(sim.base_url) as c:
        with pytest.raises(error) as caught:
            await c.complete("chat", chat_body())
    assert "sk-test" not in str(caught.value)


async def test_no_reply_within_the_timeout_is_a_timeout() -> None:
    sim_cfg = SimConfig(port=0, p_hang=1.0, hang_s=5)
    async with running_sim(sim_cfg) as sim, started(sim.base_url, request_timeout_s=0.3) as c:
        with pytest.raises(Timeout):
            await c.complete("chat", chat_body())


async def test_nothing_listening_is_a_lost_connection_and_a_failed_probe() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with started(f"http://127.0.0.1:{port}/v1") as client:
        assert not await client.probe()
        with pytest.raises(ConnectionLost):
            await client.complete("chat", chat_body())


async def test_a_completions_request_goes_to_the_completions_endpoint() -> None:
    body = orjson.dumps({"model": "sim-1", "prompt": "Three questions:", "max_tokens": 20})
    async with running_sim(SimConfig(port=0)) as sim, started(sim.base_url) as client:
        reply, _ = await client.complete("completions", body)
    assert len(reply.choices) == 1 and reply.choices[0].text
