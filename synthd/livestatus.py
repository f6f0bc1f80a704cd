"""What the status page shows, as one JSON document built from the daemon's counters. Pure.

``snapshot`` reads the same objects ``/metrics`` exports (``JobStats``, ``ProviderStats``,
the budgets) at one instant on the daemon's loop, so the page and a scrape taken at the
same moment agree number for number. Added here: each job's ETA and cost, each provider's
15-minute rate chart (``synthd.history``) and the last few lines written
(``RecentLines``), cut short. The API key is nowhere in these inputs, so it cannot leak
into the page.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from synthd.config import Price
from synthd.cost import price_usd
from synthd.history import History
from synthd.metrics import JobStats, ProviderStats
from synthd.models import Outcome
from synthd.monitor import JobInfo, Limits
from synthd.progress import backlog_items, eta_s

RECENT = 5  # lines kept of each kind
TEXT_CHARS = 240  # a sample's text is cut to this on the page


# The streams sampled: (stream in Outcome.lines, key in the page's document, the field that
# says why, if any).
_STREAMS = (
    ("records", "accepted", None),
    ("rejects", "rejected", "reason"),
    ("dead", "dead", "kind"),
)


class RecentLines:
    """The last few accepted, rejected and dead-lettered lines, as committed.

    ``add`` is called with each committed batch on the loop. It looks at the batch from its
    end and keeps a short copy (job, file, line, text cut to ``TEXT_CHARS``, reason) of at
    most ``keep`` lines per stream: a line may hold megabytes of context, and the page must
    not pin them.
    """

    __slots__ = ("keep", "kept")

    def __init__(self, keep: int = RECENT) -> None:
        self.keep = keep
        self.kept: dict[str, deque[dict[str, Any]]] = {
            stream: deque(maxlen=keep) for stream, _, _ in _STREAMS
        }

    def add(self, outcomes: Sequence[Outcome]) -> None:
        keep = self.keep
        records: list[dict[str, Any]] = []
        rejects: list[dict[str, Any]] = []
        dead: list[dict[str, Any]] = []
        # Plain membership tests per outcome: this runs on the loop for every commit.
        for o in reversed(outcomes):
            lines = o.lines
            if "records" in lines and len(records) < keep:
                records.append(_shown(lines["records"][-1], None))
            if "rejects" in lines and len(rejects) < keep:
                rejects.append(_shown(lines["rejects"][-1], "reason"))
            if "dead" in lines and len(dead) < keep:
                dead.append(_shown(lines["dead"][-1], "kind"))
            if len(records) == len(rejects) == len(dead) == keep:
                break
        for stream, got in (("records", records), ("rejects", rejects), ("dead", dead)):
            self.kept[stream].extend(reversed(got))

    def to_json(self) -> dict[str, list[dict[str, Any]]]:
        """Newest first, by kind: ``accepted``, ``rejected``, ``dead``."""
        return {key: list(reversed(self.kept[stream])) for stream, key, _ in _STREAMS}


def _shown(line: dict[str, Any], why: str | None) -> dict[str, Any]:
    src = line.get("source") or {}
    text = line.get("completion") or line.get("detail") or line.get("error") or ""
    out = {"job": line.get("job"), "file": src.get("file"), "line": src.get("line")}
    out["text"] = _cut(str(text))
    if why is not None:
        out["reason"] = line.get(why)
    return out


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


@dataclass(frozen=True, slots=True)
class Health:
    status: str  # "ok" | "failing"
    ready: bool
    output_blocked: str | None
    failure: str | None
    uptime_s: float


def job_json(
    name: str,
    s: JobStats,
    info: JobInfo | None,
    price: Price | None,
    items_per_s: float,
) -> dict[str, Any]:
    backlog = backlog_items(s)
    known = s.items_done + backlog
    eta = eta_s(backlog, items_per_s)
    cost = price_usd(price, s.prompt_tokens, s.completion_tokens)
    return {
        "job": name,
        "provider": info.provider if info else None,
        "model": info.model if info else None,
        "items_done": s.items_done,
        "backlog": round(backlog, 1),
        "progress": round(s.items_done / known, 4) if known > 0 else None,
        "items_per_s": round(items_per_s, 2),
        "eta_s": None if eta is None else round(eta),
        "records": s.records,
        "rejects": dict(sorted(s.rejects.items())),
        "rejected": sum(s.rejects.values()),
        "dead": s.dead,
        "bad_input": s.bad_input,
        "retries": s.retries,
        "requests": dict(sorted(s.requests.items())),
        "tokens": {"prompt": s.prompt_tokens, "completion": s.completion_tokens},
        "cost_usd": None if cost is None else round(sum(cost), 6),
    }


def provider_json(
    name: str, p: ProviderStats, limits: Limits | None, history: History, now: float
) -> dict[str, Any]:
    return {
        "provider": name,
        "up": p.up,
        "circuit": "closed" if p.up else "open",
        "outages": p.outages,
        "in_flight": p.in_flight,
        "queued": p.queued,
        "rate_limited": p.rate_limited,
        "budget": None if limits is None else {"rpm": limits.rpm, "tpm": limits.tpm},
        "chart": {**history.chart(name).to_json(), "age_s": history.age_s(name, now)},
    }


def snapshot(
    *,
    version: str,
    health: Health,
    jobs: Mapping[str, JobStats],
    info: Mapping[str, JobInfo],
    prices: Mapping[str, Price],
    providers: Mapping[str, ProviderStats],
    limits: Mapping[str, Limits],
    history: History,
    recent: RecentLines,
    now: float,
) -> dict[str, Any]:
    """The page's document; ``now`` is the clock ``history`` was sampled with."""
    job_list = []
    for name, s in jobs.items():
        i = info.get(name)
        price = prices.get(i.model) if i else None
        rate = history.items_per_s(name, now, s.items_done)
        job_list.append(job_json(name, s, i, price, rate))
    return {
        "version": version,
        "health": asdict(health),
        "jobs": job_list,
        "providers": [
            provider_json(name, p, limits.get(name), history, now) for name, p in providers.items()
        ],
        "recent": recent.to_json(),
    }
