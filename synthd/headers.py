"""Rate-limit headers in the forms OpenAI-compatible servers and proxies send. Pure.

One function, ``parse_rate_headers(headers, now_unix)``, reads every form we know into one
``RateHeaders`` (per-minute limits, what remains, seconds to reset):

* OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, resets as Go
  durations (``1s``, ``6m0s``, ``20ms``);
* Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
  {limit,remaining,reset}``, resets as RFC 3339 times;
* the IETF draft: ``RateLimit-Limit``/``-Remaining``/``-Reset`` (delta seconds), the
  combined ``RateLimit: limit=100, remaining=50, reset=5`` and ``RateLimit-Policy:
  100;w=60`` (which gives the window);
* ``X-RateLimit-Limit``/``-Remaining``/``-Reset`` (the reset in delta seconds, or an epoch
  in seconds or milliseconds, as OpenRouter and GitHub-style limiters send);
* proxies (LiteLLM, Azure, OpenRouter, Together, Groq) that put a scope into the name:
  ``x-ratelimit-limit-requests-day``, ``x-ratelimit-remaining-tokens-minute``,
  ``x-ratelimit-limit-requests-model-gpt-4o``, or a ``llm_provider-`` prefix.

What the budget may trust: a limit becomes a per-minute budget only when its window is
known to be a minute or shorter (OpenAI's unscoped names are per minute; a ``-second``
scope is multiplied up; the IETF and ``X-`` forms need ``RateLimit-Policy``'s ``w``). A
day's or an hour's quota is not a rate: it is never adopted, but when it says
``remaining: 0`` its reset becomes ``hold_s``, a wait for everyone. Where several scopes
report, the tightest wins. Unknown forms yield None and the budget falls back on 429s.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Scope suffix -> seconds of its window; None: a window we cannot turn into a rate.
_SCOPES: dict[str, float] = {
    "": 60.0,
    "second": 1.0,
    "sec": 1.0,
    "s": 1.0,
    "1s": 1.0,
    "minute": 60.0,
    "min": 60.0,
    "m": 60.0,
    "1m": 60.0,
    "hour": 3600.0,
    "h": 3600.0,
    "1h": 3600.0,
    "day": 86400.0,
    "d": 86400.0,
    "1d": 86400.0,
}
# x-ratelimit-limit-requests[-scope] (OpenAI and the proxies that copy it)
_OPENAI = re.compile(r"^x-ratelimit-(limit|remaining|reset)-(requests|tokens)(?:-(.+))?$")
# anthropic-ratelimit-requests-limit (and input-tokens, output-tokens)
_ANTHROPIC = re.compile(
    r"^anthropic-ratelimit-(requests|tokens|input-tokens|output-tokens)-(limit|remaining|reset)$"
)
# OpenAI's own names, looked up without a regex: they come with nearly every response.
_OPENAI_NAMES = {
    f"x-ratelimit-{field}-{resource}": (field, resource)
    for field in ("limit", "remaining", "reset")
    for resource in ("requests", "tokens")
}
_PLAIN = re.compile(r"^(?:x-)?ratelimit-(limit|remaining|reset)$")
_POLICY_WINDOW = re.compile(r"\bw=(\d+(?:\.\d+)?)")
_LONG_WINDOW_S = 3600.0  # a quota this long or longer is not a rate


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """What one response's rate-limit headers say; None where nothing did.

    Limits are per minute; ``hold_s`` is how long a long-window quota (an hour, a day) that
    has run out keeps every request from passing.
    """

    limit_requests: int | None
    limit_tokens: int | None
    remaining_requests: int | None
    remaining_tokens: int | None
    reset_requests_s: float | None
    reset_tokens_s: float | None
    hold_s: float | None = None

    @classmethod
    def parse(cls, headers: Mapping[str, str], now_unix: float | None = None) -> RateHeaders | None:
        return parse_rate_headers(headers, time.time() if now_unix is None else now_unix)


@lru_cache(maxsize=4096)  # a server repeats the same few resets ("1ms", "6m0s") all day
def parse_duration(text: str) -> float | None:
    """OpenAI's reset format (``6m0s``, ``1s``, ``250ms``, ``1h2m3.5s``) or plain seconds."""
    total, pos = 0.0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(text):
        try:
            value = float(text)  # some servers send plain seconds
        except ValueError:
            return None
        return value if value == value else None  # not nan
    return total


