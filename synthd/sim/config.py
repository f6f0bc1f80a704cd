"""The simulator's configuration: one frozen record, built once from argv or by hand.

Every knob has a default that makes the simulator a fast, fault-free, unlimited server, so
``SimConfig(port=0)`` is the usual starting point in tests and flags only switch behaviour on.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from typing import Literal, get_args

from synthd.sim.faults import FAULT_NAMES

Mode = Literal["auto", "questions", "conversation", "json", "text", "answer", "judge"]
LatencyDist = Literal["lognormal", "normal"]
LimitKind = Literal["bucket", "fixed"]
OutageKind = Literal["503", "refuse"]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How the simulator answers. Validated on construction; raises ValueError when invalid.

    Rate limits are per API key and per minute, enforced by token buckets whose capacity is
    ``limit * limit_window_s / 60``; 0 means unlimited. Faults are mutually exclusive: one
    uniform draw per admitted request picks at most one, so their probabilities sum to <= 1.
    """

    host: str = "127.0.0.1"
    port: int = 8900
    seed: int = 0
    mode: Mode = "auto"
    models: tuple[str, ...] = ("sim-1",)

    latency_ms: float = 0.0
    latency_spread_ms: float = 0.0
    latency_dist: LatencyDist = "lognormal"
    latency_per_token_ms: float = 0.0

    rpm: int = 0
    tpm: int = 0
    limit_window_s: float = 1.0
    limit_kind: LimitKind = "bucket"
    retry_after_s: float | None = None  # a constant retry-after on every 429; None: the real wait
    rate_headers: bool = True  # False: no x-ratelimit-* headers, ever
    shared_rpm: int = 0  # another client on the same key, sending this many requests a minute
    max_concurrent: int = 0  # per key; above it a 429 with no headers at all; 0 = no limit

    spurious_429_at: int = 0  # the n-th completion request (1-based) gets one 429; 0 = none

    outage_at_s: float = 0.0  # seconds after start-up
    outage_s: float = 0.0  # 0 = no outage
    outage_kind: OutageKind = "503"

    p_500: float = 0.0
    p_503: float = 0.0
    p_hang: float = 0.0
    p_drop: float = 0.0
    p_truncate: float = 0.0
    p_html: float = 0.0
    p_empty_choices: float = 0.0
    p_content_filter: float = 0.0
    p_no_usage: float = 0.0
    hang_s: float = 120.0
    fault_seed: int = 0

    batch_time_s: float = 1.0  # how long a batch is in_progress (24 h scaled down)
    batch_p_line_fail: float = 0.0  # share of a batch's lines that fail with a 500
    batch_expire_every: int = 0  # every n-th batch expires with half its lines done; 0 = none
    batch_fail_every: int = 0  # every n-th batch fails whole at validation; 0 = none
    batch_enqueued_tokens: int = 0  # per model; a batch over it fails; 0 = no limit

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.mode not in get_args(Mode):
            raise ValueError(f"mode must be one of {get_args(Mode)}, got {self.mode!r}")
        if self.latency_dist not in get_args(LatencyDist):
            raise ValueError(f"latency_dist must be one of {get_args(LatencyDist)}")
        if not self.models or not all(self.models):
            raise ValueError("models must name at least one model")
        for name in ("latency_ms", "latency_spread_ms", "latency_per_token_ms", "hang_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.rpm < 0 or self.tpm < 0:
            raise ValueError("rpm and tpm must be >= 0 (0 = unlimited)")
        if not (math.isfinite(self.limit_window_s) and self.limit_window_s > 0):
            raise ValueError(f"limit_window_s must be > 0, got {self.limit_window_s}")
        if self.limit_kind not in get_args(LimitKind):
            raise ValueError(f"limit_kind must be one of {get_args(LimitKind)}")
        if self.outage_kind not in get_args(OutageKind):
            raise ValueError(f"outage_kind must be one of {get_args(OutageKind)}")
        if self.retry_after_s is not None and not (
            math.isfinite(self.retry_after_s) and self.retry_after_s >= 0
        ):
            raise ValueError(f"retry_after_s must be finite and >= 0, got {self.retry_after_s}")
        for name in ("outage_at_s", "outage_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.batch_time_s) and self.batch_time_s >= 0):
            raise ValueError(f"batch_time_s must be a finite number >= 0, got {self.batch_time_s}")
        if not 0.0 <= self.batch_p_line_fail <= 1.0:
            raise ValueError(f"batch_p_line_fail must be in [0, 1], got {self.batch_p_line_fail}")
        if min(self.batch_expire_every, self.batch_fail_every, self.batch_enqueued_tokens) < 0:
            raise ValueError("batch_expire_every, batch_fail_every, batch_enqueued_tokens >= 0")
        if self.shared_rpm < 0 or self.max_concurrent < 0 or self.spurious_429_at < 0:
            raise ValueError("shared_rpm, max_concurrent and spurious_429_at must be >= 0")
        for name, p in self.fault_probabilities().items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"p_{name} must be in [0, 1], got {p}")
        total = sum(self.fault_probabilities().values())
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities sum to {total:.3f}; they must sum to <= 1")

    def fault_probabilities(self) -> dict[str, float]:
        """Fault name -> probability, in the fixed order of FAULT_NAMES."""
        return {name: float(getattr(self, f"p_{name}")) for name in FAULT_NAMES}


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"probability must be in [0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The CLI of ``python -m synthd.sim`` (also ``synthd sim``); defaults come from SimConfig."""
    d = SimConfig()
    p = argparse.ArgumentParser(
        prog="synthd sim",
        description="An OpenAI-compatible completion API simulator with limits and faults.",
    )
    p.add_argument("--host", default=d.host, help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="0 picks a free port")
    p.add_argument("--seed", type=int, default=d.seed, help="content seed")
    p.add_argument("--mode", choices=get_args(Mode), default=d.mode)
    p.add_argument(
        "--models",
        default=",".join(d.models),
        help="comma-separated ids listed by /v1/models (any model is accepted)",
    )

    g = p.add_argument_group("latency")
    g.add_argument("--latency-ms", type=float, default=d.latency_ms, help="mean; 0 = no sleep")
    g.add_argument("--latency-spread-ms", type=float, default=d.latency_spread_ms, help="std-dev")
    g.add_argument("--latency-dist", choices=get_args(LatencyDist), default=d.latency_dist)
    g.add_argument(
        "--latency-per-token-ms",
        type=float,
        default=d.latency_per_token_ms,
        help="added per completion token of the longest choice",
    )

    g = p.add_argument_group("rate limits (per API key; 0 = unlimited)")
    g.add_argument("--rpm", type=int, default=d.rpm, help="requests per minute")
    g.add_argument("--tpm", type=int, default=d.tpm, help="tokens per minute")
    g.add_argument(
        "--limit-window-s",
        type=float,
        default=d.limit_window_s,
        help="bucket capacity = limit * window / 60 (default %(default)s)",
    )
    g.add_argument(
        "--limit-kind",
        choices=get_args(LimitKind),
        default=d.limit_kind,
        help="bucket: refilling token buckets; fixed: a request count per fixed window",
    )
    g.add_argument(
        "--retry-after-s", type=float, default=d.retry_after_s, help="constant retry-after on 429"
    )
    g.add_argument(
        "--no-rate-headers",
        dest="rate_headers",
        action="store_false",
        help="never send x-ratelimit-* headers",
    )
    g.add_argument(
        "--shared-rpm",
        type=int,
        default=d.shared_rpm,
        help="another client on the same key takes this many requests a minute",
    )
    g.add_argument(
        "--max-concurrent",
        type=int,
        default=d.max_concurrent,
        help="requests in progress per key; above it a bare 429 (0 = no limit)",
    )

    g.add_argument(
        "--spurious-429-at",
        type=int,
        default=d.spurious_429_at,
        help="answer the n-th request with one 429 (retry-after 1 s) below every limit",
    )

    g = p.add_argument_group("outage")
    g.add_argument("--outage-at-s", type=float, default=d.outage_at_s, help="after start-up")
    g.add_argument("--outage-s", type=float, default=d.outage_s, help="0 = no outage")
    g.add_argument(
        "--outage-kind",
        choices=get_args(OutageKind),
        default=d.outage_kind,
        help="503: every request answers 503; refuse: the port refuses connections",
    )

    g = p.add_argument_group("faults (probabilities per admitted request; sum <= 1)")
    for name in FAULT_NAMES:
        g.add_argument(f"--p-{name.replace('_', '-')}", type=_probability, default=0.0)
    g.add_argument("--hang-s", type=float, default=d.hang_s, help="how long a hang lasts")
    g.add_argument("--fault-seed", type=int, default=d.fault_seed)

    g = p.add_argument_group("batches (the Batch API)")
    g.add_argument("--batch-time-s", type=float, default=d.batch_time_s, help="processing time")
    g.add_argument("--batch-p-line-fail", type=_probability, default=d.batch_p_line_fail)
    g.add_argument("--batch-expire-every", type=int, default=d.batch_expire_every)
    g.add_argument("--batch-fail-every", type=int, default=d.batch_fail_every)
    g.add_argument(
        "--batch-enqueued-tokens",
        type=int,
        default=d.batch_enqueued_tokens,
        help="per model; a batch over it fails with token_limit_exceeded (0 = no limit)",
    )
    return p


def parse_args(argv: list[str]) -> SimConfig:
    """argv (without the program name) -> SimConfig.

    Raises SystemExit(2) with a usage message on bad flags or an invalid combination, as
    argparse does; callers that embed the simulator build SimConfig directly instead.
    """
    parser = build_parser()
    ns = parser.parse_args(argv)
    values = vars(ns)
    values["models"] = tuple(m.strip() for m in values["models"].split(",") if m.strip())
    known = {f.name for f in fields(SimConfig)}
    try:
        return SimConfig(**{k: v for k, v in values.items() if k in known})
    except ValueError as e:
        parser.error(str(e))
