"""``python -m synthd.sim`` as a process: the listening line, serving, and signals."""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
import orjson
import pytest


async def start(*flags: str) -> tuple[asyncio.subprocess.Process, dict[str, object]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "synthd.sim", "--port", "0", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert line, "the simulator exited before listening"
    return proc, orjson.loads(line)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_listens_serves_and_stops_cleanly_on_a_signal(signum: int) -> None:
    proc, event = await start("--rpm", "6000", "--seed", "3")
    try:
        assert event["event"] == "sim_listening"
        port = event["port"]
        assert isinstance(port, int) and port > 0
        assert event["url"] == f"http://127.0.0.1:{port}/v1"
        assert event["pid"] == proc.pid
        async with aiohttp.ClientSession() as session:
            body = {"model": "m", "prompt": "hi"}
            async with session.post(f"{event['url']}/completions", json=body) as resp:
                assert resp.status == 200 and "x-ratelimit-limit-requests" in resp.headers
        proc.send_signal(signum)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stdout is not None and proc.stderr is not None
    assert await proc.stdout.read() == b""  # one line at start-up, none per request
    assert await proc.stderr.read() == b""


async def test_a_taken_port_exits_1() -> None:
    proc, event = await start()
    try:
        other = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "synthd.sim", "--port", str(event["port"]),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(other.communicate(), 20)
        assert other.returncode == 1 and out == b""
        assert orjson.loads(err)["event"] == "sim_failed"
    finally:
        proc.terminate()
        await proc.wait()
