"""``synthd status``: where each job stands, read without disturbing the daemon.

Three sources, none of them written to:

* the spool folder: files dropped but not yet claimed;
* the checkpoint, opened read-only (SQLite WAL readers do not block the daemon's
  writer): files active, done and failed, items done by state, records, tokens;
* the daemon's ``/metrics``, if it answers within a short timeout: requests in
  flight and items queued, which only the live process knows. They are per
  provider (the senders and their queue are shared by the provider's jobs);
  without a daemon they are ``None`` and shown as ``-``.

A state file that does not exist yet reads as zeros and is not created. Cost is
tokens used times the config's ``[prices."<model>"]``; ``None`` when the model
has no price.
"""

from __future__ import annotations

import http.client
import sqlite3
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from synthd import batchstore, spool
from synthd import nodes as nodes_mod
from synthd.checkpoint import STATE_FILE, Checkpoint, JobCounts
from synthd.config import Config, Price, parse_listen
from synthd.cost import price_usd
from synthd.errors import SynthdError
from synthd.stagestore import stage_totals

ITEM_STATES = ("record", "rejected", "dead", "bad_input")
METRICS_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class Live:
    """What the running daemon reports for one provider."""

    in_flight: int
    queued: int
    up: bool = True  # False during an outage


@dataclass(frozen=True, slots=True)
class StageStatus:
    """A pipeline stage: the job it takes records from, and its items not done yet."""

    upstream: str
    per: str
    backlog: int  # items handed over by the upstream job's commits and not done

    def to_json(self) -> dict[str, Any]:
        return {"from": self.upstream, "per": self.per, "backlog": self.backlog}


