"""Crash safety with real processes and real signals.

The daemon runs as a subprocess against a simulator subprocess; it is killed
with SIGKILL at random moments and restarted, drained with SIGTERM, reloaded
with SIGHUP. At the end every item has exactly one outcome per sample and
every line is valid JSON.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from synthd import config as config_mod
from tests.helpers import Workdir, sim_process, simple_job, write_provider_config

RUN = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml"]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """One simulator for the module: the tests use only its URL, never its counters."""
    with sim_process("--latency-ms", "30", "--latency-spread-ms", "20") as url:
        yield url


def start(work: Workdir, *extra: str) -> subprocess.Popen[bytes]:
    log = open(work.path / "daemon.log", "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen([*RUN, *extra], cwd=work.path, stdout=log, stderr=log)
    finally:
        log.close()


def start_working(work: Workdir) -> subprocess.Popen[bytes]:
    """The daemon started, once its first record is out: a signal sent now lands mid-file
    on any machine (a fixed delay may end before a slow start-up has sent anything, or
    after a fast run has finished the file)."""
    proc = start(work)
    deadline = time.monotonic() + 60
    try:
        while not work.lines("q", live=True):
            assert proc.poll() is None, (work.path / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no record within 60s"
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def killed_mid_file(work: Workdir) -> int:
    """SIGKILL once the daemon is working; returns how many records it left."""
    proc = start_working(work)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return len(work.lines("q"))


def all_lines(work: Workdir, job: str) -> list[dict[str, object]]:
    """Every line of every stream; fails if any line is not valid JSON."""
    out = []
    for stream in ("records", "rejects", "dead"):
        out.extend(work.lines(job, stream))
    return out


def wait_for_done(path: Path, timeout_s: float = 20.0) -> None:
    """A file that went well gets no info log line: watch for it in done/ instead."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} not done within {timeout_s}s"
        time.sleep(0.05)


def wait_for_count(work: Workdir, event: str, count: int, timeout_s: float = 30.0) -> None:
    """Wait until the log holds ``count`` lines of ``event`` (one per daemon life)."""
    deadline = time.monotonic() + timeout_s
    log = work.path / "daemon.log"
    needle = b'"event":"%s"' % event.encode()
    while not log.exists() or log.read_bytes().count(needle) < count:
        assert time.monotonic() < deadline, f"fewer than {count} {event!r} within {timeout_s}s"
        time.sleep(0.05)


def wait_for_event(work: Workdir, event: str, timeout_s: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    log = work.path / "daemon.log"
    while time.monotonic() < deadline:
        if log.exists():
            for raw in log.read_bytes().splitlines():
                if raw.startswith(b"{") and (e := orjson.loads(raw)).get("event") == event:
                    return e  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"no {event!r} in the log within {timeout_s}s")


def test_sigkill_at_random_moments_loses_and_doubles_nothing(work: Workdir, sim_url: str) -> None:
    # 300 requests/s: the 3,000 items take ~10 s, so every kill lands mid-run.
    work.write_config(
        sim_url, simple_job("q", samples=2), service="commit_interval_s = 0.02", rpm=18_000
    )
    rows = b"".join(orjson.dumps({"text": f"context {i}", "i": i}) + b"\n" for i in range(2500))
    (work.spool("q") / "big.jsonl").write_bytes(rows)
    for i in range(500):
        (work.spool("q") / f"c{i:03d}.txt").write_text(f"a small file, number {i}")
    rng = random.Random(1234)
    kills = 0
    for life in range(6):
        proc = start(work)
        # Timed from the end of recovery, not from exec: on a busy machine start-up
        # alone can outlast a fixed delay, and the kill would never land mid-run.
        wait_for_count(work, "recovered", life + 1)
        time.sleep(rng.uniform(0.1, 1.4))
        if proc.poll() is not None:
            break  # finished before we could kill it
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        kills += 1
    assert kills >= 5
    assert 0 < len(all_lines(work, "q")) < 2 * 3000, "the kills interrupted real work"
    final = start(work, "--once")
    assert final.wait(timeout=120) == 0
    lines = all_lines(work, "q")
    per_item = Counter((ln["source"]["file"], ln["source"]["seq"]) for ln in lines)  # type: ignore[index]
    expected = {("big.jsonl", i) for i in range(2500)} | {(f"c{i:03d}.txt", 0) for i in range(500)}
    assert set(per_item) == expected
    assert set(per_item.values()) == {2}, "every item has exactly one line per sample"
    ids = [ln["id"] for ln in lines]
    assert len(ids) == len(set(ids)), "no record twice"
    spool = work.spool("q")
    assert len(list((spool / "done").iterdir())) == 501
    assert not list((spool / ".work").iterdir())


