"""The simulator's Files and Batch APIs through the ``openai`` SDK: its types are the schema."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest
from openai.types import Batch

from synthd.sim import SimConfig, running_sim


def lines(n: int, start: int = 0) -> bytes:
    rows = []
    for i in range(start, start + n):
        body = {
            "model": "sim-1",
            "messages": [{"role": "user", "content": f"Write questions about topic {i}."}],
            "max_tokens": 30,
        }
        rows.append(
            {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        )
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


@pytest.fixture
async def make_client() -> AsyncIterator[Any]:
    clients: list[openai.AsyncOpenAI] = []

    def make(url: str) -> openai.AsyncOpenAI:
        c = openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()


async def run_batch(client: openai.AsyncOpenAI, data: bytes, key: str = "k1") -> Batch:
    return await finish(client, await create(client, data, key))


async def create(client: openai.AsyncOpenAI, data: bytes, key: str) -> Batch:
    f = await client.files.create(file=("in.jsonl", data), purpose="batch")
    b = await client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"synthd": key},
    )
    assert b.status == "validating"
    return b


async def finish(client: openai.AsyncOpenAI, b: Batch) -> Batch:
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        await asyncio.sleep(0.02)
        b = await client.batches.retrieve(b.id)
    return b


async def content(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    raw = (await client.files.content(file_id)).content
    return [orjson.loads(x) for x in raw.splitlines()]


@pytest.fixture
async def sim_cfg(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    cfg = SimConfig(**{"port": 0, "batch_time_s": 0.05, **getattr(request, "param", {})})
    async with running_sim(cfg) as s:
        yield s.base_url


async def test_a_batch_completes_with_every_line_once(sim_cfg: str, make_client: Any) -> None:
    client = make_client(sim_cfg)
    b = await run_batch(client, lines(20))
    assert b.status == "completed" and b.request_counts is not None
    assert (b.request_counts.total, b.request_counts.completed) == (20, 20)
    out = await content(client, b.output_file_id)
    assert sorted(r["custom_id"] for r in out) == sorted(f"c{i}" for i in range(20))
    assert all(r["response"]["status_code"] == 200 for r in out)
    assert out[0]["response"]["body"]["choices"][0]["message"]["content"]
    uploads = [f async for f in client.files.list(purpose="batch")]
    assert [f.id for f in uploads] == [b.input_file_id]
    page = await client.batches.list(limit=10)
    assert page.data[0].id == b.id and page.data[0].metadata == {"synthd": "k1"}
    assert (await client.files.delete(b.output_file_id or "")).deleted


@pytest.mark.parametrize("sim_cfg", [{"batch_p_line_fail": 0.3}], indirect=True)
async def test_failed_lines_go_to_the_error_file(sim_cfg: str, make_client: Any) -> None:
    client = make_client(sim_cfg)
    b = await run_batch(client, lines(50))
    out, err = await content(client, b.output_file_id), await content(client, b.error_file_id)
    assert err and all(e["response"]["status_code"] == 500 for e in err)
    assert len(out) + len(err) == 50
    assert {r["custom_id"] for r in out}.isdisjoint({r["custom_id"] for r in err})


@pytest.mark.parametrize("sim_cfg", [{"batch_expire_every": 1}], indirect=True)
async def test_an_expired_batch_returns_what_finished(sim_cfg: str, make_client: Any) -> None:
    client = make_client(sim_cfg)
    b = await run_batch(client, lines(10))
    assert b.status == "expired"
    out, err = await content(client, b.output_file_id), await content(client, b.error_file_id)
    assert len(out) == 5 and {e["error"]["code"] for e in err} == {"batch_expired"}


@pytest.mark.parametrize(
    "sim_cfg", [{"batch_enqueued_tokens": 500, "batch_time_s": 1.5}], indirect=True
)
async def test_the_enqueued_token_limit_fails_a_batch_over_it(
    sim_cfg: str, make_client: Any
) -> None:
    client = make_client(sim_cfg)
    first = await create(client, lines(8), "k1")  # enqueued, in progress ...
    second = await run_batch(client, lines(8, 8), "k2")  # ... so this one is over the limit
    assert second.status == "failed" and second.errors is not None and second.errors.data
    assert second.errors.data[0].code == "token_limit_exceeded"
    assert (await finish(client, first)).status == "completed"
    again = await run_batch(client, lines(8, 8), "k3")  # room again once the first is done
    assert again.status == "completed"


@pytest.mark.parametrize("sim_cfg", [{"batch_fail_every": 1}], indirect=True)
async def test_a_failed_batch_has_no_output(sim_cfg: str, make_client: Any) -> None:
    b = await run_batch(make_client(sim_cfg), lines(3))
    assert b.status == "failed" and b.output_file_id is None


async def test_list_pages_with_after(sim_cfg: str, make_client: Any) -> None:
    client = make_client(sim_cfg)
    made = [await run_batch(client, lines(1, i), f"k{i}") for i in range(5)]
    first = await client.batches.list(limit=2)
    rest = await client.batches.list(limit=10, after=first.data[-1].id)
    ids = [b.id for b in first.data] + [b.id for b in rest.data]
    assert ids == [b.id for b in reversed(made)]


async def test_a_bad_line_fails_validation(sim_cfg: str, make_client: Any) -> None:
    client = make_client(sim_cfg)
    b = await run_batch(client, lines(2) + b'{"custom_id": "x"}\n')
    assert b.status == "failed" and b.errors is not None and b.errors.data
