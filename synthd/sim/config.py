"""The simulator's configuration: one frozen record, built once from argv or by hand.

Every knob has a default that makes the simulator a fast, fault-free, unlimited server, so
``SimConfig(port=0)`` is the usual starting point in tests and flags only switch behaviour on.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from synthd.sim.faults import FAULT_NAMES

Mode = Literal["auto", "questions", "conversation", "json", "text", "answer", "judge"]
LatencyDist = Literal["lognormal", "normal"]
LimitKind = Literal["bucket", "fixed"]
OutageKind = Literal["503", "refuse"]


# Fields that are a time or a latency: finite and >= 0.
_DURATIONS = (
    "latency_ms",
    "latency_spread_ms",
    "latency_per_token_ms",
    "hang_s",
    "outage_at_s",
    "outage_s",
    "batch_time_s",
)


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
        for name in _DURATIONS:
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


_DEFAULTS = SimConfig()
_HINTS = get_type_hints(SimConfig)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"probability must be in [0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The CLI of ``python -m synthd.sim`` (also ``synthd sim``); defaults come from SimConfig."""
    p = argparse.ArgumentParser(
        prog="synthd sim",
        description="An OpenAI-compatible completion API simulator with limits and faults.",
    )
    _flag(p, "host", "address to bind (default %(default)s)")
    _flag(p, "port", "0 picks a free port")
    _flag(p, "seed", "content seed")
    _flag(p, "mode")
    p.add_argument(
        "--models",
        default=",".join(_DEFAULTS.models),
        help="comma-separated ids listed by /v1/models (any model is accepted)",
    )

    g = p.add_argument_group("latency")
    _flag(g, "latency_ms", "mean; 0 = no sleep")
    _flag(g, "latency_spread_ms", "std-dev")
    _flag(g, "latency_dist")
    _flag(g, "latency_per_token_ms", "added per completion token of the longest choice")

    g = p.add_argument_group("rate limits (per API key; 0 = unlimited)")
    _flag(g, "rpm", "requests per minute")
    _flag(g, "tpm", "tokens per minute")
    _flag(g, "limit_window_s", "bucket capacity = limit * window / 60 (default %(default)s)")
    _flag(
        g, "limit_kind", "bucket: refilling token buckets; fixed: a request count per fixed window"
    )
    _flag(g, "retry_after_s", "constant retry-after on 429", type=float)
    g.add_argument(
        "--no-rate-headers",
        dest="rate_headers",
        action="store_false",
        help="never send x-ratelimit-* headers",
    )
    _flag(g, "shared_rpm", "another client on the same key takes this many requests a minute")
    _flag(g, "max_concurrent", "requests in progress per key; above it a bare 429 (0 = no limit)")
    _flag(
        g,
        "spurious_429_at",
        "answer the n-th request with one 429 (retry-after 1 s) below every limit",
    )

    g = p.add_argument_group("outage")
    _flag(g, "outage_at_s", "after start-up")
    _flag(g, "outage_s", "0 = no outage")
    _flag(g, "outage_kind", "503: every request answers 503; refuse: the port refuses connections")

    g = p.add_argument_group("faults (probabilities per admitted request; sum <= 1)")
    for name in FAULT_NAMES:
        _flag(g, f"p_{name}", type=_probability)
    _flag(g, "hang_s", "how long a hang lasts")
    _flag(g, "fault_seed")

    g = p.add_argument_group("batches (the Batch API)")
    _flag(g, "batch_time_s", "processing time")
    _flag(g, "batch_p_line_fail", type=_probability)
    _flag(g, "batch_expire_every")
    _flag(g, "batch_fail_every")
    _flag(
        g,
        "batch_enqueued_tokens",
        "per model; a batch over it fails with token_limit_exceeded (0 = no limit)",
    )
    return p


def _flag(into: argparse._ActionsContainer, name: str, help: str | None = None, **kw: Any) -> None:
    """``--field-name`` for the SimConfig field ``name``: the field's default, its
    Literal's values as the choices, and the default's type unless one is given (a
    probability, a default of None)."""
    default = getattr(_DEFAULTS, name)
    hint = _HINTS[name]
    if get_origin(hint) is Literal:
        kw.setdefault("choices", get_args(hint))
    kw.setdefault("type", type(default))
    into.add_argument(f"--{name.replace('_', '-')}", default=default, help=help, **kw)


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
