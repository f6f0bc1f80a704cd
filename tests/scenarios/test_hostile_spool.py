"""Hostile spools: files that change under the daemon, and things that are not files.

A claim renames the dropped file into ``.work/``: from then on the producer's
name is free, and what happens to the claimed copy is what matters. Each test
drops good files too and checks they were still sent and recorded exactly once.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from synthd import config
from synthd.daemon import STATE_FILE, Daemon
from synthd.sim import SimConfig, running_sim
from tests.helpers import (
    GOOD,
    Workdir,
    assert_good_once,
    drop_good,
    events,
    failure,
    open_log,
    permission_bits_apply,
    run_once,
    simple_job,
    wait_until,
    without_dac_override,
)

LINES = 2000
SLOW = SimConfig(port=0, latency_ms=200)  # 64 senders: ~320 items/s, 2000 lines take 6 s


def topics(n: int, prefix: str = "topic") -> str:
    return "\n".join(f"{prefix} {i}" for i in range(n)) + "\n"


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def start(work: Workdir, once: bool = True) -> tuple[Daemon, asyncio.Task[int]]:
    cfg = config.load(work.path / "config" / "synthd.toml")
    daemon = Daemon(cfg, once=once, handle_signals=False)
    return daemon, asyncio.create_task(daemon.run())


def claimed(spool: Path) -> list[Path]:
    return list((spool / ".work").iterdir())


def source_rows(work: Workdir) -> list[tuple[str, str, str | None]]:
    """(name, status, reason) of every claim the checkpoint knows."""
    with sqlite3.connect(work.path / "state" / STATE_FILE) as db:
        return list(db.execute("SELECT name, status, reason FROM sources ORDER BY id"))


def outcomes_of(work: Workdir, name: str) -> Counter[int]:
    """How many output lines each item (seq) of one file has, all streams."""
    lines = [*work.lines("q"), *work.lines("q", "rejects"), *work.lines("q", "dead")]
    return Counter(ln["source"]["seq"] for ln in lines if ln["source"]["file"] == name)


# -- a file changing while it is processed ------------------------------------------------


CHANGED = {"delete": "was deleted", "truncate": "changed size", "replace": "was replaced"}


@pytest.mark.parametrize("change", list(CHANGED))
async def test_the_claimed_copy_changing_mid_read_fails_only_that_file(
    work: Workdir, change: str
) -> None:
    spool = work.spool("q")
    async with running_sim(SLOW) as sim:
        work.write_config(sim.base_url, simple_job("q", input='"lines"'))
        (spool / "big.txt").write_text(topics(LINES))
        drop_good(spool)
        with capture_logs() as logs:
            daemon, task = start(work)
            await wait_until(
                lambda: bool(daemon.jobs) and daemon.jobs["q"].stats.items_queued > 300
            )
            # Claimed in one batch with the good files: pick it out.
            (copy,) = [p for p in claimed(spool) if p.name.endswith("-big.txt")]
            if change == "delete":
                copy.unlink()
            elif change == "truncate":
                os.truncate(copy, 0)
            else:
                (spool / ".work" / "new.part").write_text("something else\n")
                os.replace(spool / ".work" / "new.part", copy)
            assert await asyncio.wait_for(task, 30) == 0
        requests = sim.stats()["requests"]
    (failed,) = events(logs, "file_failed")
    assert failed["file"] == "big.txt" and failed["reason"] == "changed_while_read"
    report = orjson.loads((spool / "failed" / "big.txt.error.json").read_bytes())
    assert report["reason"] == "changed_while_read"
    assert CHANGED[change] in report["detail"]
    left = spool / "failed" / "big.txt"
    if change == "delete":
        assert not left.exists(), "nothing to move: the report alone says what happened"
    else:
        assert left.read_text() == ("" if change == "truncate" else "something else\n")
    # The daemon stopped reading soon after: not all 2000 lines were sent (that
    # takes 6 s), and every line it did read has exactly one outcome.
    per_item = outcomes_of(work, "big.txt")
    assert 300 < len(per_item) < LINES
    assert set(per_item.values()) == {1}
    assert set(per_item) == set(range(len(per_item))), "a prefix of the file, no gaps"
    assert requests == len(per_item) + len(GOOD)
    # Failed in the checkpoint too: a restart does not resume it.
    assert [row[1:] for row in source_rows(work) if row[0] == "big.txt"] == [
        ("failed", f"changed_while_read: {report['detail']}")
    ]
    assert not claimed(spool)
    assert_good_once(work)


async def test_the_producers_name_is_free_once_claimed(work: Workdir) -> None:
    """Deleting or truncating the dropped name after the claim touches nothing; a
    file written again under the name is a new file: both are processed, and
    both end in done/ under distinct names."""
    spool = work.spool("q")
    async with running_sim(SimConfig(port=0, latency_ms=50)) as sim:
        work.write_config(sim.base_url, simple_job("q", input='"lines"'))
        (spool / "big.txt").write_text(topics(600, "first"))
        drop_good(spool)
        daemon, task = start(work)
        await wait_until(lambda: bool(daemon.jobs) and daemon.jobs["q"].stats.items_queued > 100)
        assert claimed(spool) and not (spool / "big.txt").exists()
        with pytest.raises(FileNotFoundError):
            os.unlink(spool / "big.txt")
        with pytest.raises(FileNotFoundError):
            os.truncate(spool / "big.txt", 0)
        (spool / "big.txt").write_text(topics(50, "second"))  # replaced: a new drop
        assert await asyncio.wait_for(task, 30) == 0
        assert sim.stats()["requests"] == 650 + len(GOOD)
    assert sorted(p.name for p in (spool / "done").iterdir()) == sorted(
        ["big.txt", "big.txt.2", *GOOD]
    )
    contexts = Counter(r["context"] for r in work.lines("q") if r["source"]["file"] == "big.txt")
    assert contexts == {
        **{f"first {i}": 1 for i in range(600)},
        **{f"second {i}": 1 for i in range(50)},
    }
    assert (
        len({r["source"]["claim"] for r in work.lines("q") if r["source"]["file"] == "big.txt"})
        == 2
    )
    assert {(p.read_text().split()[0]) for p in (spool / "done").glob("big.txt*")} == {
        "first",
        "second",
    }
    assert not list((spool / "failed").iterdir())
    assert_good_once(work)


async def test_same_name_dropped_again_after_the_first_is_done(work: Workdir) -> None:
    spool = work.spool("q")
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, simple_job("q"))
        (spool / "a.txt").write_text("the first a.txt, about a lighthouse")
        daemon, task = start(work, once=False)
        await wait_until(lambda: (spool / "done" / "a.txt").exists())
        (spool / "a.txt").write_text("the second a.txt, about a ferry")
        drop_good(spool)
        await wait_until(lambda: (spool / "done" / "a.txt.2").exists())
        await wait_until(lambda: all((spool / "done" / n).exists() for n in GOOD))
        daemon.stop()
        assert await asyncio.wait_for(task, 10) == 0
        assert sim.stats()["requests"] == 2 + len(GOOD)
    assert (spool / "done" / "a.txt").read_text() == "the first a.txt, about a lighthouse"
    assert (spool / "done" / "a.txt.2").read_text() == "the second a.txt, about a ferry"
    a = sorted(r["context"] for r in work.lines("q") if r["source"]["file"] == "a.txt")
    assert a == ["the first a.txt, about a lighthouse", "the second a.txt, about a ferry"]
    assert_good_once(work)


async def test_a_file_still_being_written_is_not_claimed_until_it_settles(work: Workdir) -> None:
    spool = work.spool("q")
    growing = spool / "growing.txt"
    parts = [f"part {i} of a report written slowly, in pieces.\n" for i in range(4)]
    async with running_sim(SimConfig(port=0)) as sim:
        cfg = work.write_config(sim.base_url, simple_job("q"))
        cfg.write_text(cfg.read_text().replace("settle_s = 0\n", "settle_s = 0.6\n"))
        drop_good(spool)
        growing.write_text(parts[0])
        _, task = start(work)
        for part in parts[1:]:
            await asyncio.sleep(0.3)  # shorter than settle_s: still "being written"
            assert growing.exists(), "claimed while still being written"
            await asyncio.to_thread(append, growing, part)
        await asyncio.sleep(0.3)
        assert growing.exists(), "claimed before it was quiet for settle_s"
        assert await asyncio.wait_for(task, 10) == 0
        assert sim.stats()["requests"] == 1 + len(GOOD)
    (record,) = [r for r in work.lines("q") if r["source"]["file"] == "growing.txt"]
    assert record["context"] == "".join(parts).strip()
    assert sorted(p.name for p in (spool / "done").iterdir()) == sorted(["growing.txt", *GOOD])
    assert_good_once(work)


# -- things that are not files ---------------------------------------------------------------


def atime_is_kept(folder: Path) -> bool:
    """Whether reading a file on this file system updates its access time."""
    probe = folder / "probe.txt"
    probe.write_text("probe")
    os.utime(probe, ns=(1_000_000_000, probe.stat().st_mtime_ns))
    probe.read_bytes()
    return probe.stat().st_atime_ns != 1_000_000_000


async def test_links_fifos_and_directories_are_refused_without_being_followed(
    work: Workdir,
) -> None:
    spool = work.spool("q")
    outside = work.path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("PRIVATE: never to be read through the spool")
    os.utime(secret, ns=(1_000_000_000, secret.stat().st_mtime_ns))  # atime before mtime
    before = secret.stat()
    (spool / "link.txt").symlink_to(secret)
    (spool / "link-to-dir.txt").symlink_to(outside)
    (spool / "dangling.txt").symlink_to(outside / "nothing-here")
    os.mkfifo(spool / "pipe.txt")  # opening it would block the reader forever
    (spool / "x.txt").mkdir()
    (spool / "x.txt" / "inside.txt").write_text("a file inside a directory named like a file")
    refused = {
        "link.txt": "symlink",
        "link-to-dir.txt": "symlink",
        "dangling.txt": "symlink",
        "pipe.txt": "FIFO",
        "x.txt": "directory",
    }
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, simple_job("q"))
        drop_good(spool)
        with capture_logs() as logs:
            await asyncio.wait_for(run_once(work), 20)
        assert sim.stats()["requests"] == len(GOOD)
    for name, kind in refused.items():
        report = failure(spool, name)
        assert report["reason"] == "not_a_file" and kind in report["detail"]
    assert {e["file"] for e in events(logs, "file_refused")} == set(refused)
    failed = spool / "failed"
    # The links themselves were moved, pointing where they did; nothing was followed.
    assert os.readlink(failed / "link.txt") == str(secret)
    assert os.readlink(failed / "link-to-dir.txt") == str(outside)
    assert os.readlink(failed / "dangling.txt") == str(outside / "nothing-here")
    assert (failed / "pipe.txt").is_fifo()
    assert (failed / "x.txt" / "inside.txt").read_text().startswith("a file inside")
    after = secret.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    if atime_is_kept(work.path):
        assert after.st_atime_ns == before.st_atime_ns, "the target outside was read"
    every_line = [*work.lines("q"), *work.lines("q", "rejects"), *work.lines("q", "dead")]
    assert not any("PRIVATE" in orjson.dumps(ln).decode() for ln in every_line)
    assert_good_once(work)


def daemon_log(work: Workdir) -> list[dict[str, Any]]:
    return [
        orjson.loads(raw)
        for raw in (work.path / "daemon.log").read_bytes().splitlines()
        if raw.startswith(b"{")
    ]


async def test_a_file_without_read_permission_fails_only_that_file(work: Workdir) -> None:
    if (why := permission_bits_apply()) is not None:
        pytest.skip(why)
    spool = work.spool("q")
    (spool / "locked.txt").write_text("nobody may read this")
    os.chmod(spool / "locked.txt", 0)
    drop_good(spool)
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, simple_job("q"))
        with open_log(work) as log:
            proc = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml"],
                "--once",
                cwd=work.path,
                stdout=log,
                stderr=log,
                preexec_fn=without_dac_override,
            )
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        assert sim.stats()["requests"] == len(GOOD)
    report = failure(spool, "locked.txt")
    assert report["reason"] == "unreadable" and "Permission denied" in report["detail"]
    (failed,) = [e for e in daemon_log(work) if e["event"] == "file_failed"]
    assert failed["file"] == "locked.txt" and failed["reason"] == "unreadable"
    assert os.stat(spool / "failed" / "locked.txt").st_mode & 0o777 == 0, "kept as it was"
    assert_good_once(work)
