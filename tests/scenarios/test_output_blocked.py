"""The output cannot take writes: disk full, file too large, folder read-only.

synthd must then stop sending (a completion it cannot write is paid for and
thrown away), log ``output_blocked`` once, keep retrying the batch it holds,
and carry on when the output takes writes again (``output_resumed``). Each test
ends with every item recorded exactly once and every request the simulator
answered kept: its request count equals the number of items.

Root ignores permission bits and quotas, so the blocks are made honestly:
``RLIMIT_FSIZE`` on a daemon subprocess (writes past N bytes fail with EFBIG),
a daemon subprocess without ``CAP_DAC_OVERRIDE`` (so a mode-555 folder refuses
it), and a small tmpfs (true ENOSPC) where mounting is allowed.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from synthd import config
from synthd.daemon import Daemon
from synthd.errors import WriterFailed
from synthd.sim import RunningSim, SimConfig, running_sim
from tests.helpers import (
    GOOD,
    Workdir,
    assert_good_once,
    drop_good,
    open_log,
    permission_bits_apply,
    simple_job,
    wait_until,
    without_dac_override,
    write_provider_config,
)

ITEMS = 40
# 4 senders, 100 ms a reply: ~40 requests/s, so the 40 items take about a second
# of sending and the output blocks while most of them are still unsent.
PACED = SimConfig(port=0, latency_ms=100)
RUN = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml", "--once"]


def big_topics(spool: Path, width: int) -> None:
    """One lines file of ITEMS contexts of ``width`` characters: large records."""
    filler = "the harbour at dawn, the cranes, the gulls and the tide; " * (width // 57 + 1)
    rows = [f"item {i:03d}: {filler[:width]}" for i in range(ITEMS)]
    (spool / "big.txt").write_text("\n".join(rows) + "\n")


def write_config(work: Workdir, sim: RunningSim, **job: Any) -> None:
    write_provider_config(work, sim.base_url, simple_job("q", **job), max_in_flight=4)


def assert_all_once(work: Workdir, requests: int) -> None:
    """Every item recorded once, every answered request kept, no torn line."""
    records = work.lines("q")
    per_item = Counter((r["source"]["file"], r["source"]["seq"]) for r in records)
    assert per_item == {("big.txt", i): 1 for i in range(ITEMS)} | {(n, 0): 1 for n in GOOD}
    assert requests == ITEMS + len(GOOD), "a completion was requested twice or thrown away"
    assert not work.lines("q", "rejects") and not work.lines("q", "dead")
    for shard in (work.path / "out" / "q").glob("*.jsonl*"):
        assert shard.read_bytes().endswith(b"\n")
    assert_good_once(work)


def assert_resumed_once(work: Workdir, requests: int, error: str) -> None:
    """Blocked once (for ``error``), resumed once, and then every item recorded once."""
    (blocked,) = daemon_events(work, "output_blocked")
    assert error in blocked["error"]
    assert len(daemon_events(work, "output_resumed")) == 1
    assert_all_once(work, requests)


def daemon_events(work: Workdir, event: str) -> list[dict[str, Any]]:
    path = work.path / "daemon.log"
    if not path.exists():
        return []
    return [
        e
        for raw in path.read_bytes().splitlines()
        if raw.startswith(b"{") and (e := orjson.loads(raw))["event"] == event
    ]


async def wait_blocked(work: Workdir, proc: asyncio.subprocess.Process) -> None:
    def blocked_or_gone() -> bool:
        return bool(daemon_events(work, "output_blocked")) or proc.returncode is not None

    await wait_until(blocked_or_gone, 60)  # a hang guard: a loaded machine starts slowly
    assert proc.returncode is None, (work.path / "daemon.log").read_text()[-3000:]


@asynccontextmanager
async def spawned(
    work: Workdir, preexec: Callable[[], None]
) -> AsyncIterator[asyncio.subprocess.Process]:
    """The daemon as a subprocess; killed on the way out if a check failed first."""
    with open_log(work) as log:
        proc = await asyncio.create_subprocess_exec(
            *RUN, cwd=work.path, stdout=log, stderr=log, preexec_fn=preexec
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def assert_sending_paused(sim: RunningSim) -> int:
    """Requests in flight when the output blocked finish; then none is sent."""
    await asyncio.sleep(0.5)
    paused_at = int(sim.stats()["requests"])
    await asyncio.sleep(1.0)
    assert sim.stats()["requests"] == paused_at, "requests were sent while the output was blocked"
    assert paused_at < ITEMS, "the output blocked too late to show anything"
    return paused_at


def limited() -> None:
    """In the child: writes past 512 KiB fail with EFBIG (Python ignores SIGXFSZ).

    Only the soft limit: raising it back needs no CAP_SYS_RESOURCE.
    """
    resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, resource.RLIM_INFINITY))


async def test_file_size_limit_efbig_blocks_then_resumes(work: Workdir) -> None:
    """EFBIG (RLIMIT_FSIZE) is a full disk for this process: blocked, not fatal.

    A record is ~65 KB here, so the records shard reaches the 512 KB limit after
    a few items, long before the checkpoint's WAL (a few 4 KB pages a commit).
    """
    spool = work.spool("q")
    async with running_sim(PACED) as sim:
        write_config(work, sim, input='"lines"')
        big_topics(spool, 32_000)
        drop_good(spool)
        async with spawned(work, limited) as proc:
            await wait_blocked(work, proc)
            await assert_sending_paused(sim)
            await asyncio.sleep(1.0)  # past the writer's 2 s retry: still one log line
            assert len(daemon_events(work, "output_blocked")) == 1
            assert not daemon_events(work, "output_resumed")
            resource.prlimit(
                proc.pid,
                resource.RLIMIT_FSIZE,
                (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
            )
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        requests = sim.stats()["requests"]
    assert_resumed_once(work, requests, "File too large")


@pytest.mark.parametrize("when", ["from_the_start", "mid_run"])
async def test_a_read_only_output_folder_blocks_then_resumes(work: Workdir, when: str) -> None:
    """Read-only before the first shard, or made so while a shard is open and not full (its
    rename to the final name is refused; small shards make the folder take a rename and a
    new file every 20 records)."""
    if (why := permission_bits_apply()) is not None:
        pytest.skip(why)
    spool = work.spool("q")
    out = work.path / "out" / "q"
    if when == "from_the_start":
        out.mkdir(parents=True)
        out.chmod(0o555)
    async with running_sim(PACED) as sim:
        write_config(work, sim, input='"lines"', **{"output.shard_max_records": 20})
        big_topics(spool, 200)
        drop_good(spool)
        async with spawned(work, without_dac_override) as proc:
            if when == "mid_run":
                await wait_until(lambda: bool(list(out.glob("*.jsonl.part"))), 60)
                out.chmod(0o555)
            await blocked_until_writable(work, proc, sim, out)
        requests = sim.stats()["requests"]
    assert_resumed_once(work, requests, "Permission denied")


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "synthd-test", str(path)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


async def test_disk_full_enospc_blocks_then_resumes(
    work: Workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real full disk: out/ on a 128 KiB tmpfs, grown by a remount."""
    monkeypatch.setattr("synthd.writer._RETRY_BLOCKED_S", 0.2)
    spool = work.spool("q")
    out = work.path / "out"
    with tmpfs(out, "128k"):
        async with running_sim(PACED) as sim:
            write_config(work, sim, input='"lines"')
            big_topics(spool, 8_000)
            drop_good(spool)
            daemon = Daemon(
                config.load(work.path / "config" / "synthd.toml"), once=True, handle_signals=False
            )
            with capture_logs() as logs:
                task = asyncio.create_task(daemon.run())
                await wait_until(lambda: daemon.writer.blocked is not None, 20)
                await assert_sending_paused(sim)
                remount = ["mount", "-o", "remount,size=64m", str(out)]
                await asyncio.to_thread(subprocess.run, remount, check=True)
                assert await asyncio.wait_for(task, 30) == 0
            requests = sim.stats()["requests"]
        blocked = [e for e in logs if e["event"] == "output_blocked"]
        assert len(blocked) == 1 and "No space left on device" in blocked[0]["error"]
        assert len([e for e in logs if e["event"] == "output_resumed"]) == 1
        assert_all_once(work, requests)