def test_sigterm_drains_in_flight_and_exits_zero(work: Workdir, sim_url: str) -> None:
    work.write_config(sim_url, simple_job("q"), service="grace_s = 20")
    (work.spool("q") / "t.txt").write_text("\n".join(f"topic {i}" for i in range(3000)))
    work.write_config(sim_url, simple_job("q", input='"lines"'), service="grace_s = 20")
    proc = start_working(work)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    drained = wait_for_event(work, "stopped")
    assert drained["outstanding"] == 0
    first = len(work.lines("q"))
    assert 0 < first < 3000
    # Nothing torn, nothing lost: a second run finishes the file exactly once.
    assert start(work, "--once").wait(timeout=60) == 0
    seqs = Counter(r["source"]["seq"] for r in work.lines("q"))
    assert set(seqs) == set(range(3000)) and set(seqs.values()) == {1}


def test_second_signal_exits_at_once_without_torn_lines(work: Workdir, sim_url: str) -> None:
    work.write_config(sim_url, simple_job("q", input='"lines"'), service="grace_s = 60")
    (work.spool("q") / "t.txt").write_text("\n".join(f"topic {i}" for i in range(3000)))
    proc = start_working(work)
    proc.send_signal(signal.SIGTERM)
    # Two signals pending at once are one to the kernel: the second waits for the first.
    assert wait_for_event(work, "signal")["action"] == "drain"
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert proc.wait(timeout=20) == 0
    assert time.monotonic() - started < 10  # not the 60 s of grace
    for shard in (work.path / "out" / "q").glob("*.jsonl*"):
        data = shard.read_bytes()
        assert data == b"" or data.endswith(b"\n")
    assert start(work, "--once").wait(timeout=60) == 0
    seqs = Counter(r["source"]["seq"] for r in work.lines("q"))
    assert set(seqs) == set(range(3000)) and set(seqs.values()) == {1}


def test_sighup_reloads_config_without_dropping_work(work: Workdir, sim_url: str) -> None:
    cfg = work.write_config(sim_url, simple_job("q", input='"lines"', temperature=0.5))
    spool = work.spool("q")
    (spool / "first.txt").write_text("\n".join(f"topic {i}" for i in range(200)))
    proc = start(work)
    try:
        wait_for_done(spool / "done" / "first.txt")
        cfg.write_text(cfg.read_text().replace("temperature = 0.5", "temperature = 0.9"))
        proc.send_signal(signal.SIGHUP)
        reloaded = wait_for_event(work, "reloaded")
        assert reloaded["changed"] == ["q"]
        (spool / "second.txt").write_text("\n".join(f"later {i}" for i in range(50)))
        deadline = time.monotonic() + 20
        while len(work.lines("q")) < 250 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    records = work.lines("q")
    assert len(records) == 250
    temps = Counter((r["source"]["file"], r["params"]["temperature"]) for r in records)
    assert temps == {("first.txt", 0.5): 200, ("second.txt", 0.9): 50}
    assert len({r["fingerprint"] for r in records}) == 2


def test_job_change_midway_logs_once_and_keeps_done_work(work: Workdir, sim_url: str) -> None:
    cfg = work.write_config(sim_url, simple_job("q", input='"lines"', temperature=0.5))
    (work.spool("q") / "t.txt").write_text("\n".join(f"topic {i}" for i in range(3000)))
    before = killed_mid_file(work)
    assert 0 < before < 3000
    cfg.write_text(cfg.read_text().replace("temperature = 0.5", "temperature = 0.8"))
    os.truncate(work.path / "daemon.log", 0)
    assert start(work, "--once").wait(timeout=60) == 0
    changed = [
        e
        for raw in (work.path / "daemon.log").read_bytes().splitlines()
        if (e := orjson.loads(raw)).get("event") == "job_changed"
    ]
    assert len(changed) == 1 and changed[0]["job"] == "q"
    records = work.lines("q")
    assert len(records) == 3000
    assert Counter(r["params"]["temperature"] for r in records)[0.5] >= before


