"""A job's fingerprint: what, if changed, would produce different records."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from synthd.config import JobConfig


def job_fingerprint(cfg: JobConfig, template: str, system: str | None) -> str:
    """A short stable hash of the template, system prompt, model and parameters.

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
    digest = hashlib.blake2b(orjson.dumps(material, option=orjson.OPT_SORT_KEYS), digest_size=8)
    return digest.hexdigest()


def sampling_params(cfg: JobConfig) -> dict[str, Any]:
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
