"""Talking to an OpenAI-compatible server: the one place provider errors are mapped.

``HttpClient`` is the hot path: one shared aiohttp session, the request body
encoded once with orjson, the reply parsed once. ``SdkClient`` sends through the
``openai`` package for providers whose auth only the SDK handles
(``transport = "sdk"``); it costs several times more CPU per request.

Both raise only ``synthd.errors`` provider errors, whose messages never hold
the API key: we build them from status codes and bodies, not from request
objects (aiohttp's request_info carries the Authorization header).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp
import orjson

from synthd.config import ProviderConfig
from synthd.errors import (
    ConnectionLost,
    MalformedResponse,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    Rejected,
    ServerError,
    Timeout,
)
from synthd.headers import RateHeaders, parse_rate_headers, parse_retry_after
from synthd.models import Choice, Reply
from synthd.pacer import Pacer
from synthd.prompts import ENDPOINTS

_RETRYABLE_4XX = frozenset({408, 409})


class Client(Protocol):
    async def start(self) -> None: ...

    async def probe(self) -> bool:
        """True if the server answers ``GET /models`` with any HTTP status."""
        ...

    async def serving(self) -> bool:
        """True if the server answers ``GET /models`` with a success: it is up and serving."""
        ...

    async def close(self) -> None: ...

    async def complete(self, api: str, body: bytes) -> tuple[Reply, RateHeaders | None]:
        """Send one request. Raises a ``ProviderError`` subclass on any failure."""
        ...


def make_client(cfg: ProviderConfig, api_key: str | None, pacer: Pacer | None = None) -> Client:
    if cfg.transport == "sdk":
        return SdkClient(cfg, api_key)
    return HttpClient(cfg, api_key, pacer)


class HttpClient:
    """The ``Client`` over one aiohttp session: owns the session and its connection pool.

    ``start`` and ``close`` bracket its life; every call runs on the daemon's event loop,
    from the provider's dispatcher (many senders at once share the session). Maps every
    transport and HTTP failure to a ``synthd.errors`` provider error in ``complete``.
    """

    def __init__(
        self, cfg: ProviderConfig, api_key: str | None, pacer: Pacer | None = None
    ) -> None:
        self.cfg = cfg
        self._pacer = pacer or Pacer()
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._urls = {api: cfg.base_url + path for api, path in ENDPOINTS.items()}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.cfg.max_in_flight, limit_per_host=0, ttl_dns_cache=300
        )
        timeout = aiohttp.ClientTimeout(
            total=self.cfg.request_timeout_s, connect=self.cfg.connect_timeout_s
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=self._headers, trust_env=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(self) -> bool:
        assert self._session is not None, "start() first"
        try:
            async with self._session.get(f"{self.cfg.base_url}/models") as resp:
                await resp.read()
                return True
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def serving(self) -> bool:
        assert self._session is not None, "start() first"
        try:
            async with self._session.get(f"{self.cfg.base_url}/models") as resp:
                await resp.read()
                return resp.status < 400
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def complete(self, api: str, body: bytes) -> tuple[Reply, RateHeaders | None]:
        assert self._session is not None, "start() first"
        try:
            async with self._session.post(self._urls[api], data=body) as resp:
                raw = await resp.read()
                status = resp.status
                headers = resp.headers
        except TimeoutError as e:
            raise Timeout(f"no reply within {self.cfg.request_timeout_s:g}s") from e
        except aiohttp.ClientPayloadError as e:
            raise ConnectionLost(f"reply cut short: {type(e).__name__}") from e
        except aiohttp.ClientConnectionError as e:
            raise ConnectionLost(f"{type(e).__name__}: {e}") from e
        # From here to the next request's send is most of a request's CPU: a burst of
        # replies that arrived in one poll is spread over loop iterations (synthd.pacer).
        await self._pacer.turn()
        rate = RateHeaders.parse(headers)
        if status != 200:
            error = status_error(status, raw, headers)
            error.rate = rate  # a 429's headers say the most about the limit
            raise error
        return parse_reply(api, raw), rate


def status_error(status: int, raw: bytes, headers: Mapping[str, str]) -> ProviderError:
    """Map a non-200 reply to our error family."""
    message = _error_message(raw)
    if status == 429 and message.startswith("Request too large"):
        # OpenAI's answer to one request above the whole per-minute limit: no
        # wait can make it pass, so it is refused, not retried.
        return Rejected(f"HTTP 429: {message}", status)
    if status == 429 and _error_code(raw) == "insufficient_quota":
        return QuotaExhausted(f"HTTP 429: {message}", status)
    if status == 429:
        return RateLimited(message, retry_after(headers))
    if status >= 500 or status in _RETRYABLE_4XX:
        return ServerError(f"HTTP {status}: {message}", status)
    return Rejected(f"HTTP {status}: {message}", status)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a 429 asks us to wait: ``retry-after-ms``, ``retry-after`` (seconds or an HTTP
    date), else the reset of whichever limit the rate headers say has run out."""
    now = time.time()
    hint = parse_retry_after(headers, now)
    if hint is not None:
        return hint
    rate = parse_rate_headers(headers, now)
    if rate is None:
        return None
    resets = [
        reset
        for left, reset in (
            (rate.remaining_requests, rate.reset_requests_s),
            (rate.remaining_tokens, rate.reset_tokens_s),
        )
        if left == 0 and reset is not None
    ]
    if rate.hold_s:
        resets.append(rate.hold_s)
    return max(resets) if resets else None