async def test_second_signal_while_blocked_exits_and_a_restart_finishes_once(
    work: Workdir,
) -> None:
    """Blocked output and two SIGTERMs: exit now (1), no torn line; the next start redoes
    what was never written, and every item ends up recorded exactly once."""
    spool = work.spool("q")
    async with running_sim(PACED) as sim:
        write_config(work, sim, input='"lines"')
        big_topics(spool, 32_000)
        drop_good(spool)
        async with spawned(work, limited) as proc:
            await wait_blocked(work, proc)
            proc.send_signal(signal.SIGTERM)
            # Two signals pending at once are one to the kernel: the second waits for the
            # first to be handled, however slowly a busy machine runs the daemon.
            await wait_until(lambda: bool(daemon_events(work, "signal")), 30)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 1
        assert daemon_events(work, "exit_while_blocked")
        for shard in (work.path / "out" / "q").glob("*.jsonl*"):
            assert shard.read_bytes().endswith(b"\n")
        async with spawned(work, lambda: None) as again:
            assert await asyncio.wait_for(again.wait(), 60) == 0
    per_item = Counter((r["source"]["file"], r["source"]["seq"]) for r in work.lines("q"))
    assert per_item == {("big.txt", i): 1 for i in range(ITEMS)} | {(n, 0): 1 for n in GOOD}