def test_restart_resumes_file_from_its_checkpoint(work: Workdir, sim_url: str) -> None:
    """After a kill, a half-done file continues where it stopped, not from the start."""
    work.write_config(sim_url, simple_job("q", input='"lines"'))
    (work.spool("q") / "t.txt").write_text("\n".join(f"topic {i}" for i in range(4000)))
    done_before = killed_mid_file(work)
    assert done_before > 0
    claimed = list((work.spool("q") / ".work").iterdir())
    assert len(claimed) == 1, "the file stays claimed across the crash"
    os.truncate(work.path / "daemon.log", 0)
    assert start(work, "--once").wait(timeout=60) == 0
    stats = next(
        e
        for raw in (work.path / "daemon.log").read_bytes().splitlines()
        if (e := orjson.loads(raw)).get("event") == "summary"
    )
    assert stats["requests"] <= 4000 - done_before + 64 * 2  # at most what was in flight
    assert len(work.lines("q")) == 4000
    assert Path(work.spool("q") / "done" / "t.txt").exists()


def test_sighup_applies_only_to_items_prepared_after_it(work: Workdir) -> None:
    """Items already rendered keep the api, template, params and fingerprint they were
    prepared with; only items prepared after the reload get the new ones."""
    (work.path / "prompts" / "old.txt").write_text("OLD asks about {{context}}")
    (work.path / "prompts" / "new.txt").write_text("NEW asks about {{context}}")
    with sim_process("--latency-ms", "150") as url:
        old_job = simple_job("q", input='"lines"').replace("questions.txt", "old.txt")
        cfg = write_provider_config(work, url, old_job, max_in_flight=2)
        old_fp = config_mod.load(cfg).jobs["q"].fingerprint
        new_job = simple_job("q", input='"lines"', api='"completions"', samples=2)
        new_job = new_job.replace("questions.txt", "new.txt")
        write_provider_config(work, url, new_job, max_in_flight=2)
        new_fp = config_mod.load(cfg).jobs["q"].fingerprint
        write_provider_config(work, url, old_job, max_in_flight=2)
        spool = work.spool("q")
        (spool / "first.txt").write_text("\n".join(f"topic {i}" for i in range(40)))
        proc = start(work)
        try:
            # The first record is out: every item of first.txt is rendered and queued.
            deadline = time.monotonic() + 20
            while not work.lines("q") and time.monotonic() < deadline:
                time.sleep(0.05)
            write_provider_config(work, url, new_job, max_in_flight=2)
            proc.send_signal(signal.SIGHUP)
            assert wait_for_event(work, "reloaded")["changed"] == ["q"]
            (spool / "second.txt").write_text("\n".join(f"later {i}" for i in range(6)))
            deadline = time.monotonic() + 40
            while len(work.lines("q")) < 40 + 12 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    assert not work.lines("q", "dead") and not work.lines("q", "rejects")
    records = work.lines("q")
    per_item: Counter[tuple[str, int]] = Counter()
    for r in records:
        per_item[(r["source"]["file"], r["source"]["seq"])] += 1
        if r["fingerprint"] == old_fp:
            assert r["params"]["n"] == 1
            assert r["messages"][-1]["content"].startswith("OLD asks") and "prompt" not in r
        else:
            assert r["fingerprint"] == new_fp, r
            assert r["params"]["n"] == 2
            assert r["prompt"].startswith("NEW asks") and "messages" not in r
    assert {f for (f, _), n in per_item.items() if n == 1} >= {"first.txt"}
    assert all(n == 2 for (f, _), n in per_item.items() if f == "second.txt")
    assert len([k for k in per_item if k[0] == "first.txt"]) == 40
    assert len([k for k in per_item if k[0] == "second.txt"]) == 6
    # The reload landed while most of first.txt was still queued: those kept the old job.
    assert sum(1 for r in records if r["source"]["file"] == "first.txt") == 40
