"""The fine-tuning data check: what the provider's checker would refuse. Pure.

The chat checks follow the OpenAI cookbook's "Data preparation and analysis for
chat model fine-tuning": an example must be an object with a non-empty
``messages`` list; every message needs ``role`` and ``content``, no other keys
than the cookbook allows, a known role and non-empty string content; some
message must come from the assistant. On top of that an example must fit the
model's context (``context_tokens``).

Prompt-completion examples (the legacy fine-tuning format) need exactly
``prompt`` and ``completion``, both non-empty, and the separator and stop
sequence may not appear inside the text they delimit: a model would learn to
stop there.

Token counts are an estimate, with no tokenizer: ``ceil(chars / 4)`` for every
text, plus 4 for each chat message (the markup OpenAI wraps a message in). It
is about right for English and errs high for code; cost estimates built on it
are rough, ±20 %.

Every problem has a stable code (the ``kind``); an example with any problem is
left out of the export and counted under each of its kinds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
MIN_TRAIN_EXAMPLES = 10  # OpenAI refuses a training file with fewer

# As the cookbook: the keys a message may have and the roles it may play.
MESSAGE_KEYS = frozenset({"role", "content", "name", "function_call", "weight"})
ROLES = frozenset({"system", "user", "assistant", "function"})
PAIR_KEYS = frozenset({"prompt", "completion"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """The problems of one example (empty when it passes) and its token estimate."""

    problems: frozenset[str]
    tokens: int


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def messages_tokens(messages: list[Any]) -> int:
    """Estimated tokens of a chat: each message's content plus its markup."""
    total = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        total += TOKENS_PER_MESSAGE + (text_tokens(content) if isinstance(content, str) else 0)
    return total


def check_chat(example: Any, context_tokens: int) -> Verdict:
    """``{"messages": [...]}`` as OpenAI's chat fine-tuning accepts it."""
    if not isinstance(example, dict):
        return Verdict(frozenset({"data_type"}), 0)
    messages = example.get("messages")
    if not messages or not isinstance(messages, list):
        return Verdict(frozenset({"missing_messages_list"}), 0)
    problems = set()
    if set(example) - {"messages"}:
        problems.add("unrecognized_key")
    for m in messages:
        if not isinstance(m, dict):
            problems.add("data_type")
            continue
        if "role" not in m or "content" not in m:
            problems.add("message_missing_key")
        if set(m) - MESSAGE_KEYS:
            problems.add("message_unrecognized_key")
        if m.get("role") not in ROLES:
            problems.add("unrecognized_role")
        if not _filled(m.get("content")):
            problems.add("missing_content")
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        problems.add("example_missing_assistant_message")
    tokens = messages_tokens(messages)
    if tokens > context_tokens:
        problems.add("too_long")
    return Verdict(frozenset(problems), tokens)


def check_prompt_completion(
    example: Any, context_tokens: int, separator: str, stop: str
) -> Verdict:
    """``{"prompt", "completion"}`` as the legacy fine-tuning guide asks for it."""
    if not isinstance(example, dict):
        return Verdict(frozenset({"data_type"}), 0)
    problems = set()
    if PAIR_KEYS - set(example):
        problems.add("missing_key")
    if set(example) - PAIR_KEYS:
        problems.add("unrecognized_key")
    prompt, completion = example.get("prompt"), example.get("completion")
    if not _filled(prompt) or not _filled(completion):
        problems.add("missing_content")
    prompt = prompt if isinstance(prompt, str) else ""
    completion = completion if isinstance(completion, str) else ""
    if separator and prompt.removesuffix(separator).find(separator) != -1:
        problems.add("separator_in_prompt")
    if stop and completion.removesuffix(stop).find(stop) != -1:
        problems.add("stop_in_completion")
    tokens = text_tokens(prompt) + text_tokens(completion)
    if tokens > context_tokens:
        problems.add("too_long")
    return Verdict(frozenset(problems), tokens)


def check_raw(example: Any, context_tokens: int) -> Verdict:
    """A synthd record: it must hold a completion; tokens as if it were a chat."""
    if not isinstance(example, dict):
        return Verdict(frozenset({"data_type"}), 0)
    problems = set()
    completion = example.get("completion")
    if not _filled(completion):
        problems.add("missing_content")
    prompt = example.get("messages") or example.get("prompt") or ""
    if isinstance(prompt, list):
        tokens = messages_tokens(prompt)
    else:
        tokens = TOKENS_PER_MESSAGE + text_tokens(prompt if isinstance(prompt, str) else "")
    tokens += TOKENS_PER_MESSAGE + (text_tokens(completion) if isinstance(completion, str) else 0)
    if tokens > context_tokens:
        problems.add("too_long")
    return Verdict(frozenset(problems), tokens)


def training_cost(train_tokens: int, epochs: int, price_per_mtok: float) -> float:
    """The provider bills every training token once per epoch."""
    return train_tokens * epochs * price_per_mtok / 1_000_000


def _filled(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())
