"""The progress line each job logs every few seconds, and its ETA. Pure but for the log."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from synthd.metrics import JobStats

if TYPE_CHECKING:
    from synthd.pipeline import JobRuntime

log = structlog.get_logger("synthd.progress")


def backlog_items(s: JobStats) -> float:
    """Items left: those admitted and not done, plus the unread input in items.

    Unread input is known in bytes (file sizes), not items, so it is converted
    at the bytes-per-item seen so far.
    """
    admitted_left = s.items_queued - s.items_done
    unread = s.bytes_claimed - s.bytes_read + s.bytes_unclaimed
    if unread <= 0 or s.items_queued == 0:
        return float(admitted_left)
    return admitted_left + unread / (s.bytes_read / s.items_queued)


def eta_s(remaining_items: float, items_per_s: float) -> float | None:
    """Seconds until the known backlog is done at the recent rate; None if unknown."""
    if remaining_items <= 0:
        return 0.0
    return None if items_per_s <= 0 else remaining_items / items_per_s


class ProgressLog:
    """Logs one line per job; rates are measured between two calls.

    Owned by the daemon and called on its loop; it only reads the jobs' counters.
    """

    def __init__(self) -> None:
        self._last: tuple[float, dict[str, int]] | None = None

    def log(self, jobs: Mapping[str, JobRuntime], event: str = "progress") -> None:
        now = time.monotonic()
        last, self._last = self._last, (now, {n: rt.stats.items_done for n, rt in jobs.items()})
        for name, rt in jobs.items():
            s = rt.stats
            rate = 0.0
            if last is not None and now > last[0]:
                rate = (s.items_done - last[1].get(name, 0)) / (now - last[0])
            eta = eta_s(backlog_items(s), rate)
            d = rt.dispatcher
            log.info(
                event,
                job=name,
                done=s.items_done,
                queued=s.items_queued - s.items_done,
                in_flight=d.stats.in_flight,
                items_per_s=round(rate, 1),
                eta_s=None if eta is None else round(eta),
                requests=sum(s.requests.values()),
                prompt_tokens=s.prompt_tokens,
                completion_tokens=s.completion_tokens,
                records=s.records,
                rejects=sum(s.rejects.values()),
                retries=s.retries,
                dead=s.dead,
                bad_input=s.bad_input,
                rate_limited=d.stats.rate_limited,
            )
