"""Provider answers that are not what they claim, from the simulator's fault modes.

An HTML error page or a 200 with no choices is retried (up to ``max_attempts``,
then a dead letter); a completion stopped by the content filter is a reject
(sending it again would be filtered again); a reply without ``usage`` is kept
with estimated usage. Whatever the mix, every item ends as exactly one line:
records + rejects + dead letters = items.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from structlog.testing import capture_logs

from synthd.sim import SimConfig, running_sim
from tests.helpers import GOOD, Workdir, drop_good, events, run_once, simple_job

TOPICS = 200
ITEMS = TOPICS + len(GOOD)
MAX_ATTEMPTS = 2


def drop_items(work: Workdir) -> None:
    spool = work.spool("q")
    (spool / "topics.txt").write_text("\n".join(f"topic number {i}" for i in range(TOPICS)))
    drop_good(spool)


def one_line_per_item(work: Workdir) -> dict[str, list[dict[str, Any]]]:
    """The three streams, after checking that every item has exactly one line."""
    streams = {s: work.lines("q", s) for s in ("records", "rejects", "dead")}
    per_item = Counter(
        (ln["source"]["file"], ln["source"]["seq"]) for lines in streams.values() for ln in lines
    )
    expected = {("topics.txt", i) for i in range(TOPICS)} | {(name, 0) for name in GOOD}
    assert set(per_item) == expected
    assert set(per_item.values()) == {1}, "an item with two outcomes"
    return streams


def config(work: Workdir, url: str) -> None:
    job = simple_job("q", input='"lines"')
    work.write_config(url, job, provider=f"max_attempts = {MAX_ATTEMPTS}")


async def test_a_mix_of_lies_adds_up(work: Workdir) -> None:
    lies = SimConfig(
        port=0,
        p_html=0.15,
        p_empty_choices=0.15,
        p_content_filter=0.1,
        p_no_usage=0.2,
        fault_seed=11,
    )
    async with running_sim(lies) as sim:
        config(work, sim.base_url)
        drop_items(work)
        with capture_logs() as logs:
            await run_once(work)
        seen = sim.stats()
    faults = seen["faults"]
    assert all(faults.get(f, 0) > 5 for f in ("html", "empty_choices", "content_filter"))
    streams = one_line_per_item(work)
    records, rejects, dead = streams["records"], streams["rejects"], streams["dead"]
    assert len(records) + len(rejects) + len(dead) == ITEMS
    # A filtered completion is a reject at once, never sent again.
    assert len(rejects) == faults["content_filter"]
    assert {(r["stage"], r["reason"]) for r in rejects} == {
        ("filter", "finish_reason:content_filter")
    }
    # Every failed request was either sent again or ended its item as a dead letter.
    (summary,) = events(logs, "summary")
    failed = faults["html"] + faults["empty_choices"]
    assert summary["retries"] + summary["dead"] == failed
    assert summary["dead"] == len(dead) > 0
    assert {(d["kind"], d["attempts"]) for d in dead} == {("attempts_exhausted", MAX_ATTEMPTS)}
    assert all(
        "non-JSON HTML page" in d["error"] or "reply has no choices" in d["error"] for d in dead
    )
    # Each request the simulator answered is accounted for once.
    assert seen["requests"] == len(records) + len(rejects) + failed
    assert summary["records"] == len(records) and summary["rejects"] == len(rejects)
    assert all(r["usage"]["prompt_tokens"] > 0 for r in records), "usage estimated if missing"


@pytest.mark.parametrize(
    ("lie", "error"),
    # A 502 every time is not a lie but an outage: test_provider_trouble.
    [("truncate", "reply is not JSON"), ("empty_choices", "reply has no choices")],
)
async def test_a_lie_every_time_ends_in_dead_letters_not_a_stop(
    work: Workdir, lie: str, error: str
) -> None:
    async with running_sim(SimConfig(port=0, **{f"p_{lie}": 1.0})) as sim:
        config(work, sim.base_url)
        drop_items(work)
        await run_once(work)
        assert sim.stats()["requests"] == ITEMS * MAX_ATTEMPTS
    dead = one_line_per_item(work)["dead"]
    assert len(dead) == ITEMS
    assert all(error in d["error"] and d["attempts"] == MAX_ATTEMPTS for d in dead)
    # The spool is finished all the same: dead letters are outcomes.
    assert len(list((work.spool("q") / "done").iterdir())) == 1 + len(GOOD)


async def test_content_filter_every_time_is_rejected_without_retries(work: Workdir) -> None:
    async with running_sim(SimConfig(port=0, p_content_filter=1.0)) as sim:
        config(work, sim.base_url)
        drop_items(work)
        await run_once(work)
        assert sim.stats()["requests"] == ITEMS
    rejects = one_line_per_item(work)["rejects"]
    assert len(rejects) == ITEMS
    assert {(r["reason"], r["finish_reason"], r["completion"]) for r in rejects} == {
        ("finish_reason:content_filter", "content_filter", None)
    }


async def test_usage_missing_every_time_is_estimated(work: Workdir) -> None:
    async with running_sim(SimConfig(port=0, p_no_usage=1.0)) as sim:
        config(work, sim.base_url)
        drop_items(work)
        with capture_logs() as logs:
            await run_once(work)
        assert sim.stats()["requests"] == ITEMS
    records = one_line_per_item(work)["records"]
    assert len(records) == ITEMS
    for r in records:
        # Nothing reported, nothing learnt: 4 characters a token, as the budget assumes.
        prompt_chars = len(r["messages"][-1]["content"])
        assert r["usage"]["prompt_tokens"] == math.ceil(prompt_chars / 4)
        assert r["usage"]["completion_tokens"] > 0
        assert r["usage"]["total_tokens"] == sum(
            r["usage"][k] for k in ("prompt_tokens", "completion_tokens")
        )
    (summary,) = events(logs, "summary")
    assert summary["prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in records)


async def test_a_dead_letter_gets_a_log_line(work: Workdir) -> None:
    async with running_sim(SimConfig(port=0, p_html=1.0)) as sim:
        config(work, sim.base_url)
        drop_good(work.spool("q"))
        with capture_logs() as logs:
            await run_once(work)
    told = {e.get("file") for e in logs if e["log_level"] in ("warning", "error")}
    assert set(GOOD) <= told
