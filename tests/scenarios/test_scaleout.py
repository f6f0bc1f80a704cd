"""Three daemons on one machine sharing a spool, an out folder and a budget through Redis.

Each daemon is a real ``synthd run`` process with its own node name; Redis is a real
``redis-server`` (``tests/redisserver.py``), the provider the simulator. What is checked is
what a user relies on: every item has exactly one record, whoever processed it, when a node
is SIGKILLed mid-run (another finishes its claimed files after its lease runs out) and when
Redis is restarted mid-run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from synthd import config
from synthd.checkpoint import STATE_FILE
from synthd.coordination import lease_key
from synthd.daemon import Daemon
from synthd.sim import SimConfig, running_sim
from tests.helpers import Workdir, sim_process, simple_job, write_provider_config
from tests.redisserver import RedisServer

NODES = ("a", "b", "c")
FILES = 12
LINES = 20  # items per file: a file takes a while, so a killed node leaves claims behind


@pytest.fixture
def sim_url() -> Iterator[str]:
    with sim_process("--latency-ms", "40", "--latency-spread-ms", "20", "--rpm", "3000") as url:
        yield url


@pytest.fixture
def keys(work: Workdir, sim_url: str, redis_server: RedisServer) -> set[str]:
    """Every node's config (the defaults) written and the items spooled: their keys."""
    configure(work, sim_url, redis_server.url)
    return spool_items(work)


def configure(
    work: Workdir, sim_url: str, redis_url: str, grace_s: float = 30, **coordination: Any
) -> None:
    """config/<node>.toml for each node: the same config but for ``[coordination] node``."""
    base = write_provider_config(
        work,
        sim_url,
        simple_job(input='"jsonl"'),
        rpm=3000,
        max_in_flight=8,
        service_keys={"progress_interval_s": 0.5, "grace_s": grace_s},
    ).read_text()
    for node in NODES:
        keys = {"redis_url": redis_url, "node": node, "lease_ttl_s": 1, **coordination}
        table = "\n".join(f"{k} = {orjson.dumps(v).decode()}" for k, v in keys.items())
        text = base.replace("[service]", f"[coordination]\n{table}\n\n[service]", 1)
        (work.path / "config" / f"{node}.toml").write_text(text)


def spool_items(work: Workdir) -> set[str]:
    """FILES jsonl files of LINES items each; returns every item's (file, line) key."""
    d = work.spool("q")
    keys = set()
    for f in range(FILES):
        lines = []
        for n in range(LINES):
            lines.append(orjson.dumps({"text": f"Passage {f}-{n} about the harbour."}))
            keys.add(f"f{f:02d}.jsonl:{n + 1}")
        tmp = d / f"f{f:02d}.jsonl.tmp"  # ignored by the scanner until renamed
        tmp.write_bytes(b"\n".join(lines) + b"\n")
        os.replace(tmp, d / f"f{f:02d}.jsonl")
    return keys


def start_all(work: Workdir, nodes: tuple[str, ...]) -> dict[str, subprocess.Popen[bytes]]:
    """Start the nodes and wait until each takes work, so that all share what is spooled."""
    procs = {n: start(work, n) for n in nodes}
    try:
        wait_for(lambda: all(events(work, n, "started") for n in nodes), "every node started")
    except BaseException:
        stop_all(procs)
        raise
    return procs


def start(
    work: Workdir, node: str, *extra: str, crash_at: str | None = None
) -> subprocess.Popen[bytes]:
    log = open(work.path / f"{node}.log", "ab")  # noqa: SIM115 - the child owns it
    cmd = [sys.executable, "-m", "synthd", "run", "--config", f"config/{node}.toml", *extra]
    env = {k: v for k, v in os.environ.items() if k != "SYNTHD_CRASH_AT"}
    if crash_at is not None:
        env["SYNTHD_CRASH_AT"] = crash_at
    try:
        return subprocess.Popen(cmd, cwd=work.path, stdout=log, stderr=log, env=env)
    finally:
        log.close()


def records(work: Workdir, live: bool = False) -> list[dict[str, Any]]:
    return work.lines("q", live=live)


