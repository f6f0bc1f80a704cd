"""Templates: ``{{name}}`` placeholders, filled in one pass.

Filling is a single left-to-right pass over the template's own text, so a value
is never scanned for placeholders: a context that contains ``{{topic}}`` stays
literal. Pure: no I/O here; ``config`` reads the files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from synthd.errors import TemplateError

# The path each api posts its request_body to, under a provider's base_url.
ENDPOINTS = {"chat": "/chat/completions", "completions": "/completions"}
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")


class Template:
    """A template split once into literal text and placeholder names."""

    __slots__ = ("_parts", "fields", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        parts: list[tuple[str, str | None]] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(text):
            parts.append((text[pos : m.start()], m.group(1)))
            pos = m.end()
        parts.append((text[pos:], None))
        self._parts = tuple(parts)
        self.fields = frozenset(name for _, name in parts if name is not None)

    def render(self, values: Mapping[str, str]) -> str:
        """Fill every placeholder. Raises ``TemplateError`` naming a missing one."""
        out: list[str] = []
        for literal, name in self._parts:
            out.append(literal)
            if name is not None:
                try:
                    out.append(values[name])
                except KeyError:
                    raise TemplateError(name) from None
        return "".join(out)


def chat_messages(system: str | None, user: str) -> list[dict[str, str]]:
    """The messages of a one-turn chat request."""
    if system is None:
        return [{"role": "user", "content": user}]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def request_body(
    api: str,
    model: str,
    prompt: str,
    system: str | None,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON body to POST to ``ENDPOINTS[api]``.

    ``params`` holds the sampling parameters exactly as the API names them
    (``temperature``, ``max_tokens``, ``n``, ``stop`` ...).
    """
    body: dict[str, Any] = {"model": model}
    if api == "chat":
        body["messages"] = chat_messages(system, prompt)
    else:
        # The legacy endpoint has no system role; a system prompt leads the text.
        body["prompt"] = prompt if system is None else f"{system}\n\n{prompt}"
    body.update(params)
    return body
