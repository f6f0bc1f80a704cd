"""The API key: never in the config file, never in anything synthd writes or serves.

A real daemon subprocess runs with a distinctive key in its environment against
a faulty simulator (so errors, retries, dead letters, bad input and failed
files all happen) with its HTTP endpoint on; then every file it wrote, its log,
``/metrics``, ``/healthz``, ``synthd status --json`` and the state database's
bytes are searched for the key and for its random core.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from synthd.sim import SimConfig, running_sim
from tests.helpers import GOOD, Workdir, drop_good, open_log, simple_job, wait_until

SYNTHD = [sys.executable, "-m", "synthd"]


def new_key() -> tuple[str, str]:
    """A key no test data could contain by chance, and its random core."""
    core = secrets.token_hex(16)
    return f"sk-proj-synthdleak{core}XyZ", core


def run_cli(work: Workdir, *args: str, key: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "OPENAI_API_KEY": key}
    return subprocess.run([*SYNTHD, *args], cwd=work.path, env=env, capture_output=True, timeout=60)


def config_with(work: Workdir, where: str, key: str) -> None:
    base = work.write_config("http://127.0.0.1:9/v1", simple_job("q"))
    text = base.read_text()
    if where == "provider.api_key":
        text = text.replace("[provider]\n", f'[provider]\napi_key = "{key}"\n')
    elif where == "providers.backup.token":
        text += f'\n[providers.backup]\ntoken = "{key}"\n'
    else:  # jobs.q.extra.Authorization: a header smuggled into the request body
        text += f'\n[jobs.q.extra]\nAuthorization = "Bearer {key}"\n'
    base.write_text(text)


@pytest.mark.parametrize(
    "where", ["provider.api_key", "providers.backup.token", "jobs.q.extra.Authorization"]
)
def test_a_key_written_in_the_config_is_refused(work: Workdir, where: str) -> None:
    key, core = new_key()
    config_with(work, where, key)
    result = run_cli(work, "run", "--config", "config/synthd.toml", "--once", key=key)
    assert result.returncode == 2
    message = result.stderr.decode()
    assert f"config/synthd.toml: {where}: an API key must not be written" in message
    assert "environment variable" in message and "api_key_env" in message
    out = result.stdout + result.stderr
    assert core.encode() not in out, "the refusal repeats the key"
    assert not (work.path / "state").exists(), "refused before anything started"


def test_a_key_pasted_as_the_variable_name_is_not_echoed(work: Workdir) -> None:
    key, core = new_key()
    work.write_config(
        "https://api.example.com/v1", simple_job("q"), provider=f'api_key_env = "{key}"'
    )
    result = run_cli(work, "run", "--config", "config/synthd.toml", "--once", key="")
    assert result.returncode == 2
    assert core.encode() not in result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def everything_written(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (spool, out, state, log): path -> bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def drop_bad_input(work: Workdir) -> None:
    spool = work.spool("q")
    (spool / "binary.txt").write_bytes(b"\x00\x01\x02 not text")
    (spool / "mixed.jsonl").write_bytes(
        b'{"text": "a good jsonl line"}\n{broken\n{"other": 1}\n{"text": "another good one"}\n'
    )


async def run_daemon_and_collect(work: Workdir, key: str, items: int) -> dict[str, bytes]:
    """Start the daemon with ``key`` set, let it finish the spool, read every
    surface it offers, stop it with SIGTERM; every surface and file's bytes."""
    port = free_port()
    cfg = work.path / "config" / "synthd.toml"
    cfg.write_text(cfg.read_text().replace('listen = ""', f'listen = "127.0.0.1:{port}"'))
    env = {**os.environ, "OPENAI_API_KEY": key}
    with open_log(work) as log:
        proc = await asyncio.create_subprocess_exec(
            *SYNTHD, "run", "--config", "config/synthd.toml", cwd=work.path, env=env,
            stdout=log, stderr=log,
        )  # fmt: skip
    surfaces: dict[str, bytes] = {}
    try:

        def finished() -> bool:
            assert proc.returncode is None, (work.path / "daemon.log").read_text()
            lines = [work.lines("q", s) for s in ("records", "rejects", "dead")]
            work_dir = work.spool("q") / ".work"
            return sum(map(len, lines)) == items and not any(work_dir.iterdir())

        await wait_until(finished, 30)
        async with aiohttp.ClientSession() as http:
            for path in ("metrics", "healthz", "readyz"):
                async with http.get(f"http://127.0.0.1:{port}/{path}") as resp:
                    surfaces[f"GET /{path}"] = await resp.read()
        status = await asyncio.create_subprocess_exec(
            *SYNTHD, "status", "--json", "--config", "config/synthd.toml",
            "--metrics-url", f"http://127.0.0.1:{port}/metrics",
            cwd=work.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(status.communicate(), 30)
        assert status.returncode == 0, err.decode()
        surfaces["synthd status --json"] = out + err
        assert orjson.loads(out)["jobs"][0]["in_flight"] == 0, "status read the live daemon"
        # While it runs the state is a database plus its WAL and shared-memory files.
        live = everything_written(work.path)
        assert "state/synthd.db-wal" in live
        surfaces |= {f"{path} (running)": data for path, data in live.items()}
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert b"synthd_requests_total" in surfaces["GET /metrics"]
    return surfaces | everything_written(work.path)


async def test_the_key_never_leaks_into_output_logs_metrics_status_or_state(
    work: Workdir,
) -> None:
    key, core = new_key()
    faults = SimConfig(
        port=0,
        rpm=10**9,  # limits on: the simulator keeps a bucket per key it sees
        p_500=0.1,
        p_html=0.1,
        p_drop=0.05,
        p_truncate=0.05,
        p_empty_choices=0.1,
        p_content_filter=0.05,
        fault_seed=5,
    )
    async with running_sim(faults) as sim:
        work.write_config(
            sim.base_url, simple_job("q", input='"lines"'), provider="max_attempts = 2"
        )
        (work.spool("q") / "topics.txt").write_text("\n".join(f"topic {i}" for i in range(150)))
        drop_good(work.spool("q"))
        drop_bad_input(work)
        found = await run_daemon_and_collect(work, key, 150 + len(GOOD) + 4)
        assert list(sim.sim.limiter._keys) == [key], "the key was sent, and only it"
    # Errors of every kind happened, so their messages were written somewhere.
    assert work.lines("q", "dead") and work.lines("q", "rejects")
    assert (work.spool("q") / "failed" / "binary.txt.error.json").exists()
    assert any(path.startswith("state/") for path in found)
    leaks = [where for where, data in found.items() if core.encode() in data]
    assert leaks == []


async def test_a_key_echoed_by_the_provider_is_not_written(work: Workdir) -> None:
    """A provider (or a proxy) that repeats the Authorization header in its errors."""
    key, core = new_key()

    async def echo(request: web.Request) -> web.Response:
        sent = request.headers.get("Authorization", "")
        message = f"Incorrect API key provided: {sent.removeprefix('Bearer ')}."
        return web.json_response({"error": {"message": message}}, status=401)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        work.write_config(base_url, simple_job("q"))
        drop_good(work.spool("q"))
        found = await run_daemon_and_collect(work, key, len(GOOD))
    finally:
        await runner.cleanup()
    dead = work.lines("q", "dead")
    assert len(dead) == len(GOOD) and all("HTTP 401" in d["error"] for d in dead)
    log = found["daemon.log"]
    assert core.encode() not in log, "the log redacts"
    leaks = [where for where, data in found.items() if core.encode() in data]
    assert leaks == []