def parse_reset(text: str, now_unix: float) -> float | None:
    """A reset in any form, as seconds from now: a duration, delta seconds, an epoch in
    seconds or milliseconds, an RFC 3339 or HTTP date. Past times are 0."""
    text = text.strip()
    seconds = parse_duration(text)
    if seconds is not None:
        if seconds > 1e12:  # epoch milliseconds
            seconds = seconds / 1000.0 - now_unix
        elif seconds > 1e9:  # epoch seconds
            seconds -= now_unix
        return max(0.0, seconds)
    at = parse_date(text)
    return None if at is None else max(0.0, at - now_unix)


def parse_date(text: str) -> float | None:
    """An RFC 3339 or HTTP date as a Unix time; None if it is neither."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def parse_retry_after(headers: Mapping[str, str], now_unix: float) -> float | None:
    """Seconds a 429 asks us to wait: ``retry-after-ms`` (precise), else ``retry-after`` in
    seconds or as an HTTP date. Not capped here (``synthd.retry.capped_wait_s`` does)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)  # may be inf or negative: the caller caps
    except ValueError:
        at = parse_date(value)
        return None if at is None else max(0.0, at - now_unix)


def _number(text: str) -> int | None:
    try:
        return int(text)  # the usual case, at a fraction of the cost below
    except ValueError:
        pass
    try:
        value = float(text.split(",")[0].split(";")[0])
    except (ValueError, IndexError):
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return int(value)


def parse_rate_headers(headers: Mapping[str, str], now_unix: float) -> RateHeaders | None:
    """Every rate-limit header of a response, in any known form (see the module docstring)."""
    # (resource, scope, window_s) -> {"limit"/"remaining"/"reset": value}
    seen: dict[tuple[str, str, float | None], dict[str, float]] = {}
    plain: dict[str, str] = {}
    policy_window: float | None = None
    found = False

    def put(resource: str, scope: str, window: float | None, field: str, raw: str) -> None:
        value: float | None
        if field == "reset":
            value = parse_reset(raw, now_unix)
        else:
            n = _number(raw)
            value = None if n is None else float(n)
        if value is not None:
            seen.setdefault((resource, scope, window), {})[field] = value

    for name, raw in headers.items():
        key = name.lower()
        if "ratelimit" not in key:
            continue
        found = True
        if (known := _OPENAI_NAMES.get(key)) is not None:
            put(known[1], "", 60.0, known[0], raw)
            continue
        key = key.removeprefix("llm_provider-")  # LiteLLM passes the provider's headers on
        if m := _OPENAI.match(key):
            field, resource, scope = m.group(1), m.group(2), m.group(3) or ""
            window = _SCOPES.get(scope, 60.0 if scope.startswith("model") else None)
            put(resource, scope, window, field, raw)
        elif m := _ANTHROPIC.match(key):
            resource = "requests" if m.group(1) == "requests" else "tokens"
            put(resource, m.group(1), 60.0, m.group(2), raw)  # Anthropic's are per minute
        elif m := _PLAIN.match(key):
            plain[m.group(1)] = raw
        elif key == "ratelimit":
            for part in raw.split(","):
                k, _, v = part.strip().partition("=")
                if k in ("limit", "remaining", "reset") and v:
                    plain.setdefault(k, v)
        elif key == "ratelimit-policy" and (w := _POLICY_WINDOW.search(raw)):
            policy_window = float(w.group(1))
    for field, raw in plain.items():
        # A bare count says nothing of requests or tokens: requests, the usual meaning.
        put("requests", "plain", policy_window, field, raw)
    if not found:
        return None
    return _combine(seen)


def _combine(seen: dict[tuple[str, str, float | None], dict[str, float]]) -> RateHeaders:
    limits: dict[str, float] = {}
    remaining: dict[str, float] = {}
    reset: dict[str, float] = {}
    hold = None
    for (resource, _, window), fields in seen.items():
        long_window = window is None or window >= _LONG_WINDOW_S
        if "limit" in fields and window is not None and not long_window:
            per_min = fields["limit"] * 60.0 / window
            limits[resource] = min(limits.get(resource, per_min), per_min)
        if "remaining" in fields:
            left = fields["remaining"]
            if long_window:
                if left <= 0 and "reset" in fields:
                    hold = max(hold or 0.0, fields["reset"])
                continue
            remaining[resource] = min(remaining.get(resource, left), left)
            if "reset" in fields and left <= 0:
                reset[resource] = max(reset.get(resource, 0.0), fields["reset"])
        if "reset" in fields and not long_window:
            reset.setdefault(resource, fields["reset"])

    def whole(d: dict[str, float], k: str) -> int | None:
        return None if k not in d else int(d[k])

    return RateHeaders(
        whole(limits, "requests"),
        whole(limits, "tokens"),
        whole(remaining, "requests"),
        whole(remaining, "tokens"),
        reset.get("requests"),
        reset.get("tokens"),
        hold,
    )