async def test_exit_while_blocked_waits_for_the_writer_thread_before_closing_shards(
    work: Workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling the writer's task does not stop its thread: the shards may be closed
    only once the commit it is running is over, or it writes into closed files."""
    monkeypatch.setattr("synthd.writer._RETRY_BLOCKED_S", 0.01)  # always inside a commit
    spool = work.spool("q")
    async with running_sim(PACED) as sim:
        write_config(work, sim, input='"lines"')
        big_topics(spool, 200)
        daemon = Daemon(
            config.load(work.path / "config" / "synthd.toml"), once=True, handle_signals=False
        )
        with capture_logs() as logs:
            task = asyncio.create_task(daemon.run())
            await wait_until(lambda: bool(work.lines("q")), 20)
            # Another process holds the checkpoint's write lock: every commit waits
            # for it (busy_timeout), then fails, and the writer is blocked.
            locker = sqlite3.connect(
                work.path / "state" / "synthd.db", isolation_level=None, check_same_thread=False
            )
            locker.execute("BEGIN IMMEDIATE")

            def release_after_exit_now() -> None:
                # The loop may itself be stuck on the checkpoint: release from a thread.
                while not any(e["event"] == "exit_while_blocked" for e in list(logs)):
                    time.sleep(0.01)
                time.sleep(0.3)
                locker.execute("ROLLBACK")

            releaser = threading.Thread(target=release_after_exit_now)
            try:
                await wait_until(lambda: daemon.writer.blocked is not None, 30)
                releaser.start()
                # The retry, 10 ms later, now waits on the lock (5 s): exit with it inside.
                await asyncio.sleep(0.5)
                daemon.stop()
                daemon.stop()
                with pytest.raises(WriterFailed):
                    await asyncio.wait_for(task, 30)
            finally:
                if releaser.is_alive():
                    releaser.join(10)
                elif locker.in_transaction:
                    locker.execute("ROLLBACK")
                locker.close()
    out = work.path / "out" / "q"
    assert not list(out.glob("*.part")), "a shard was written after the shards were closed"
    for shard in out.glob("*.jsonl"):
        assert shard.read_bytes().endswith(b"\n")


async def blocked_until_writable(
    work: Workdir, proc: asyncio.subprocess.Process, sim: RunningSim, out: Path
) -> None:
    """The daemon blocks on the read-only ``out`` and stops sending; made writable, it
    finishes (exit 0). ``out`` is left writable however the wait ends."""
    try:
        await wait_blocked(work, proc)
        await assert_sending_paused(sim)
        os.chmod(out, 0o755)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        os.chmod(out, 0o755)
