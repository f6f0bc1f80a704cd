"""Every way a request can fail, against the simulator over real sockets.

Whatever happens, each submitted item ends as exactly one line: a record, a reject or a dead
letter. Retryable failures (5xx, hangs past the timeout, dropped connections, malformed
bodies) are retried with backoff; a 400 is not retried at all.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from synthd import config
from synthd.daemon import Daemon
from synthd.sim import SimConfig, running_sim
from tests.helpers import Workdir, simple_job, write_provider_config

ITEMS = 20
TIMEOUT_S = 0.5

# Each fault, and what the dead letter's error says about it.
FAULTS = {
    "500": "server_error: HTTP 500",
    "503": "server_error: HTTP 503",
    "hang": f"timeout: no reply within {TIMEOUT_S:g}s",
    "drop": "connection: ",
    "truncate": "malformed: reply is not JSON",
    "html": "server_error: HTTP 502: non-JSON HTML page",
    "empty_choices": "malformed: reply has no choices",
}


def spool_items(work: Workdir, n: int = ITEMS) -> None:
    rows = (orjson.dumps({"text": f"passage {i}: the night shift at the depot"}) for i in range(n))
    (work.spool("q") / "items.jsonl").write_bytes(b"\n".join(rows) + b"\n")


async def run(
    work: Workdir,
    sim_cfg: SimConfig,
    max_attempts: int,
    job_keys: dict[str, Any] | None = None,
    max_tokens: int = 40,
    items: int = ITEMS,
) -> tuple[dict[str, Any], Daemon]:
    """Run the daemon once against a simulator; returns the simulator's stats and the daemon."""
    async with running_sim(sim_cfg) as sim:
        write_provider_config(
            work,
            sim.base_url,
            # Keeps every non-empty completion, so records = successful items.
            simple_job(input='"jsonl"', max_tokens=max_tokens, **(job_keys or {})),
            max_attempts=max_attempts,
            request_timeout_s=TIMEOUT_S,
        )
        spool_items(work, items)
        cfg = config.load(work.path / "config" / "synthd.toml")
        daemon = Daemon(cfg, once=True, handle_signals=False)
        assert await daemon.run() == 0
        return sim.stats(), daemon


def outcomes(work: Workdir, items: int = ITEMS) -> tuple[list[Any], list[Any], list[Any]]:
    """Records, rejects and dead letters; asserts each item ended exactly once."""
    streams = work.lines("q"), work.lines("q", "rejects"), work.lines("q", "dead")
    seqs = Counter(line["source"]["seq"] for stream in streams for line in stream)
    assert seqs == Counter(range(items)), seqs
    return streams


def fault(name: str, p: float, **kw: Any) -> SimConfig:
    return SimConfig(port=0, hang_s=5, fault_seed=7, **{f"p_{name}": p}, **kw)


@pytest.mark.parametrize("name", list(FAULTS))
async def test_occasional_fault_is_retried_to_success(work: Workdir, name: str) -> None:
    # p = 0.2 per request: an item fails all 8 attempts with p = 0.2**8 (about 3e-6), so a
    # dead letter here is a bug, not bad luck (6 attempts would flake about once in 100 runs).
    stats, daemon = await run(work, fault(name, 0.2), max_attempts=8)
    records, rejects, dead = outcomes(work)
    assert (len(records), len(rejects), len(dead)) == (ITEMS, 0, 0)
    faults = stats["faults"].get(name, 0)
    assert faults > 0, "the test needs the fault to happen"
    # Each fault cost exactly one more request, and nothing else did.
    assert stats["requests"] == ITEMS + faults
    assert daemon.jobs["q"].stats.retries == faults


@pytest.mark.parametrize("name", list(FAULTS))
async def test_persistent_fault_ends_in_the_dead_letter_file(work: Workdir, name: str) -> None:
    # Fewer items than trip the provider circuit: their failures are their own (the
    # provider still serves GET /models). Failing for everyone is an outage: see
    # test_provider_trouble.
    items = 3
    stats, _ = await run(work, fault(name, 1.0), max_attempts=3, items=items)
    records, rejects, dead = outcomes(work, items)
    assert (len(records), len(rejects), len(dead)) == (0, 0, items)
    for line in dead:
        assert line["error"].startswith(FAULTS[name]), line["error"]
        assert line["kind"] == "attempts_exhausted"
        assert line["attempts"] == 3
        assert line["fields"]["context"].startswith("passage ")
    assert stats["requests"] == 3 * items


async def test_a_400_is_dead_at_once_without_retry(work: Workdir) -> None:
    # `stop` must be a string or a list of strings; the simulator refuses 5 as OpenAI does.
    stats, daemon = await run(
        work, SimConfig(port=0), max_attempts=6, job_keys={"extra": "{ stop = 5 }"}
    )
    records, rejects, dead = outcomes(work)
    assert (len(records), len(rejects), len(dead)) == (0, 0, ITEMS)
    for line in dead:
        assert line["kind"] == "rejected"
        assert line["attempts"] == 1
        assert line["error"].startswith("rejected: HTTP 400: Invalid type for 'stop'"), line
    assert stats["requests"] == ITEMS
    assert stats["by_status"] == {"400": ITEMS}
    assert daemon.jobs["q"].stats.retries == 0


async def test_mixed_faults_always_add_up(work: Workdir) -> None:
    # Every fault at once, content filtering and missing usage included, with few attempts:
    # some items succeed, some are rejected by the filters, some run out of attempts.
    p = {f"p_{name}": 0.07 for name in FAULTS}
    sim_cfg = SimConfig(port=0, hang_s=5, fault_seed=3, p_content_filter=0.1, p_no_usage=0.1, **p)
    stats, daemon = await run(work, sim_cfg, max_attempts=2)
    records, rejects, dead = outcomes(work)  # one line per item, whichever stream
    assert len(records) + len(rejects) + len(dead) == ITEMS
    assert {r["reason"] for r in rejects} <= {"finish_reason:content_filter"}
    for line in dead:
        assert line["attempts"] == 2 and line["kind"] == "attempts_exhausted"
        assert line["error"].startswith(tuple(FAULTS.values())), line["error"]
    assert records, "most items should get through"
    # One request per attempt: each item's last attempt plus every retry before it.
    s = daemon.jobs["q"].stats
    assert stats["requests"] == ITEMS + s.retries
    assert s.dead == len(dead) and s.items_done == ITEMS


async def test_a_request_too_large_for_the_token_limit_is_not_retried(work: Workdir) -> None:
    # Each request reserves about 1100 tokens against a server limit of 1000 a minute: the
    # simulator refuses it as too large, as OpenAI does, with a 429 and no retry-after.
    items = 4
    sim_cfg = SimConfig(port=0, rpm=1_000_000, tpm=1000)
    stats, _ = await run(work, sim_cfg, max_attempts=3, max_tokens=1000, items=items)
    _, _, dead = outcomes(work, items)
    assert len(dead) == items
    assert all(line["error"].startswith("rejected: HTTP 429: Request too large") for line in dead)
    assert {line["kind"] for line in dead} == {"rejected"}
    assert [line["attempts"] for line in dead] == [1] * items
    assert stats["requests"] == items
