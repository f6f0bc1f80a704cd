"""Provider trouble loses nothing: 429s never use up attempts, failed attempts give their
tokens back, a provider's wait is capped.

The daemon runs in-process against the simulator over real sockets (as in test_ratelimit).
"""

from __future__ import annotations

import math

import pytest

from synthd.client import status_error
from synthd.errors import QuotaExhausted, RateLimited, Rejected
from synthd.retry import capped_wait_s
from synthd.sim import SimConfig, running_sim
from tests.conftest import Workdir, write_provider_config
from tests.test_ratelimit import budget_of, job, run_once, spool_items


async def test_429s_never_use_up_attempts(work: Workdir) -> None:
    # The server grants 2 requests a second; the daemon believes in 100 and may not learn
    # from headers, so it earns 429s. One attempt per item: a 429 that counted would
    # dead-letter its item.
    items = 12
    async with running_sim(SimConfig(port=0, rpm=120)) as sim:
        write_provider_config(
            work, sim.base_url, job(), rpm=6000, adapt_to_headers=False, max_attempts=1
        )
        spool_items(work, items)
        await run_once(work)
        stats = sim.stats()
    assert stats["rate_limited"] > 0, "the test needs 429s"
    dead = work.lines("q", "dead")
    assert not dead, [(d["kind"], d["error"]) for d in dead]
    assert len(work.lines("q")) == items


async def test_failed_attempts_give_their_tokens_back(work: Workdir) -> None:
    items = 40
    async with running_sim(SimConfig(port=0, p_500=0.3, fault_seed=3)) as sim:
        write_provider_config(work, sim.base_url, job(), max_attempts=20)
        spool_items(work, items)
        daemon, _ = await run_once(work)
        stats = sim.stats()
    failed = stats["by_status"]["500"]
    assert failed > 0, "the test needs failures"
    budget = budget_of(daemon)
    assert budget.refunds == failed
    assert budget.refunded_tokens >= failed * 40  # each reserved at least max_tokens
    assert len(work.lines("q")) == items


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (None, None),
        (2.5, 2.5),
        (86400.0, 120.0),
        (math.inf, 120.0),
        (math.nan, 120.0),
        (-3.0, 0.0),
    ],
)
def test_a_providers_wait_is_capped(hint: float | None, expected: float | None) -> None:
    assert capped_wait_s(hint, 120.0) == expected


def test_a_429_is_throttling_unless_the_quota_is_used_up() -> None:
    too_many = b'{"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}'
    quota = b'{"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}'  # noqa: E501
    too_large = b'{"error": {"message": "Request too large for m on tokens per min (TPM)"}}'
    assert isinstance(status_error(429, too_many, {"retry-after": "2"}), RateLimited)
    assert isinstance(status_error(429, quota, {}), QuotaExhausted)
    assert isinstance(status_error(429, too_large, {}), Rejected)
