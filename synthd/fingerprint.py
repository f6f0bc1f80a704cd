"""A job's fingerprint: what, if changed, would produce different records.

Pure, and below ``config`` in the import graph: it reads a job's settings through the
``Sampling`` protocol, which ``config_jobs.JobConfig`` satisfies, so ``config`` can compute the
fingerprint while it builds a ``Job``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

import orjson


class Sampling(Protocol):
    """The settings of a job that shape a request (``config_jobs.JobConfig`` has them all)."""

    @property
    def api(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float | None: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def samples(self) -> int: ...
    @property
    def stop(self) -> tuple[str, ...]: ...
    @property
    def extra(self) -> Mapping[str, Any]: ...


def job_fingerprint(
    cfg: Sampling, template: str, system: str | None, chunks: tuple[int, int] | None = None
) -> str:
    """A short stable hash of the template, system prompt, model and parameters, and of
    the passage size and overlap (tokens) of an ``input = "chunks"`` job.

    Filters and output settings are left out on purpose: they decide which
    completions are kept, not what the model is asked.
    """
    material: dict[str, Any] = {
        "template": template,
        "system": system,
        "api": cfg.api,
        "model": cfg.model,
        "params": sampling_params(cfg),
    }
    if chunks is not None:  # they decide the contexts; absent, other jobs' hashes stay
        material["chunks"] = list(chunks)
    digest = hashlib.blake2b(orjson.dumps(material, option=orjson.OPT_SORT_KEYS), digest_size=8)
    return digest.hexdigest()


def sampling_params(cfg: Sampling) -> dict[str, Any]:
    """The request parameters as the API names them."""
    params: dict[str, Any] = {
        "temperature": cfg.temperature,
        "max_tokens": cfg.max_tokens,
        "n": cfg.samples,
    }
    if cfg.top_p is not None:
        params["top_p"] = cfg.top_p
    if cfg.stop:
        params["stop"] = list(cfg.stop)
    params.update(cfg.extra)
    return params