def _error_code(raw: bytes) -> str | None:
    """OpenAI's ``error.code`` (or ``error.type``) of an error body, if it has one."""
    try:
        error = orjson.loads(raw)["error"]
        return str(error.get("code") or error.get("type") or "")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None


def _error_message(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
        msg = body["error"]["message"]
        return str(msg)[:300]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        text = raw[:120].decode("utf-8", "replace")
        kind = "HTML page" if text.lstrip().lower().startswith(("<!doctype", "<html")) else "body"
        return f"non-JSON {kind}: {text!r}"


def parse_reply(api: str, raw: bytes) -> Reply:
    """Check and extract a 200 reply. Raises ``MalformedResponse``."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MalformedResponse(f"reply is not JSON ({len(raw)} bytes): {e}") from e
    if not isinstance(body, dict):
        raise MalformedResponse("reply is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedResponse("reply has no choices")
    try:
        parsed = [_choice(api, c) for c in sorted(choices, key=lambda c: c.get("index", 0))]
    except (KeyError, TypeError, AttributeError) as e:
        raise MalformedResponse(f"choice without {e}") from e
    usage = body.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        prompt, completion = usage["prompt_tokens"], int(usage.get("completion_tokens") or 0)
        reported = True
    else:
        prompt, completion, reported = 0, 0, False
    return Reply(parsed, str(body.get("model", "")), prompt, completion, reported)


def _choice(api: str, c: dict[str, Any]) -> Choice:
    text = c["message"]["content"] if api == "chat" else c["text"]
    if text is not None and not isinstance(text, str):
        raise TypeError("text")
    return Choice(text, c.get("finish_reason"))


class SdkClient:
    """The same contract over ``openai.AsyncOpenAI`` (retries off: ours decide).

    ``openai`` is imported in the methods to save start-up time: it takes longer to import
    than the whole daemon (``python -X importtime``), and only ``transport = "sdk"`` uses it.
    """

    def __init__(self, cfg: ProviderConfig, api_key: str | None) -> None:
        self.cfg = cfg
        self._api_key = api_key or "unused"
        self._client: Any = None

    async def start(self) -> None:
        import openai

        self._client = openai.AsyncOpenAI(
            base_url=self.cfg.base_url,
            api_key=self._api_key,
            max_retries=0,
            timeout=self.cfg.request_timeout_s,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def probe(self) -> bool:
        import openai

        try:
            await self._client.models.list()
        except openai.APIStatusError:
            return True  # it answered, if only to refuse
        except openai.APIError:
            return False
        return True

    async def serving(self) -> bool:
        import openai

        try:
            await self._client.models.list()
        except openai.APIError:
            return False
        return True

    async def complete(self, api: str, body: bytes) -> tuple[Reply, RateHeaders | None]:
        import openai

        kwargs = orjson.loads(body)
        endpoint = self._client.chat.completions if api == "chat" else self._client.completions
        try:
            raw = await endpoint.with_raw_response.create(**kwargs)
        except openai.APITimeoutError as e:
            raise Timeout("no reply in time") from e
        except openai.APIConnectionError as e:
            raise ConnectionLost(type(e).__name__) from e
        except openai.APIStatusError as e:
            raise status_error(e.status_code, e.response.content, e.response.headers) from e
        except asyncio.CancelledError:
            raise
        return parse_reply(api, raw.content), RateHeaders.parse(raw.headers)
