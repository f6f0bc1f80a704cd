"""synthd.pipeline: an item rendered into its request, and a provider's senders taking attempts
to the simulator over real sockets and handing exactly one outcome per item to a real writer."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from synthd.models import Outcome, Source, WorkItem
from synthd.pipeline import Attempt, Dispatcher, JobRuntime, prepare
from synthd.ratemath import token_estimate
from synthd.request import TRUNCATION_MARKER
from synthd.sim import SimConfig, running_sim
from synthd.writer import SourceEnd, Writer
from tests.helpers import Parts, Workdir, assemble, simple_job, write_provider_config

NOWHERE = "http://127.0.0.1:9/v1"  # prepare() sends nothing: no server is needed


@dataclass
class Line:
    """The parts of provider "default" and job "q", with a claimed file to take items from."""

    parts: Parts
    rt: JobRuntime
    src: Source

    @property
    def writer(self) -> Writer:
        return self.parts.writer

    @property
    def dispatcher(self) -> Dispatcher:
        return self.parts.dispatcher

    @property
    def committed(self) -> list[Outcome]:
        return self.parts.committed


@pytest.fixture
async def line_of(work: Workdir) -> AsyncIterator[object]:
    """Builds a ``Line`` from a config once the test knows its server's URL."""
    made: list[Line] = []

    def build(path: Path) -> Line:
        parts = assemble(work, path)
        claim = f"c0ffee{len(made):02d}"
        claimed = work.spool("q") / ".work" / f"{claim}-in.txt"
        claimed.parent.mkdir(parents=True, exist_ok=True)
        claimed.write_text("".join(f"topic {i}\n" for i in range(100)))
        rt = parts.jobs["q"]
        src = parts.cp.add_source("q", claim, "in.txt", str(claimed), rt.job.fingerprint)
        made.append(Line(parts, rt, src))
        return made[-1]

    yield build
    for line in made:
        line.parts.cp.close()


def item(src: Source, seq: int, **fields: str) -> WorkItem:
    context = f"topic {seq}"
    return WorkItem(src, seq, seq + 1, (seq + 1) * 8, {"context": context, **fields})


def attempt(line: Line, seq: int) -> Attempt:
    a = prepare(line.rt, item(line.src, seq))
    assert isinstance(a, Attempt)
    return a


# -- prepare: an item into its request ---------------------------------------------------


async def test_prepare_renders_the_jobs_request_and_reserves_its_tokens(
    work: Workdir, line_of: object
) -> None:
    line = line_of(write_provider_config(work, NOWHERE, simple_job(max_tokens=40)))  # type: ignore[operator]
    a = prepare(line.rt, item(line.src, 3))
    assert isinstance(a, Attempt)
    body = orjson.loads(a.body)
    assert body["model"] == "sim-1" and body["max_tokens"] == 40
    assert body["messages"] == a.prompt
    assert body["messages"][-1]["content"] == line.rt.job.template.render({"context": "topic 3"})
    assert a.context == "topic 3" and a.attempts == 0
    estimate = line.dispatcher.budget.calibration.estimate(a.prompt_chars)
    assert a.reserved == token_estimate(estimate, 40, 1)


async def test_a_field_the_template_lacks_is_bad_input_at_once(
    work: Workdir, line_of: object
) -> None:
    (work.path / "prompts" / "topic.txt").write_text("Questions about {{topic}}:")
    job = simple_job(input='"jsonl"', prompt='"prompts/topic.txt"').replace(
        'prompt = "prompts/questions.txt"\n', ""
    )
    line = line_of(write_provider_config(work, NOWHERE, job))  # type: ignore[operator]
    out = prepare(line.rt, item(line.src, 0))
    assert isinstance(out, Outcome) and out.state == "bad_input"
    assert [r["reason"] for r in out.lines["rejects"]] == ["missing_field"]
    assert line.rt.stats.bad_input == 1


