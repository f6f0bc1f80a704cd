"""The request an item becomes: prompt rendered, tokens estimated, cut to fit, encoded. Pure.

``synthd.pipeline.prepare`` wraps ``build`` for the daemon; ``synthd dry-run`` calls it
as it is, so a body shown by a dry run is the body the daemon would POST, truncation
and all. The estimate is the caller's: a ``Calibration`` (characters per token) and
the provider's tokens per minute; nothing here waits, sends or logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from synthd import jsonbytes
from synthd.errors import TemplateError
from synthd.prompts import request_body
from synthd.ratemath import token_estimate

if TYPE_CHECKING:
    from synthd.config import Job
    from synthd.models import WorkItem
    from synthd.ratemath import Calibration

TRUNCATION_MARKER = "\n[... truncated ...]"


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~2 µs an item on the hot path
class Request:
    """One item's request as it will be sent."""

    body: bytes
    prompt: Any  # the messages or prompt text, as recorded
    prompt_chars: int
    prompt_tokens: int  # estimated, after any truncation
    reserved: int  # what the budget reserves: prompt + max_tokens × samples
    context: str  # as sent: cut short when the prompt was truncated
    tokens_before_cut: int | None = None  # the estimate before truncation, if it was cut


@dataclass(frozen=True, slots=True)
class Unsendable:
    """Why an item can never be sent; ``reason`` is a stable code."""

    reason: str
    detail: str


def build(
    job: Job, params: dict[str, Any], item: WorkItem, calibration: Calibration, tpm: float
) -> Request | Unsendable:
    """Render ``item`` for ``job`` with sampling ``params``, estimate and encode it."""
    cfg = job.config
    try:
        text = job.template.render(item.fields)
    except TemplateError as e:
        return Unsendable("missing_field", str(e))
    overhead = len(job.system or "")
    prompt_tokens = calibration.estimate(len(text) + overhead)
    limit = cfg.max_prompt_tokens
    context = item.fields["context"]
    before: int | None = None
    if limit is not None and prompt_tokens > limit:
        if cfg.on_long_prompt == "reject":
            return Unsendable("prompt_too_long", f"about {prompt_tokens} tokens > {limit}")
        room = limit - calibration.estimate(overhead)
        context = truncated_context(job, item, room, calibration.chars_per_token)
        text = job.template.render({**item.fields, "context": context})
        before = prompt_tokens
        prompt_tokens = calibration.estimate(len(text) + overhead)
    reserved = token_estimate(prompt_tokens, cfg.max_tokens, cfg.samples)
    if reserved > tpm:
        return Unsendable(
            "too_large_for_budget", f"about {reserved} tokens per request > tpm {tpm:g}"
        )
    body = request_body(cfg.api, cfg.model, text, job.system, params)
    prompt = body["messages"] if cfg.api == "chat" else body["prompt"]
    return Request(
        jsonbytes.dumps(body),
        prompt,
        len(text) + overhead,
        prompt_tokens,
        reserved,
        context,
        before,
    )


def truncated_context(job: Job, item: WorkItem, token_room: int, chars_per_token: float) -> str:
    """The context cut so the whole prompt fits, with a marker that says so."""
    frame = len(job.template.render({**item.fields, "context": ""}))
    room = max(0, int(token_room * chars_per_token) - frame - len(TRUNCATION_MARKER))
    return str(item.fields["context"][:room]) + TRUNCATION_MARKER
