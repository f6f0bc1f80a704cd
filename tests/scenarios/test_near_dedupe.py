"""The near-duplicate filter in the daemon: rejects that name the kept record, and an
index that outlives SIGKILL and restart (it commits with the records it describes)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections import Counter
from typing import Any

import orjson
import pytest

from synthd import config, neardup, report
from synthd.errors import ConfigError
from tests.helpers import Workdir, run_once, sim_process, simple_job, write_provider_config

RUN = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml", "--once"]
TOPICS = ["harbour storm", "night shift", "flooded farm", "rent rise", "new school"]


def near_job(**extra: Any) -> str:
    return simple_job("q", f_near_dedupe="0.85", **extra)


def check_outcomes(work: Workdir, items: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each item once; each near-duplicate names a kept record it is truly like; and no two
    kept records are near-duplicates of each other (what a lost index would let through)."""
    records, rejects = work.lines("q"), work.lines("q", "rejects")
    per_item = Counter(ln["source"]["seq"] for ln in records + rejects)
    assert set(per_item) == set(range(items)) and set(per_item.values()) == {1}
    p = neardup.Params(0.85)
    kept = {r["id"]: p.keys(r)[0] for r in records}
    for a, b in itertools.combinations(kept.values(), 2):
        assert neardup.similarity(a.sig, b.sig) < 0.85
    near = [r for r in rejects if r["reason"] == "near_duplicate"]
    assert near, "the inputs repeat: some completions must be near-duplicates"
    for r in near:
        assert r["kept"] in kept
        assert r["similarity"] >= 0.85
        assert neardup.similarity(p.keys(r)[0].sig, kept[r["kept"]].sig) == pytest.approx(
            r["similarity"], abs=1e-3
        )
    return records, near


async def test_near_duplicates_go_to_rejects_with_the_kept_id_context_and_meta(
    work: Workdir,
) -> None:
    with sim_process() as url:
        write_provider_config(work, url, near_job(input='"jsonl"'))
        rows = [{"text": TOPICS[i % len(TOPICS)], "n": i} for i in range(40)]
        (work.spool("q") / "in.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        daemon = await run_once(work)
    records, near = check_outcomes(work, 40)
    assert len(records) <= len(TOPICS) and len(near) >= 40 - len(TOPICS)
    for r in near:
        assert r["context"] == rows[r["source"]["seq"]]["text"]
        assert r["meta"] == {"n": r["source"]["seq"]}
        assert r["completion"] and r["kept"] in r["detail"]
    stats = daemon.jobs["q"].stats
    assert stats.rejects.get("near_duplicate") == len(near)
    assert stats.records == len(records)
    shown = report.build(config.load(work.path / "config" / "synthd.toml"), "q")
    assert shown["near_duplicates"]["count"] == len(near)
    assert shown["near_duplicates"]["share"] == round(len(near) / (len(near) + len(records)), 4)
    assert shown["near_duplicates"]["similarity"]["min"] >= 0.85
    assert shown["rejects_by_filter"]["near_dedupe"] == len(near)


@pytest.mark.parametrize("point", ["checkpoint_committed:3", "shard_fsynced:3"])
def test_the_index_survives_sigkill_and_restart(work: Workdir, point: str) -> None:
    # shard_fsynced: killed with lines past the commit, which recovery adopts (and indexes);
    # checkpoint_committed: killed after a commit, whose index rows must be there.
    items = 150
    with sim_process("--latency-ms", "20", "--latency-spread-ms", "10") as url:
        write_provider_config(
            work,
            url,
            near_job(input='"lines"'),
            service="commit_interval_s = 0.01",
            max_in_flight=4,
        )
        lines = [TOPICS[i % len(TOPICS)] for i in range(items)]
        (work.spool("q") / "t.txt").write_text("\n".join(lines) + "\n")
        env = {**os.environ, "SYNTHD_CRASH_AT": point}
        killed = subprocess.run(RUN, cwd=work.path, env=env, capture_output=True, timeout=60)
        assert killed.returncode == -9, killed.stderr.decode()[-2000:]
        done_before = len(work.lines("q")) + len(work.lines("q", "rejects"))
        assert 0 < done_before < items, "the kill landed mid-run"
        finish = subprocess.run(RUN, cwd=work.path, capture_output=True, timeout=60)
        assert finish.returncode == 0, finish.stderr.decode()[-2000:]
    check_outcomes(work, items)


def test_config_names_the_key_of_a_bad_threshold(work: Workdir) -> None:
    path = write_provider_config(work, "http://127.0.0.1:1/v1", near_job().replace("0.85", "1.5"))
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert "jobs.q.filters.near_dedupe" in str(e.value)
    path = write_provider_config(
        work, "http://127.0.0.1:1/v1", near_job(f_near_dedupe_field='"words"')
    )
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert "near_dedupe_field" in str(e.value)


async def test_items_are_compared_one_by_one(work: Workdir) -> None:
    with sim_process() as url:
        job = near_job(input='"jsonl"', f_split='"lines"', f_near_dedupe_field='"items"')
        write_provider_config(work, url, job)
        rows = [{"text": TOPICS[i % len(TOPICS)]} for i in range(20)]
        (work.spool("q") / "in.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        await run_once(work)
    records, rejects = work.lines("q"), work.lines("q", "rejects")
    assert len(records) + len(rejects) == 20
    near = [r for r in rejects if r["reason"] == "near_duplicate"]
    assert near and all(r["detail"].startswith("items ") for r in near)
    p = neardup.Params(0.85, "items")
    kept = {r["id"]: p.keys(r) for r in records}
    for r in near:
        best = max(neardup.similarity(a.sig, b.sig) for a in p.keys(r) for b in kept[r["kept"]])
        assert best == pytest.approx(r["similarity"], abs=1e-3)