async def test_a_prompt_over_its_limit_is_refused_or_cut_to_fit(
    work: Workdir, line_of: object
) -> None:
    long = "word " * 400
    refused = simple_job(max_prompt_tokens=50, on_long_prompt='"reject"')
    line = line_of(write_provider_config(work, NOWHERE, refused))  # type: ignore[operator]
    out = prepare(line.rt, item(line.src, 0, context=long))
    assert isinstance(out, Outcome) and out.state == "bad_input"
    assert [r["reason"] for r in out.lines["rejects"]] == ["prompt_too_long"]

    cut = simple_job(max_prompt_tokens=200, on_long_prompt='"truncate"')
    line = line_of(write_provider_config(work, NOWHERE, cut))  # type: ignore[operator]
    a = prepare(line.rt, item(line.src, 0, context=long))
    assert isinstance(a, Attempt)
    assert a.context.endswith(TRUNCATION_MARKER) and long.startswith(a.context[:20])
    assert line.dispatcher.budget.calibration.estimate(a.prompt_chars) <= 200


async def test_an_item_above_the_whole_token_budget_is_never_sent(
    work: Workdir, line_of: object
) -> None:
    path = write_provider_config(work, NOWHERE, simple_job(max_tokens=400), tpm=100)
    line = line_of(path)  # type: ignore[operator]
    out = prepare(line.rt, item(line.src, 0))
    assert isinstance(out, Outcome) and out.state == "bad_input"
    assert [r["reason"] for r in out.lines["rejects"]] == ["too_large_for_budget"]


# -- the dispatcher: attempts to the simulator, one outcome per item ---------------------


async def send_all(line: Line, items: int) -> None:
    """Submit ``items`` attempts; wait until the writer made each one's outcome durable."""
    line.writer.track(line.src, {})
    writer_task = asyncio.create_task(line.writer.run())
    await line.dispatcher.start()
    try:
        for seq in range(items):
            line.dispatcher.submit(attempt(line, seq))
        line.writer.submit(SourceEnd(line.src.id, items))
        while len(line.committed) < items:
            await asyncio.wait_for(line.writer.wait_idle(), 30)
            await asyncio.sleep(0.05)  # an outcome may still be on its way from a sender
    finally:
        await line.dispatcher.stop()
        await asyncio.wait_for(line.writer.close(), 10)
        await asyncio.wait_for(writer_task, 10)
        line.writer.close_files()


def per_item(work: Workdir) -> Counter[tuple[str, int]]:
    streams = {"records": work.lines("q"), "rejects": work.lines("q", "rejects")}
    streams["dead"] = work.lines("q", "dead")
    return Counter((name, ln["source"]["seq"]) for name, lns in streams.items() for ln in lns)


async def test_every_attempt_ends_as_one_record(work: Workdir, line_of: object) -> None:
    items = 30
    async with running_sim(SimConfig(port=0)) as sim:
        line = line_of(write_provider_config(work, sim.base_url, simple_job(), max_in_flight=8))  # type: ignore[operator]
        await send_all(line, items)
        stats = sim.stats()
    assert stats["by_status"] == {"200": items}
    assert per_item(work) == Counter({("records", seq): 1 for seq in range(items)})
    assert sorted(o.seq for o in line.committed) == list(range(items))


async def test_failed_attempts_are_retried_until_each_item_has_its_one_record(
    work: Workdir, line_of: object
) -> None:
    items = 20
    async with running_sim(SimConfig(port=0, p_500=0.3, fault_seed=7)) as sim:
        path = write_provider_config(work, sim.base_url, simple_job(), max_attempts=30)
        line = line_of(path)  # type: ignore[operator]
        await send_all(line, items)
        stats = sim.stats()
    assert stats["by_status"]["500"] > 0  # the seed makes some attempts fail
    assert stats["by_status"]["200"] == items
    assert per_item(work) == Counter({("records", seq): 1 for seq in range(items)})


async def test_a_filtered_reply_is_one_reject(work: Workdir, line_of: object) -> None:
    async with running_sim(SimConfig(port=0, p_content_filter=1.0)) as sim:
        line = line_of(write_provider_config(work, sim.base_url, simple_job()))  # type: ignore[operator]
        await send_all(line, 5)
    assert per_item(work) == Counter({("rejects", seq): 1 for seq in range(5)})
