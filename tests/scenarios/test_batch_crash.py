"""Batch mode killed at each of its durability boundaries: still one outcome per item.

Each case runs the daemon (``synthd run --once``, a subprocess) armed with one crash point,
so it SIGKILLs itself there, then once more unarmed to the end. Afterwards every input item
has exactly one line, the simulator saw no batch created twice (each synthd key once) and
processed every request once: no result was paid for twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.helpers import Workdir, sim_process, simple_job, write_provider_config

N = 20
RUN = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml", "--once"]
POINTS = [
    "batch_recorded",  # membership committed, nothing uploaded
    "batch_uploaded",  # between upload and create
    "batch_created",  # between create and recording the batch id
    "batch_downloaded",  # during the download of results
    "shard_appended",  # during the write of its results
    "checkpoint_committed",
    "batch_results_committed",  # results committed, the batch not yet closed
]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with sim_process("--batch-time-s", "0.2") as url:
        yield url


def life(work: Workdir, crash_at: str | None) -> int:
    env = {**os.environ, "SYNTHD_CRASH_AT": crash_at or ""}
    with open(work.path / "daemon.log", "ab") as log:
        proc = subprocess.run(RUN, cwd=work.path, stdout=log, stderr=log, env=env, timeout=60)
    return proc.returncode


def tag_of(f: dict[str, Any], ours: list[dict[str, Any]]) -> bool:
    """Whether an uploaded file belongs to this case's batches."""
    keys = {b["metadata"]["synthd_batch"] for b in ours}
    return str(f["filename"]).removesuffix(".jsonl") in keys


def sim_batches(url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = ""
    while True:
        with urllib.request.urlopen(f"{url}/batches?limit=100{after}") as resp:
            page = orjson.loads(resp.read())
        out.extend(page["data"])
        if not page["has_more"]:
            return out
        after = f"&after={page['last_id']}"


# Each point on its first pass; three on their second (a later batch, results half written);
# two with one .txt file per item (whole files, resumed one item each).
CASES = (
    [(p, 1, "lines") for p in POINTS]
    + [(p, 2, "lines") for p in ("batch_created", "batch_downloaded", "shard_appended")]
    + [(p, 1, "files") for p in ("batch_created", "batch_downloaded")]
)


@pytest.mark.parametrize(("point", "nth", "shape"), CASES)
def test_a_kill_at_each_batch_boundary_loses_and_doubles_nothing(
    work: Workdir, sim_url: str, point: str, nth: int, shape: str
) -> None:
    job = simple_job(
        "q",
        input='"lines"' if shape == "lines" else '"file"',
        mode='"batch"',
        batch_max_requests=8,
        batch_poll_s=0.05,
        batch_poll_max_s=0.2,
    )
    write_provider_config(work, sim_url, job, service="commit_interval_s = 0.01")
    tag = f"{point}-{nth}-{os.urandom(4).hex()}"
    if shape == "lines":
        rows = "\n".join(f"{tag} topic {i}" for i in range(N))
        (work.spool("q") / "topics.txt").write_text(rows + "\n")
        names = {"topics.txt"}
    else:
        names = {f"p{i:02d}.txt" for i in range(N)}
        for i in range(N):
            (work.spool("q") / f"p{i:02d}.txt").write_text(f"{tag} passage {i} on tides.")
    before = {b["id"] for b in sim_batches(sim_url)}

    assert life(work, f"{point}:{nth}") == -signal.SIGKILL, (work.path / "daemon.log").read_text()
    assert life(work, None) == 0, (work.path / "daemon.log").read_text()[-3000:]

    lines = []
    for shard in sorted((work.path / "out" / "q").rglob("*.jsonl*")):
        data = shard.read_bytes()
        assert data.endswith(b"\n"), f"torn line in {shard}"
        lines.extend(orjson.loads(raw) for raw in data.splitlines())
    got = Counter((ln["source"]["file"], ln["source"]["seq"]) for ln in lines)
    want = {(n, i) for n in names for i in range(N if shape == "lines" else 1)}
    assert got == dict.fromkeys(want, 1)
    assert all(ln.get("batch_id") for ln in lines)
    ours = [b for b in sim_batches(sim_url) if b["id"] not in before]
    keys = Counter(b["metadata"]["synthd_batch"] for b in ours)
    assert set(keys.values()) == {1}, "a batch created twice"
    assert sum(b["request_counts"]["completed"] for b in ours) == N, "a request paid twice"
    assert {p.name for p in (work.spool("q") / "done").iterdir()} == names
    with urllib.request.urlopen(f"{sim_url}/files?purpose=batch") as resp:
        left = [f for f in orjson.loads(resp.read())["data"] if tag_of(f, ours)]
    assert left == [], "an input file uploaded twice, or not deleted"
    assert not list((work.path / "state" / "batches" / "q").iterdir())