@dataclass(frozen=True, slots=True)
class JobStatus:
    job: str
    model: str | None  # None for a job found in the checkpoint but not in the config
    provider: str | None
    files_pending: int
    files_active: int
    files_done: int
    files_failed: int
    items: dict[str, int]  # every state in ITEM_STATES, zero included
    records: int
    in_flight: int | None  # None: the daemon did not answer
    queued: int | None
    provider_up: bool | None  # None: the daemon did not answer
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None  # None: no price for the model
    stage: StageStatus | None = None  # None: the job reads the spool

    @property
    def items_done(self) -> int:
        return sum(self.items.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "model": self.model,
            "provider": self.provider,
            "files": {
                "pending": self.files_pending,
                "active": self.files_active,
                "done": self.files_done,
                "failed": self.files_failed,
            },
            "items": {**self.items, "done": self.items_done},
            "records": self.records,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "provider_up": self.provider_up,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "cost_usd": self.cost_usd,
            "stage": None if self.stage is None else self.stage.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Status:
    config: str
    state: str
    metrics_url: str | None
    daemon_running: bool
    jobs: list[JobStatus]
    shared: bool = False  # several daemons on one Redis ([coordination])
    nodes: list[nodes_mod.NodeStatus] | None = None  # None: Redis did not answer
    batches: list[dict[str, Any]] = field(default_factory=list)  # batchstore.describe each

    def to_json(self) -> dict[str, Any]:
        out = {
            "config": self.config,
            "state": self.state,
            "metrics_url": self.metrics_url,
            "daemon_running": self.daemon_running,
            "jobs": [j.to_json() for j in self.jobs],
            "batches": self.batches,
        }
        if self.shared:
            out["nodes"] = None if self.nodes is None else [n.to_json() for n in self.nodes]
        return out


def collect(
    cfg: Config, metrics_url: str | None = None, timeout_s: float = METRICS_TIMEOUT_S
) -> Status:
    """Gather every job's status. Blocks for at most ``timeout_s`` on the daemon.

    ``metrics_url`` defaults to ``/metrics`` at ``[service] listen`` (none when
    the endpoint is off). Raises ``SynthdError`` if the state file exists but
    cannot be read.
    """
    state = cfg.paths.state / STATE_FILE
    handed = read_stage_totals(cfg.state_dir / STATE_FILE)  # this node's stages
    if cfg.coordination is not None:  # every node's checkpoint: the whole spool's figures
        per_node = [read_counts(path) for path in nodes_mod.state_files(cfg.paths.state)]
        counts = {c.job: c for c in nodes_mod.merge_counts(per_node)}
    else:
        counts = {c.job: c for c in read_counts(state)}
    url = metrics_url if metrics_url is not None else default_metrics_url(cfg.service.listen)
    live = read_live(url, timeout_s) if url else None
    names = list(cfg.jobs) + sorted(set(counts) - set(cfg.jobs))
    jobs = []
    for name in names:
        job = cfg.jobs.get(name)
        c = counts.get(name) or JobCounts(name, 0, 0, 0, {}, 0, 0, 0)
        model = job.config.model if job is not None else None
        provider = job.config.provider if job is not None else None
        p = live.get(provider) if live is not None and provider is not None else None
        jobs.append(
            JobStatus(
                job=name,
                model=model,
                provider=provider,
                files_pending=pending_files(cfg.paths.spool / name),
                files_active=c.files_active,
                files_done=c.files_done,
                files_failed=c.files_failed,
                items={s: c.items.get(s, 0) for s in ITEM_STATES},
                records=c.records,
                in_flight=p.in_flight if p is not None else None,
                queued=p.queued if p is not None else None,
                provider_up=p.up if p is not None else None,
                prompt_tokens=c.prompt_tokens,
                completion_tokens=c.completion_tokens,
                cost_usd=cost_usd(
                    cfg.prices.get(model or ""), c.prompt_tokens, c.completion_tokens
                ),
                stage=_stage(job, handed.get(name, 0) - sum(c.items.values())),
            )
        )
    batches = read_batches(cfg.state_dir / STATE_FILE)  # this node's
    if cfg.coordination is None:
        return Status(str(cfg.source), str(state), url, live is not None, jobs, batches=batches)
    nodes = nodes_mod.read_nodes(cfg.coordination)
    return Status(
        str(cfg.source), str(state), url, live is not None, jobs, True, nodes, batches=batches
    )


def read_batches(state: Path) -> list[dict[str, Any]]:
    """Batch mode's batches: every open one, then the latest closed."""
    try:
        rows = batchstore.read_batches(state)
    except sqlite3.Error as e:
        raise SynthdError(f"cannot read the checkpoint {state}: {e}") from e
    now = time.time()
    return [batchstore.describe(r, now) for r in rows]


def read_counts(state: Path) -> list[JobCounts]:
    """The checkpoint's per-job counts; empty if the state file does not exist yet."""
    if not state.exists():
        return []
    try:
        cp = Checkpoint(state, readonly=True)
        try:
            return cp.counts()
        finally:
            cp.close()
    except sqlite3.Error as e:
        # A read-only reader of a WAL database needs its -shm file: when the daemon is
        # stopped that file is gone, and creating it needs write access to the folder.
        raise SynthdError(
            f"cannot read the checkpoint {state}: {e} (while the daemon is stopped, "
            f"reading it needs write access to {state.parent})"
        ) from e


def _stage(job: Any, backlog: int) -> StageStatus | None:
    if job is None or job.config.from_ is None:
        return None
    return StageStatus(job.config.from_, job.config.per, max(0, backlog))


def read_stage_totals(state: Path) -> dict[str, int]:
    """Items handed to each pipeline stage; empty without a state (or an older one)."""
    if not state.exists():
        return {}
    try:
        cp = Checkpoint(state, readonly=True)
        try:
            return cp.read(stage_totals)
        finally:
            cp.close()
    except sqlite3.OperationalError:
        return {}  # a state from before pipelines has no hand-off table yet


def pending_files(job_dir: Path) -> int:
    """Names in the job's spool folder that the daemon has not claimed yet."""
    try:
        return len(spool.scan(job_dir))
    except FileNotFoundError:
        return 0


def default_metrics_url(listen: str) -> str | None:
    if not listen:
        return None
    host, port = parse_listen(listen)
    if port == 0:
        return None  # a port picked at start-up: only --metrics-url can name it
    # A wildcard bind is reached through loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def read_live(url: str, timeout_s: float) -> dict[str, Live] | None:
    """Provider -> in flight and queued from the daemon's metrics; None if it did not answer."""
    # No proxy: the daemon is local, and an http_proxy in the environment must not see it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            text = resp.read().decode("utf-8")
    except (OSError, http.client.HTTPException, ValueError):
        return None
    return parse_live(text)


def parse_live(text: str) -> dict[str, Live] | None:
    """The ``synthd_in_flight``, ``synthd_queue_depth`` and ``synthd_provider_up`` gauges."""
    in_flight: dict[str, int] = {}
    queued: dict[str, int] = {}
    up: dict[str, int] = {}
    gauges = {"synthd_in_flight": in_flight, "synthd_queue_depth": queued, "synthd_provider_up": up}
    try:
        for family in text_string_to_metric_families(text):
            target = gauges.get(family.name)
            if target is None:
                continue
            for sample in family.samples:
                target[sample.labels["provider"]] = int(sample.value)
    except (ValueError, KeyError):
        return None
    providers = set(in_flight) | set(queued)
    return {p: Live(in_flight.get(p, 0), queued.get(p, 0), up.get(p, 1) == 1) for p in providers}


def cost_usd(price: Price | None, prompt_tokens: int, completion_tokens: int) -> float | None:
    parts = price_usd(price, prompt_tokens, completion_tokens)
    return None if parts is None else round(sum(parts), 6)


# -- the human table -----------------------------------------------------------------

_HEADER = (
    "job",
    "pending",
    "active",
    "done",
    "failed",
    *ITEM_STATES,
    "records",
    "in_flight",
    "queued",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
)


def render(status: Status) -> str:
    """A plain-text report: a line about the daemon, then one row per job."""
    lines = [f"config {status.config}   state {status.state}"]
    if status.metrics_url is None:
        lines.append(
            "daemon: no metrics address ([service] listen is off or port 0);"
            " in flight and queued: -"
        )
    elif status.daemon_running:
        lines.append(f"daemon: running ({status.metrics_url})")
    else:
        lines.append(f"daemon: not answering at {status.metrics_url}; in flight and queued: -")
    rows = [list(_HEADER)] + [_row(j) for j in status.jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.append(
        "files: pending (not claimed yet) active done failed;"
        " items done by state: record rejected dead bad_input"
    )
    down = sorted({j.provider for j in status.jobs if j.provider_up is False and j.provider})
    if down:
        lines.append(
            f"provider down (an outage: sending paused, probing; nothing is dead-lettered): "
            f"{', '.join(down)}"
        )
    if any(j.in_flight is not None for j in status.jobs):
        lines.append("in flight and queued are per provider: jobs on one provider share them")
    if status.shared:
        lines.extend(nodes_mod.render(status.nodes))
    piped = [j for j in status.jobs if j.stage is not None]
    if piped:
        lines.append(
            "stages (input from another job's records, not the spool): "
            + "; ".join(
                f"{j.job} <- {j.stage.upstream} per {j.stage.per}: backlog {j.stage.backlog:,}"
                for j in piped
                if j.stage is not None
            )
        )
    unknown = [j.job for j in status.jobs if j.model is None]
    if unknown:
        lines.append(f"in the checkpoint but not in the config: {', '.join(unknown)}")
    unpriced = sorted({j.model for j in status.jobs if j.cost_usd is None and j.model})
    if unpriced:
        lines.append(f'no [prices."<model>"] for: {", ".join(unpriced)}')
    lines.extend(_batch_lines(status.batches))
    return "\n".join(lines) + "\n"


def _batch_lines(batches: list[dict[str, Any]]) -> list[str]:
    if not batches:
        return []
    out = ["batches (batch mode): job  batch  id  state  done/failed/requests  age  expected"]
    now = time.time()
    for b in batches:
        expected = "-"
        if b["expected_finish"] is not None:
            expected = f"in {max(0.0, b['expected_finish'] - now) / 60:,.1f} min"
        out.append(
            f"  {b['job']}  {b['batch']}  {b['id'] or '-'}  {b['state']}"
            f"  {b['completed']}/{b['failed']}/{b['requests']}"
            f"  {b['age_s'] / 60:,.1f} min  {expected}"
            + (f"  ({b['reason']})" if b["reason"] else "")
        )
    return out


def _row(j: JobStatus) -> list[str]:
    def num(n: int | None) -> str:
        return "-" if n is None else f"{n:,}"

    return [
        j.job,
        num(j.files_pending),
        num(j.files_active),
        num(j.files_done),
        num(j.files_failed),
        *(num(j.items[s]) for s in ITEM_STATES),
        num(j.records),
        num(j.in_flight),
        num(j.queued),
        num(j.prompt_tokens),
        num(j.completion_tokens),
        "-" if j.cost_usd is None else f"${j.cost_usd:,.4f}",
    ]
