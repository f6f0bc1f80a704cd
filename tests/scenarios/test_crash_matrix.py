"""The daemon killed at each durability boundary in turn, in the spirit of SQLite's tests.

For every crash point (``synthd.crashpoints``) a run of short daemon lives: each
one is armed with ``SYNTHD_CRASH_AT=point:N`` and SIGKILLs itself on the Nth
pass, or finishes if it never gets there (a point that no code passes yet just
finishes). Some lives get a SIGHUP that flips the job's samples at a random
moment. A new spool file arrives before each life, so every one has work. A
final unarmed run finishes everything; then every input item must have exactly
one outcome (one line per sample it asked for), every line whole and every id
once.

The randomness is seeded; the seed is printed. ``CRASH_POINT_SEED`` replays a
run, and ``CRASH_POINT_ROUNDS`` (12 by default: about 140 daemon lives, about a
minute and a half on two quiet cores; every point is armed at each ``nth`` it draws
several times over) scales it up for a soak.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import Workdir, sim_process, simple_job, write_provider_config

WRITER_POINTS = [
    "shard_appended",
    "shard_fsynced",
    "checkpoint_committed",
    "shard_renamed",
    "recovery_cut",
    "recovery_adopted",
]
SPOOL_POINTS = ["claim_recorded", "claim_renamed", "source_moved"]
# Recovery has something to settle only after a life that died with lines past the commit.
NEEDS_A_TAIL = {"recovery_cut", "recovery_adopted"}
ROUNDS = int(os.environ.get("CRASH_POINT_ROUNDS", "12"))
LINES_PER_FILE = 6
RUN = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml", "--once"]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with sim_process("--latency-ms", "5", "--latency-spread-ms", "5") as url:
        yield url


def configure(work: Workdir, url: str, samples: int) -> None:
    job = simple_job("q", input='"lines"', samples=samples, **{"output.shard_max_records": 5})
    write_provider_config(work, url, job, service="commit_interval_s = 0.01", max_in_flight=8)


def life(work: Workdir, url: str, rng: random.Random, crash_at: str | None, hup: bool) -> int:
    """One daemon run to its end: killed at its crash point, or finished."""
    env = {**os.environ, "SYNTHD_CRASH_AT": crash_at or ""}
    log_path = work.path / "daemon.log"
    with open(log_path, "ab") as log:
        start = log.tell()
        proc = subprocess.Popen(RUN, cwd=work.path, stdout=log, stderr=log, env=env)
    ended = threading.Event()
    hupper = None
    if hup:
        samples, delay = rng.choice([1, 2]), rng.uniform(0.0, 0.5)

        def reload() -> None:
            # After the daemon set its handlers (it logs "recovered" next), else
            # SIGHUP's default action would kill it: a crash, but not a reload.
            while b'"recovered"' not in log_path.read_bytes()[start:]:
                if ended.wait(0.02):
                    return
            if not ended.wait(delay):
                configure(work, url, samples)
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGHUP)

        hupper = threading.Thread(target=reload)
        hupper.start()
    try:
        return proc.wait(timeout=60)
    finally:
        ended.set()
        if hupper is not None:
            hupper.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def lives_at(point: str, root: Path, url: str, seed: int) -> dict[str, Any]:
    """Every round's life armed at ``point``; then the unarmed finish and the checks."""
    rng = random.Random(f"{seed}:{point}")
    path = root / point
    path.mkdir()
    work = Workdir(path)
    configure(work, url, 2)
    spool = work.spool("q")
    codes: Counter[int] = Counter()
    for round_ in range(ROUNDS):
        rows = "\n".join(f"round {round_} topic {i}" for i in range(LINES_PER_FILE))
        (spool / f"r{round_:03d}.txt").write_text(rows + "\n")
        if point in NEEDS_A_TAIL:
            life(work, url, rng, f"shard_fsynced:{rng.randint(1, 3)}", False)
        # Recovery passes its points once or twice a life; the rest, once a commit.
        nth = 1 if point in NEEDS_A_TAIL else rng.randint(1, 2 if point == "shard_renamed" else 4)
        hup = rng.random() < 0.3
        code = life(work, url, rng, f"{point}:{nth}", hup)
        # A SIGHUP that lands after the loop closed, as the daemon exits, kills it:
        # harmless, and a crash like any other.
        assert code in (0, -signal.SIGKILL) or (hup and code == -signal.SIGHUP), (point, code)
        codes[code] += 1
    assert life(work, url, rng, None, False) == 0, (work.path / "daemon.log").read_text()[-3000:]
    check_exactly_once(work, ROUNDS)
    return {
        "point": point,
        "killed": codes[-signal.SIGKILL],
        "finished": codes[0],
    }


def check_exactly_once(work: Workdir, rounds: int) -> None:
    out = work.path / "out" / "q"
    lines = []
    for shard in sorted(out.rglob("*.jsonl*")):
        data = shard.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"torn line in {shard}"
        lines.extend(orjson.loads(raw) for raw in data.splitlines())
    by_item: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for ln in lines:
        by_item.setdefault((ln["source"]["file"], ln["source"]["seq"]), []).append(ln)
    expected = {(f"r{r:03d}.txt", i) for r in range(rounds) for i in range(LINES_PER_FILE)}
    assert set(by_item) == expected
    for key, item_lines in by_item.items():
        if any(ln.get("sample") is None for ln in item_lines):
            assert len(item_lines) == 1, (key, item_lines)  # a dead letter stands alone
            continue
        n = item_lines[0]["params"]["n"]
        samples = sorted(ln["sample"] for ln in item_lines)
        assert samples == list(range(n)), (key, samples, n)
        assert len({ln.get("fingerprint") for ln in item_lines if "fingerprint" in ln}) <= 1
    ids = [ln["id"] for ln in lines if "id" in ln]
    assert len(ids) == len(set(ids)), "a record twice"
    spool = work.spool("q")
    assert len(list((spool / "done").iterdir())) == rounds
    assert not list((spool / ".work").iterdir())


# No bound on the whole: its daemon lives are CPU-bound start-ups, so the test's wall time
# is the machine's load (a minute and a half on two quiet cores, several times that on
# loaded ones); a hang is caught where it would happen, each life waiting at most 60 s.
@pytest.mark.timeout(0)
def test_every_crash_point_recovers_to_exactly_once(tmp_path: Path, sim_url: str) -> None:
    seed = int(os.environ.get("CRASH_POINT_SEED", random.randrange(1 << 32)))
    print(f"crash points: seed {seed} (CRASH_POINT_SEED={seed} replays), {ROUNDS} rounds")
    points = WRITER_POINTS + SPOOL_POINTS
    with ThreadPoolExecutor(max_workers=min(3, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda p: lives_at(p, tmp_path, sim_url, seed), points))
    for r in results:
        print(r)
    for r in results:
        if r["point"] in WRITER_POINTS:
            assert r["killed"] > 0, f"no life died at {r['point']}: the test did not reach it"
