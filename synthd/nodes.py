"""``synthd status`` across nodes: every node's lease and budget share, and all checkpoints.

Read-only, like the rest of ``status``: the nodes come from Redis (``{synthd}:nodes``, each
lease's remaining TTL and what the node last wrote in ``{synthd}:node:<node>``), the counts
from every ``state/<node>/`` checkpoint on the shared filesystem, so that a job's figures
are the whole spool's, whichever node did the work. A node's share of the budget is the
requests the shared budget granted it over the last lease period, over all the nodes'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from synthd.checkpoint import STATE_FILE, JobCounts
from synthd.config_coordination import CoordinationConfig
from synthd.coordination import NODES_KEY, info_key, lease_key


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: str
    lease_s: float | None  # the lease's remaining seconds; None: it ran out (dead or gone)
    holder: str | None  # host:pid:random of the process holding the lease
    granted_rpm: float | None  # what the shared budget granted it since it started, a minute
    share: float | None  # of all the nodes' grants

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "lease_s": self.lease_s,
            "holder": self.holder,
            "granted_rpm": self.granted_rpm,
            "share": self.share,
        }


def state_files(state: Path) -> list[Path]:
    """Every node's checkpoint under ``[paths] state`` (``state/<node>/synthd.db``)."""
    try:
        return sorted(p / STATE_FILE for p in state.iterdir() if (p / STATE_FILE).exists())
    except FileNotFoundError:
        return []


def merge_counts(per_node: list[list[JobCounts]]) -> list[JobCounts]:
    """One job's counts summed over the nodes' checkpoints."""
    merged: dict[str, JobCounts] = {}
    for counts in per_node:
        for c in counts:
            m = merged.get(c.job)
            if m is None:
                merged[c.job] = JobCounts(
                    c.job,
                    c.files_active,
                    c.files_done,
                    c.files_failed,
                    dict(c.items),
                    c.records,
                    c.prompt_tokens,
                    c.completion_tokens,
                )
                continue
            items = dict(m.items)
            for k, v in c.items.items():
                items[k] = items.get(k, 0) + v
            merged[c.job] = JobCounts(
                c.job,
                m.files_active + c.files_active,
                m.files_done + c.files_done,
                m.files_failed + c.files_failed,
                items,
                m.records + c.records,
                m.prompt_tokens + c.prompt_tokens,
                m.completion_tokens + c.completion_tokens,
            )
    return list(merged.values())


def read_nodes(coord: CoordinationConfig) -> list[NodeStatus] | None:
    """Every node Redis knows, with its lease and share; None if Redis does not answer."""
    r = Redis.from_url(coord.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        found: list[Any] = r.zrange(NODES_KEY, 0, -1)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in found]
        pipe = r.pipeline(transaction=False)
        for n in names:
            pipe.pttl(lease_key(n))
            pipe.hgetall(info_key(n))
        replies = pipe.execute()
    except (RedisError, OSError):
        return None
    finally:
        r.close()
    rows = []
    for i, name in enumerate(names):
        pttl, info = replies[2 * i], replies[2 * i + 1]
        info = {k.decode(): v.decode() for k, v in info.items()}
        rows.append((name, pttl, info))
    return shares(rows, coord.lease_ttl_s)


def shares(rows: list[tuple[str, int, dict[str, str]]], ttl_s: float) -> list[NodeStatus]:
    """Per node: its remaining lease and its share of the grants. The rate is its granted
    requests over the time since it started (what its info hash says)."""
    rates: dict[str, float] = {}
    for name, _, info in rows:
        try:
            granted = float(info["granted_requests"])
            span = float(info["at"]) - float(info["started"])
        except (KeyError, ValueError):
            continue
        if span > 0:
            rates[name] = 60.0 * granted / span
    total = sum(rates.values())
    out = []
    for name, pttl, info in rows:
        rate = rates.get(name)
        out.append(
            NodeStatus(
                node=name,
                lease_s=round(pttl / 1000.0, 1) if pttl > 0 else None,
                holder=info.get("holder"),
                granted_rpm=None if rate is None else round(rate, 1),
                share=None if rate is None or total <= 0 else round(rate / total, 3),
            )
        )
    return out


def render(nodes: list[NodeStatus] | None) -> list[str]:
    """Lines for the human report."""
    if nodes is None:
        return ["nodes: Redis does not answer"]
    lines = ["nodes (lease: seconds left; share: of the budget the nodes were granted):"]
    for n in nodes:
        lease = "expired" if n.lease_s is None else f"{n.lease_s:.1f}s"
        share = "-" if n.share is None else f"{100 * n.share:.1f}%"
        rpm = "-" if n.granted_rpm is None else f"{n.granted_rpm:,.0f} rpm"
        lines.append(f"  {n.node}  lease {lease}  share {share} ({rpm})  {n.holder or ''}".rstrip())
    return lines
