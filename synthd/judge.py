"""A judge's verdict: the model's JSON in, a kept score or a ``judge`` rejection out. Pure.

A judge job scores another job's records with a rubric prompt that asks for a JSON object
with a ``score`` (a number) and a ``reason`` (a string); any other keys (per-criterion
scores) are kept beside them. ``verdict`` runs after the job's filters, on a completion
they accepted: a verdict under ``min_score`` is a ``Rejection("judge")`` carrying its
score, an answer that is not such an object a ``Rejection("judge_invalid")``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Protocol

import orjson

from synthd.models import Accepted, Rejection

_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class JudgeSettings(Protocol):
    """What a verdict needs of a job's ``judge`` table (``config_jobs.JudgeConfig`` has it)."""

    @property
    def min_score(self) -> float: ...
    @property
    def max_score(self) -> float: ...


def parse(text: str) -> dict[str, Any] | str:
    """The verdict object in a judge's answer, or what is wrong with it.

    Models wrap JSON in a code fence or a sentence; the outermost ``{...}`` is read.
    """
    m = _OBJECT.search(text)
    if m is None:
        return "no JSON object in the answer"
    try:
        data = orjson.loads(m.group(0))
    except orjson.JSONDecodeError as e:
        return f"not valid JSON: {str(e)[:100]}"
    if not isinstance(data, dict):
        return "not a JSON object"
    score = data.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        return "no numeric score"
    if not isinstance(data.get("reason"), str):
        return "no reason"
    return data


def verdict(text: str, settings: JudgeSettings) -> Accepted | Rejection:
    """Keep a completion whose score reaches ``min_score``; its ``data`` is the verdict."""
    data = parse(text)
    if isinstance(data, str):
        return Rejection("judge_invalid", data)
    score = float(data["score"])
    if score > settings.max_score or score < 0:
        return Rejection("judge_invalid", f"score {score:g} outside 0..{settings.max_score:g}")
    if score < settings.min_score:
        reason = str(data["reason"])[:200]
        return Rejection("judge", f"score {score:g} < {settings.min_score:g}: {reason}", score)
    return Accepted(text, data=data)
