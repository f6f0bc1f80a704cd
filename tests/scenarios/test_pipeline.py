"""The shipped pipeline (config/qa.toml) end to end: questions -> answers -> qa_judge.

Over 1,000 contexts each kept question must get exactly one ``answers`` outcome and each
kept answer exactly one ``qa_judge`` outcome (a record, a reject or a dead letter), every
one naming its parent; also when the daemon is SIGKILLed at random moments and SIGHUP
edits the middle stage's template, and when it is killed at the durability boundaries
where a stage's items are handed over or adopted.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from synthd import config
from synthd.daemon import Daemon
from tests.helpers import ROOT, Workdir, sim_process, wait_until

RUN = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml"]
STAGES = ("questions", "answers", "qa_judge")
LIVES = 4  # daemon lives armed at one crash point, each with a new spool file


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with sim_process("--latency-ms", "5", "--latency-spread-ms", "5") as url:
        yield url


def shipped_pipeline(work: Workdir, url: str, **service: Any) -> None:
    """config/qa.toml as shipped, pointed at the simulator, with quick scans."""
    text = (ROOT / "config" / "qa.toml").read_text()
    text = re.sub(r'base_url = "[^"]*"', f'base_url = "{url}"', text, count=1)
    extra = {"settle_s": 0, "scan_interval_s": 0.1, "commit_interval_s": 0.02, **service}
    keys = "".join(f"{k} = {v}\n" for k, v in extra.items())
    text = re.sub(r'listen = "[^"]*"\n', 'listen = ""\n' + keys, text, count=1)
    text = text.replace("rpm = 6000", "rpm = 1000000").replace("tpm = 2000000", "tpm = 1000000000")
    (work.path / "config" / "synthd.toml").write_text(text)


def drop_contexts(work: Workdir, n: int, name: str = "contexts.jsonl") -> None:
    rows = (
        orjson.dumps(
            {"text": f"Passage {i} of {name}: the harbour council met about boats and tides."}
        )
        for i in range(n)
    )
    (work.spool("questions") / name).write_bytes(b"\n".join(rows) + b"\n")


def outcomes(work: Workdir, job: str) -> list[dict[str, Any]]:
    lines = []
    for stream in ("records", "rejects", "dead"):
        folder = work.path / "out" / job
        folder = {"records": folder, "rejects": folder / "rejects", "dead": folder / "dead-letter"}[
            stream
        ]
        for shard in sorted(folder.glob("*.jsonl*")):
            data = shard.read_bytes()
            assert data == b"" or data.endswith(b"\n"), f"torn line in {shard}"
            lines.extend({**orjson.loads(raw), "_stream": stream} for raw in data.splitlines())
    return lines


def check_chain(work: Workdir, files: dict[str, int]) -> dict[str, Counter[str]]:
    """Exactly once from the first file (``files``: name -> contexts) to the last stage;
    returns each stage's outcomes by reason."""
    seen = {job: outcomes(work, job) for job in STAGES}
    q = seen["questions"]
    per_context = Counter((ln["source"]["file"], ln["source"]["seq"]) for ln in q)
    assert set(per_context) == {(f, i) for f, n in files.items() for i in range(n)}
    assert set(per_context.values()) == {1}
    kept_questions = {
        (r["id"], i): r["fingerprint"]
        for r in q
        if r["_stream"] == "records"
        for i in range(len(r["items"]))
    }
    a = seen["answers"]
    per_question = Counter((ln["parent"], ln["source"]["line"] - 1) for ln in a)
    assert set(per_question) == set(kept_questions), "an answers outcome per kept question"
    assert set(per_question.values()) == {1}, "and only one"
    for ln in a:
        assert ln["parent_fingerprint"] == kept_questions[(ln["parent"], ln["source"]["line"] - 1)]
    kept_answers = {r["id"]: r for r in a if r["_stream"] == "records"}
    j = seen["qa_judge"]
    per_answer = Counter(ln["parent"] for ln in j)
    assert set(per_answer) == set(kept_answers), "a qa_judge outcome per kept answer"
    assert set(per_answer.values()) == {1}, "and only one"
    for ln in j:
        parent = kept_answers[ln["parent"]]
        assert ln["parent_fingerprint"] == parent["fingerprint"]
        if ln["_stream"] == "records":
            assert ln["completion"] == parent["completion"]
            assert ln["item"] == parent["item"]
            assert ln["score"] >= 6
    for job in STAGES:
        ids = [ln["id"] for ln in seen[job] if ln["_stream"] == "records"]
        assert len(ids) == len(set(ids)), f"a {job} record twice"
    return {
        job: Counter(ln.get("reason", "record") for ln in seen[job] if ln["_stream"] != "dead")
        for job in STAGES
    }