def keys_of(lines: list[dict[str, Any]]) -> Counter[str]:
    return Counter(f"{r['source']['file']}:{r['source']['line']}" for r in lines)


def events(work: Workdir, node: str, event: str) -> list[dict[str, Any]]:
    path = work.path / f"{node}.log"
    out = []
    for raw in path.read_bytes().splitlines():
        if raw.startswith(b"{"):
            line = orjson.loads(raw)
            if line.get("event") == event:
                out.append(line)
    return out


def wait_for(cond: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"{what} within {timeout_s}s"
        time.sleep(0.1)


def wait_all_done(work: Workdir, keys: set[str]) -> None:
    """Until every item has a record and no claim is left in the spool."""
    wait_for(lambda: keys_of(records(work, live=True)).keys() >= keys, "every item has a record")
    wait_for(lambda: not list((work.spool("q") / ".work").iterdir()), "no claim left")


def stop_all(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        p.wait(timeout=30)


def assert_exactly_once(work: Workdir, keys: set[str]) -> None:
    lines = [*records(work), *work.lines("q", "rejects"), *work.lines("q", "dead")]
    counts = keys_of(lines)
    assert set(counts) == keys
    assert [k for k, n in counts.items() if n != 1] == []
    ids = Counter(r["id"] for r in records(work))
    assert [i for i, n in ids.items() if n != 1] == []
    assert sorted(p.name for p in (work.spool("q") / "done").iterdir()) == sorted(
        f"f{f:02d}.jsonl" for f in range(FILES)
    )
    assert list((work.spool("q") / ".work").iterdir()) == []


def test_three_daemons_share_the_spool_each_item_once(
    work: Workdir, sim_url: str, redis_server: RedisServer
) -> None:
    configure(work, sim_url, redis_server.url)
    procs = start_all(work, NODES)
    try:
        keys = spool_items(work)
        wait_all_done(work, keys)
    finally:
        stop_all(procs)
    assert [p.returncode for p in procs.values()] == [0, 0, 0]
    assert_exactly_once(work, keys)
    shards = sorted(p.name for p in (work.path / "out" / "q").glob("q-*.jsonl*"))
    # Each node writes its own shards, named for it, in the job's one folder.
    assert {name.split("-")[1] for name in shards} <= set(NODES)
    assert len({name.split("-")[1] for name in shards}) >= 2
    for node in NODES:
        assert (work.path / "state" / node / STATE_FILE).exists()
        assert len(events(work, node, "lease_taken")) == 1
    # status adds up every node's checkpoint; the nodes let their leases go on exit.
    shown = status_json(work, "a")
    assert shown["jobs"][0]["items"]["done"] == FILES * LINES
    assert shown["nodes"] == []
    # export reads every node's shards.
    out = work.path / "ft.jsonl"
    cmd = [sys.executable, "-m", "synthd", "export", "q", "--config", "config/b.toml"]
    cmd += ["--format", "chat", "--out", str(out)]
    subprocess.run(cmd, cwd=work.path, capture_output=True, check=True, timeout=60)
    exported = out.read_bytes().count(b"\n") + out.with_name("ft.val.jsonl").read_bytes().count(
        b"\n"
    )
    assert exported == FILES * LINES


def status_json(work: Workdir, node: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "synthd", "status", "--json", "--config", f"config/{node}.toml"]
    out = subprocess.run(cmd, cwd=work.path, capture_output=True, check=True, timeout=30)
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def test_status_shows_every_node_its_lease_and_share(
    work: Workdir, sim_url: str, redis_server: RedisServer
) -> None:
    configure(work, sim_url, redis_server.url)
    procs = start_all(work, ("a", "b"))
    try:
        spool_items(work)
        wait_for(lambda: len(records(work, live=True)) >= 60, "some records")
        shown = status_json(work, "c")  # any node's config reads the same Redis
    finally:
        stop_all(procs)
    nodes = {n["node"]: n for n in shown["nodes"]}
    assert set(nodes) == {"a", "b"}
    for n in nodes.values():
        assert 0 < n["lease_s"] <= 1.0
        assert n["holder"] and n["granted_rpm"] > 0
    assert abs(sum(n["share"] for n in nodes.values()) - 1.0) < 0.01


def test_a_sigkilled_node_is_finished_by_the_others(work: Workdir, keys: set[str]) -> None:
    procs = {n: start(work, n) for n in NODES}
    try:
        # Kill b once it has written records and still holds claimed files.
        def b_busy() -> bool:
            live = records(work, live=True)
            mine = [r for r in live if r["source"]["claim"] in claims_of(work, "b")]
            return len(mine) >= 5 and bool(claims_of(work, "b") & claimed_now(work))

        wait_for(b_busy, "node b busy with claimed files")
        procs["b"].send_signal(signal.SIGKILL)
        procs["b"].wait(timeout=10)
        left = claims_of(work, "b") & claimed_now(work)
        assert left, "b held no claim when killed: the test proves nothing"
        wait_all_done(work, keys)
    finally:
        stop_all(procs)
    assert_exactly_once(work, keys)
    takers = [n for n in ("a", "c") if events(work, n, "takeover_done")]
    assert takers and all(
        e["dead_node"] == "b" for n in takers for e in events(work, n, "takeover_done")
    )
    # One takeover, and another only after a taker lost b's lease (renewals late on a
    # loaded machine) and stopped: see the test below.
    starts = sum(len(events(work, n, "takeover_start")) for n in ("a", "c"))
    assert starts == 1 + sum(len(events(work, n, "takeover_lease_lost")) for n in ("a", "c"))


def take_lease(redis_server: RedisServer, node: str, *expiry: str) -> None:
    """Another process takes ``node``'s lease, as redis-cli would."""
    lease = ["SET", lease_key(node), "another process", *expiry]
    subprocess.run(
        ["redis-cli", "-p", str(redis_server.port), *lease], check=True, capture_output=True
    )


def test_a_takeover_whose_lease_is_taken_stops_then_the_node_is_taken_over_again(
    work: Workdir, redis_server: RedisServer
) -> None:
    """a takes dead b over; b's lease is then taken from it (as when a's renewals come too
    late): a stops finishing b's files, so that two never write them at once, and takes b
    over again once that lease runs out. Every item once."""
    with sim_process("--latency-ms", "40", "--rpm", "600") as url:  # a file takes seconds
        configure(work, url, redis_server.url)
        keys = spool_items(work)
        procs = {n: start(work, n) for n in ("a", "b")}
        try:
            kill_holding_a_claim(work, procs, "b")
            wait_for(lambda: bool(events(work, "a", "takeover_start")), "a takes b over")
            take_lease(redis_server, "b", "PX", "2000")
            wait_for(lambda: bool(events(work, "a", "takeover_lease_lost")), "a fenced out")
            assert not events(work, "a", "takeover_done"), "b was finished first: proves nothing"
            wait_all_done(work, keys)
        finally:
            stop_all(procs)
    assert_exactly_once(work, keys)
    # Taken over again after each lease lost: the one taken here, and any a lost by itself
    # (its renewals late on a loaded machine).
    lost = [e["node"] for e in events(work, "a", "takeover_lease_lost")]
    assert [e["dead_node"] for e in events(work, "a", "takeover_start")] == ["b"] * (1 + len(lost))
    assert [e["dead_node"] for e in events(work, "a", "takeover_done")] == ["b"]


def test_without_takeover_a_dead_nodes_claims_wait_for_it(
    work: Workdir, sim_url: str, redis_server: RedisServer
) -> None:
    configure(work, sim_url, redis_server.url, takeover=False)
    keys = spool_items(work)
    procs = {n: start(work, n) for n in ("a", "b")}
    try:
        kill_holding_a_claim(work, procs, "b")
        left = claims_of(work, "b") & claimed_now(work)
        assert left, "b held no claim when killed: the test proves nothing"
        # a finishes everything else; b's claims stay, well past b's lease (1 s).
        wait_for(lambda: claimed_now(work) == left and not pending(work), "a idle")
        time.sleep(3)
        assert claims_of(work, "b") & claimed_now(work) == left
        assert not events(work, "a", "takeover_start")
        procs["b"] = start(work, "b")  # back: it finishes its own
        wait_all_done(work, keys)
    finally:
        stop_all(procs)
    assert_exactly_once(work, keys)


def kill_holding_a_claim(
    work: Workdir, procs: dict[str, subprocess.Popen[bytes]], node: str
) -> None:
    """SIGKILL ``node`` once it holds a claimed file, and wait for it to be gone."""
    wait_for(lambda: bool(claims_of(work, node) & claimed_now(work)), f"{node} holds a claim")
    procs[node].send_signal(signal.SIGKILL)
    procs[node].wait(timeout=10)


def pending(work: Workdir) -> list[str]:
    return [p.name for p in work.spool("q").glob("*.jsonl")]


def test_a_taker_killed_mid_takeover_is_taken_over_in_turn(work: Workdir, keys: set[str]) -> None:
    """b is SIGKILLed; a takes it over and is killed itself right after b's recovery (the
    crash point ``takeover_recovered``); c, started then, finishes both, each item once."""
    procs = {
        "a": start(work, "a", crash_at="takeover_recovered:1"),
        "b": start(work, "b"),
    }
    try:
        kill_holding_a_claim(work, procs, "b")
        assert procs["a"].wait(timeout=60) == -signal.SIGKILL
        assert [e["dead_node"] for e in events(work, "a", "takeover_start")] == ["b"]
        procs["c"] = start(work, "c")
        wait_all_done(work, keys)
    finally:
        stop_all(procs)
    assert_exactly_once(work, keys)
    assert sorted(e["dead_node"] for e in events(work, "c", "takeover_done")) == ["a", "b"]


def test_a_node_stopped_with_claims_left_hands_them_over(
    work: Workdir, sim_url: str, redis_server: RedisServer
) -> None:
    """SIGTERM with no grace: the drain is cut short and claimed files are left unfinished;
    the node lets its lease go marked for takeover, and another node finishes them."""
    configure(work, sim_url, redis_server.url, grace_s=0)
    keys = spool_items(work)
    procs = {n: start(work, n) for n in ("a", "b")}
    try:
        wait_for(lambda: bool(claims_of(work, "a") & claimed_now(work)), "a holds a claim")
        procs["a"].send_signal(signal.SIGTERM)
        assert procs["a"].wait(timeout=30) == 0
        released = events(work, "a", "lease_released")
        assert released and released[0]["work_left"] is True
        wait_all_done(work, keys)
    finally:
        stop_all(procs)
    assert_exactly_once(work, keys)
    assert [e["dead_node"] for e in events(work, "b", "takeover_done")] == ["a"]


def claims_of(work: Workdir, node: str) -> set[str]:
    """The claim ids node ``node`` made, from its checkpoint."""
    path = work.path / "state" / node / STATE_FILE
    if not path.exists():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT claim FROM sources")}
    except sqlite3.OperationalError:
        return set()
    finally:
        db.close()


def claimed_now(work: Workdir) -> set[str]:
    work_dir = work.spool("q") / ".work"
    if not work_dir.exists():
        return set()
    return {p.name.split("-", 1)[0] for p in work_dir.iterdir()}


def test_redis_restarted_mid_run_loses_and_doubles_nothing(
    work: Workdir, sim_url: str, redis_server: RedisServer, keys: set[str]
) -> None:
    procs = {n: start(work, n) for n in NODES}
    try:
        wait_for(lambda: len(records(work, live=True)) >= 40, "some records")
        redis_server.stop()
        time.sleep(1.5)
        redis_server.start()
        wait_all_done(work, keys)
    finally:
        stop_all(procs)
    assert_exactly_once(work, keys)
    for node in NODES:
        assert procs[node].returncode == 0
        downs = events(work, node, "redis_down")
        # Logged once per change, not once per failed call.
        assert len(downs) <= 1
        assert len(events(work, node, "redis_back")) == len(downs)
    assert any(events(work, n, "redis_down") for n in NODES)
    assert not any(events(work, n, "takeover_start") for n in NODES)
    # No 429 storm when it came back: the shared bucket starts empty.
    with urllib.request.urlopen(sim_url.removesuffix("/v1") + "/stats", timeout=10) as resp:
        stats = orjson.loads(resp.read())
    assert stats["by_status"].get("429", 0) <= 0.01 * stats["requests"]


async def test_healthz_and_metrics_show_redis_down_and_the_mode(
    work: Workdir, redis_server: RedisServer
) -> None:
    """In-process daemon over real sockets: Redis lost, then back, as /healthz and
    /metrics tell it, with one log line per change."""
    async with running_sim(SimConfig(port=0)) as sim:
        configure(work, sim.base_url, redis_server.url)
        text = (work.path / "config" / "a.toml").read_text()
        text = text.replace('listen = ""', 'listen = "127.0.0.1:0"')
        text = text.replace('on_redis_down = "pause"', "")
        text = text.replace("[coordination]", '[coordination]\non_redis_down = "split"', 1)
        path = work.path / "config" / "a.toml"
        path.write_text(text)
        daemon = Daemon(config.load(path), handle_signals=False)
        with capture_logs() as logs:
            task = asyncio.create_task(daemon.run())
            await asyncio.wait_for(daemon.ready.wait(), 30)
            base = f"http://127.0.0.1:{daemon.http_port}"
            async with aiohttp.ClientSession() as http:
                shown = await (await http.get(f"{base}/healthz")).json()
                assert shown["coordination"]["redis"] == "up"
                assert shown["coordination"]["budget"] == "shared"
                redis_server.stop()
                coordinator = daemon.coordinator
                assert coordinator is not None
                await wait_async(lambda: not coordinator.stats.redis_up)
                shown = await (await http.get(f"{base}/healthz")).json()
                assert shown["status"] == "ok"  # a lost Redis is not a reason to restart
                assert shown["coordination"]["redis"] == "down"
                assert shown["coordination"]["budget"] == "split"
                metrics = await (await http.get(f"{base}/metrics")).text()
                assert 'synthd_redis_up{node="a"} 0.0' in metrics
                assert 'synthd_shared_budget_mode{mode="split",node="a"} 1.0' in metrics
                redis_server.start()
                await wait_async(lambda: coordinator.stats.redis_up)
                shown = await (await http.get(f"{base}/healthz")).json()
                assert shown["coordination"]["redis"] == "up"
            daemon.stop()
            assert await asyncio.wait_for(task, 30) == 0
    downs = [e for e in logs if e["event"] == "redis_down"]
    assert len(downs) == 1 and downs[0]["action"] == "split"
    assert len([e for e in logs if e["event"] == "redis_back"]) == 1


async def wait_async(cond: Any, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_a_node_whose_lease_was_taken_stops_at_once(
    work: Workdir, sim_url: str, redis_server: RedisServer
) -> None:
    """A node frozen past its TTL may find its lease taken over: it must stop writing."""
    configure(work, sim_url, redis_server.url)
    proc = start(work, "a")
    try:
        wait_for(lambda: bool(events(work, "a", "lease_taken")), "a started")
        take_lease(redis_server, "a")
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    failed = events(work, "a", "daemon_failed")
    assert failed and "lease" in failed[0]["error"]


def test_a_429_seen_by_one_node_pauses_the_others(work: Workdir, redis_server: RedisServer) -> None:
    """One spurious 429 (retry-after 1 s): the node that got it cuts and pauses, and so
    does the other, which never saw it, through the shared pause key."""
    with sim_process("--latency-ms", "40", "--spurious-429-at", "60") as url:
        configure(work, url, redis_server.url)
        procs = start_all(work, ("a", "b"))
        try:
            keys = spool_items(work)
            wait_all_done(work, keys)
        finally:
            stop_all(procs)
    assert_exactly_once(work, keys)
    cuts = {n: events(work, n, "rate_cut") for n in procs}
    assert all(cuts.values()), cuts  # both cut their rate: one 429, seen by one node