@pytest.mark.timeout(300)
def test_1000_contexts_through_three_stages_exactly_once(work: Workdir, sim_url: str) -> None:
    shipped_pipeline(work, sim_url)
    drop_contexts(work, 1000)
    done = subprocess.run([*RUN, "--once"], cwd=work.path, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reasons = check_chain(work, {"contexts.jsonl": 1000})
    # The simulator's answers exercise every filter of the chain.
    assert reasons["answers"]["drop_if_matching"] > 0, reasons
    assert reasons["qa_judge"]["judge"] > 0, reasons
    assert reasons["qa_judge"]["record"] > 0, reasons
    for ln in outcomes(work, "qa_judge"):
        if ln.get("reason") == "judge":
            assert ln["score"] < 6
    status = subprocess.run(
        [sys.executable, "-m", "synthd", "status", "--config", "config/synthd.toml", "--json"],
        cwd=work.path,
        capture_output=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    jobs = {j["job"]: j for j in orjson.loads(status.stdout)["jobs"]}
    assert jobs["answers"]["stage"] == {"from": "questions", "per": "item", "backlog": 0}
    assert jobs["qa_judge"]["stage"]["backlog"] == 0
    table = subprocess.run(
        [sys.executable, "-m", "synthd", "status", "--config", "config/synthd.toml"],
        cwd=work.path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        "answers <- questions per item: backlog 0; qa_judge <- answers per record" in table.stdout
    )


async def test_each_stage_works_as_its_upstream_commits_while_the_daemon_runs(
    work: Workdir, sim_url: str
) -> None:
    shipped_pipeline(work, sim_url)
    daemon = Daemon(config.load(work.path / "config" / "synthd.toml"), handle_signals=False)
    run = asyncio.create_task(daemon.run())
    try:
        await daemon.ready.wait()
        judged = 0
        for i in range(2):
            drop_contexts(work, 3, name=f"c{i}.jsonl")

            def caught_up(before: int = judged) -> bool:
                kept_answers = [r for r in outcomes(work, "answers") if r["_stream"] == "records"]
                return len(outcomes(work, "qa_judge")) == len(kept_answers) > before

            # Not in once mode: the stages' work is done while the daemon keeps running.
            await wait_until(caught_up, timeout_s=60)
            judged = len(outcomes(work, "qa_judge"))
            assert not run.done()
    finally:
        daemon.stop()
        assert await run == 0
    check_chain(work, {"c0.jsonl": 3, "c1.jsonl": 3})


def wait_for_log(log: Path, needle: bytes, count: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not log.exists() or log.read_bytes().count(needle) < count:
        assert time.monotonic() < deadline, f"fewer than {count} {needle!r} in {timeout_s}s"
        time.sleep(0.05)


@pytest.mark.timeout(300)
def test_sigkills_and_a_sighup_editing_the_middle_stage_keep_exactly_once(
    work: Workdir, sim_url: str
) -> None:
    # A slow provider, so the kills land while every stage has work in flight.
    shipped_pipeline(work, sim_url)
    text = (work.path / "config" / "synthd.toml").read_text()
    (work.path / "config" / "synthd.toml").write_text(text.replace("rpm = 1000000", "rpm = 30000"))
    drop_contexts(work, 1000)
    log = work.path / "daemon.log"
    rng = random.Random(int(os.environ.get("PIPELINE_SEED", "17")))
    answer_prompt = work.path / "prompts" / "answer.txt"
    kills = 0
    for life in range(5):
        with open(log, "ab") as out:
            proc = subprocess.Popen(RUN, cwd=work.path, stdout=out, stderr=out)
        wait_for_log(log, b'"event":"started"', life + 1)
        time.sleep(rng.uniform(0.5, 2.0))
        if life == 2:
            answer_prompt.write_text(answer_prompt.read_text() + "\nBe brief.\n")
            proc.send_signal(signal.SIGHUP)
            wait_for_log(log, b'"event":"reloaded"', 1)
            time.sleep(rng.uniform(0.3, 1.0))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        kills += 1
    assert kills >= 3
    assert outcomes(work, "answers"), "the kills interrupted the middle stage's work"
    done = subprocess.run([*RUN, "--once"], cwd=work.path, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    check_chain(work, {"contexts.jsonl": 1000})
    fingerprints = {ln["fingerprint"] for ln in outcomes(work, "answers") if "fingerprint" in ln}
    assert len(fingerprints) == 2, "answers before and after the edit"
    judged_from = {ln["parent_fingerprint"] for ln in outcomes(work, "qa_judge")}
    assert judged_from <= fingerprints


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "point", ["stage_handed_over", "shard_fsynced", "checkpoint_committed", "recovery_adopted"]
)
def test_killed_at_a_hand_off_boundary_every_stage_item_is_made_once(
    work: Workdir, sim_url: str, point: str
) -> None:
    shipped_pipeline(work, sim_url, commit_interval_s=0.005)
    rng = random.Random(point)
    kills = 0
    for life in range(LIVES):
        drop_contexts(work, 10, name=f"c{life}.jsonl")
        if point == "recovery_adopted":  # a tail past the commit first, for recovery to adopt
            env = {**os.environ, "SYNTHD_CRASH_AT": f"shard_fsynced:{rng.randint(1, 3)}"}
            subprocess.run([*RUN, "--once"], cwd=work.path, env=env, capture_output=True)
        # Recovery passes its point once a life; the others, once a commit.
        nth = 1 if point == "recovery_adopted" else rng.randint(1, 8)
        env = {**os.environ, "SYNTHD_CRASH_AT": f"{point}:{nth}"}
        got = subprocess.run([*RUN, "--once"], cwd=work.path, env=env, capture_output=True)
        assert got.returncode in (0, -signal.SIGKILL), got.stderr[-3000:]
        kills += got.returncode == -signal.SIGKILL
    done = subprocess.run([*RUN, "--once"], cwd=work.path, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert kills > 0, f"no life died at {point}: the test did not reach it"
    check_chain(work, {f"c{life}.jsonl": 10 for life in range(LIVES)})


def test_a_cycle_or_a_missing_upstream_exits_2_naming_file_and_key(work: Workdir) -> None:
    shipped_pipeline(work, "http://127.0.0.1:9/v1")
    cfg = work.path / "config" / "synthd.toml"
    shipped = cfg.read_text()
    for broken, key in (
        (shipped.replace('from = "answers"', 'from = "judges"'), "jobs.qa_judge.from"),
        (
            shipped.replace("[jobs.questions]\n", '[jobs.questions]\nfrom = "qa_judge"\n'),
            "jobs.questions.from",
        ),
    ):
        cfg.write_text(broken)
        got = subprocess.run([*RUN, "--once"], cwd=work.path, capture_output=True, timeout=60)
        assert got.returncode == 2
        assert f"config/synthd.toml: {key}: ".encode() in got.stderr, got.stderr
