"""The simulator's HTTP shell: the aiohttp app and its handlers around the pure modules.

One request's trip: parse and validate (400) -> rate limits per API key (429) -> fault draw
(a hang waits here; an error, HTML or drop answers here) -> generate the choices -> simulated
latency -> respond. OpenAI's wire format (request validation, response and error bodies) is in
protocol.py; content, limits and faults are in theirs; the /stats counters in stats.py;
binding a port, signals and the CLI in run.py. What needs a request, a clock or state stays
here: the handlers and simulated latency.

Hot-path rules: orjson only, no pydantic, no logging per request, no sleep when latency is 0,
and stats are a few integer increments.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
from typing import Any

import orjson
from aiohttp import web

from synthd.errors import InvalidRequest
from synthd.sim import content
from synthd.sim.batches import Batches
from synthd.sim.config import SimConfig
from synthd.sim.faults import Fault, FaultPlan
from synthd.sim.limits import (
    Admission,
    FixedWindow,
    Limiter,
    Outage,
    rate_limit_message,
    retry_headers,
)
from synthd.sim.protocol import (
    BAD_GATEWAY_HTML,
    INVALID_JSON,
    MAX_N,
    OVERLOADED,
    SERVER_ERROR,
    Kind,
    SimRequest,
    api_key,
    completion_body,
    content_key,
    error_body,
    models_body,
    parse_request,
)
from synthd.sim.stats import Stats

TOO_MANY_CONCURRENT = error_body(
    "Too many concurrent requests", "requests", None, "rate_limit_exceeded"
)
_JSON = "application/json"


# --- the app ---------------------------------------------------------------------------------


class Latency:
    """Draws a response's simulated latency; the base is lognormal or clipped normal."""

    def __init__(self, cfg: SimConfig) -> None:
        self._rng = random.Random(cfg.seed)
        self._mean_s = cfg.latency_ms / 1000
        self._spread_s = cfg.latency_spread_ms / 1000
        self._per_token_s = cfg.latency_per_token_ms / 1000
        self._lognormal = cfg.latency_dist == "lognormal"
        self.enabled = self._mean_s > 0 or self._per_token_s > 0
        if self._mean_s > 0 and self._spread_s > 0:
            # Parameters of the lognormal with the configured mean and standard deviation.
            var = math.log1p((self._spread_s / self._mean_s) ** 2)
            self._sigma = math.sqrt(var)
            self._mu = math.log(self._mean_s) - var / 2

    def draw_s(self, completion_tokens: int) -> float:
        base = self._mean_s
        if base > 0 and self._spread_s > 0:
            if self._lognormal:
                base = self._rng.lognormvariate(self._mu, self._sigma)
            else:
                base = max(0.0, self._rng.gauss(self._mean_s, self._spread_s))
        return base + self._per_token_s * completion_tokens


class Sim:
    """The simulator's state and handlers. One per app; not thread-safe (one event loop)."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.stats = Stats(time.time())
        self.limiter: Limiter | FixedWindow
        if cfg.limit_kind == "fixed":
            self.limiter = FixedWindow(cfg.rpm, cfg.limit_window_s)
        else:
            self.limiter = Limiter(cfg.rpm, cfg.tpm, cfg.limit_window_s, cfg.shared_rpm)
        self.outage = Outage(cfg.outage_at_s, cfg.outage_s) if cfg.outage_s > 0 else None
        self.born = time.monotonic()
        self._running: dict[str, int] = {}  # requests in progress per key (max_concurrent)
        self.spurious_at: float | None = None
        self.faults = FaultPlan.from_probabilities(cfg.fault_probabilities(), cfg.fault_seed)
        self.latency = Latency(cfg)
        self.stopping = asyncio.Event()
        self._admitted = 0
        self._id_prefix = os.urandom(6).hex()
        self._id_counter = 0
        self._forced_mode = None if cfg.mode == "auto" else cfg.mode
        self._models_body = models_body(cfg.models, int(self.stats.started))
        self.batches = Batches(cfg, self.answer)

    # -- helpers --

    def _respond(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str],
        content_type: str = _JSON,
    ) -> web.Response:
        self.stats.status(status)
        return web.Response(status=status, body=body, headers=headers, content_type=content_type)

    def _next_id(self) -> str:
        self._id_counter += 1
        return f"{self._id_prefix}{self._id_counter:012x}"

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _hang(self) -> None:
        # Ends early when the server stops, so shutdown never waits hang_s for a handler.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.cfg.hang_s):
                await self.stopping.wait()

    def _choices(
        self, req: SimRequest, key: bytes
    ) -> tuple[list[tuple[str | None, str]], int, int]:
        """(content, finish_reason) per choice, total completion tokens, longest choice's."""
        digest = content.request_digest(self.cfg.seed, key)
        mode = self._forced_mode or ("json" if req.json_mode else None)
        choices: list[tuple[str | None, str]] = []
        total = longest = 0
        for j, prompt in enumerate(req.prompts):
            info = content.analyse(prompt, mode)
            for k in range(req.n):
                # Indexed by (prompt, choice) independently of n, so n=1 gets choice 0 of n=3.
                rng = content.choice_rng(digest, j * MAX_N + k)
                text, finish = content.cut(content.generate(info, rng), req.max_tokens, req.stop)
                tokens = content.count_tokens(text)
                total += tokens
                longest = max(longest, tokens)
                choices.append((text, finish))
        return choices, total, longest

    # -- handlers --

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "text")

    def down(self) -> bool:
        """Whether the scheduled outage is on now."""
        return self.outage is not None and self.outage.active(time.monotonic() - self.born)

    def _outage_reply(self, request: web.Request) -> web.StreamResponse:
        if self.cfg.outage_kind == "503":
            return self._respond(503, OVERLOADED, {})
        # refuse: the listener is closed (see running_sim); a kept-alive connection is cut.
        assert request.transport is not None
        request.transport.close()
        return web.Response(status=599)

    async def _complete(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        if self.cfg.max_concurrent <= 0:
            return await self._complete_one(request, kind)
        key = api_key(request.headers.get("Authorization"))
        running = self._running.get(key, 0)
        if running >= self.cfg.max_concurrent:
            # A concurrency limiter knows nothing of rates: a bare 429, no headers.
            self.stats.requests += 1
            self.stats.rate_limited += 1
            return self._respond(429, TOO_MANY_CONCURRENT, {})
        self._running[key] = running + 1
        try:
            return await self._complete_one(request, kind)
        finally:
            self._running[key] -= 1

    async def _complete_one(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        if self.down():
            return self._outage_reply(request)
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._respond(400, INVALID_JSON, {})
        try:
            req = parse_request(kind, body)
        except InvalidRequest as e:
            return self._respond(400, error_body(e.message, "invalid_request_error", e.param), {})

        charge = req.charged_tokens
        if stats.requests == self.cfg.spurious_429_at:
            # One 429 out of the blue, as a proxy or a provider's hiccup sends.
            self.spurious_at = time.time()
            self.stats.rate_limited += 1
            body = error_body("Rate limit reached", "requests", None, "rate_limit_exceeded")
            return self._respond(429, body, {"retry-after": "1"})
        admission = self.limiter.admit(
            api_key(request.headers.get("Authorization")), charge, asyncio.get_running_loop().time()
        )
        if not admission.admitted:
            return self._rate_limited(admission, req, charge)
        headers = dict(admission.headers) if self.cfg.rate_headers else {}
        headers["x-request-id"] = "req_" + self._next_id()
        now = time.time()
        stats.admitted(now, charge)
        fault = self.faults.choose(self._admitted) if self.faults.active else None
        self._admitted += 1
        if fault is not None:
            stats.faults[fault] = stats.faults.get(fault, 0) + 1
            if fault == "hang":
                await self._hang()
            elif fault in ("500", "503", "html", "drop"):
                return await self._fail(request, fault, headers)

        choices, completion_tokens, longest = self._choices(req, content_key(body))
        if fault == "empty_choices":
            choices, completion_tokens = [], 0
        elif fault == "content_filter":
            choices, completion_tokens = [(None, "content_filter")], 0
        stats.prompt_tokens += req.prompt_tokens
        stats.completion_tokens += completion_tokens
        out = orjson.dumps(
            completion_body(
                req, self._next_id(), int(now), choices, completion_tokens, fault != "no_usage"
            )
        )
        if fault == "truncate":
            out = out[: len(out) // 2]
        if self.latency.enabled:
            await self._sleep(self.latency.draw_s(longest))
        return self._respond(200, out, headers)

    def _rate_limited(self, admission: Admission, req: SimRequest, charge: int) -> web.Response:
        self.stats.rate_limited += 1
        headers = dict(admission.headers) if self.cfg.rate_headers else {}
        if admission.too_large:
            pass
        elif self.cfg.retry_after_s is not None:
            headers["retry-after"] = f"{self.cfg.retry_after_s:g}"
        else:
            headers.update(retry_headers(admission.wait_s))
        message = rate_limit_message(admission, req.model, charge)
        body = error_body(message, admission.kind or "requests", None, "rate_limit_exceeded")
        return self._respond(429, body, headers)

    async def _fail(
        self, request: web.Request, fault: Fault, headers: dict[str, str]
    ) -> web.StreamResponse:
        if self.latency.enabled:
            await self._sleep(self.latency.draw_s(0))
        if fault == "500":
            return self._respond(500, SERVER_ERROR, headers)
        if fault == "503":
            return self._respond(503, OVERLOADED, headers)
        if fault == "html":
            return self._respond(502, BAD_GATEWAY_HTML, headers, "text/html")
        # drop: close the connection with nothing sent. aiohttp then fails to write the
        # response below to the closed transport and swallows that ConnectionError quietly.
        assert request.transport is not None
        request.transport.close()
        return web.Response(status=599)

    def answer(self, kind: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], int]:
        """One request of a batch: (status, response body, completion tokens); no limits,
        faults or latency (a batch has its own, in ``synthd.sim.batches``)."""
        try:
            req = parse_request("chat" if kind == "chat" else "text", body)
        except InvalidRequest as e:
            err = orjson.loads(error_body(e.message, "invalid_request_error", e.param))
            return 400, err, 0
        choices, completion_tokens, _ = self._choices(req, content_key(body))
        self.stats.prompt_tokens += req.prompt_tokens
        self.stats.completion_tokens += completion_tokens
        reply = completion_body(
            req, self._next_id(), int(time.time()), choices, completion_tokens, True
        )
        return 200, reply, completion_tokens

    async def models(self, request: web.Request) -> web.StreamResponse:
        if self.down():
            return self._outage_reply(request)
        return web.Response(body=self._models_body, content_type=_JSON)

    def snapshot(self) -> dict[str, Any]:
        """Stats plus what the scenario knobs did: the other client's share, the outage."""
        now = time.time()
        out = self.stats.snapshot(now)
        if isinstance(self.limiter, Limiter) and self.limiter.shared_rpm > 0:
            out["shared_admitted"] = self.limiter.shared_admitted()
        if self.spurious_at is not None:
            out["spurious_429_at"] = self.spurious_at
        if self.batches.batches:
            out["batches"] = self.batches.counts()
        if self.outage is not None:
            # In wall-clock seconds, as per_second is.
            start = now - (time.monotonic() - self.born) + self.outage.at_s
            out["outage"] = {"start": start, "end": start + self.outage.duration_s}
        return out

    async def get_stats(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(self.snapshot()), content_type=_JSON)

    async def reset_stats(self, request: web.Request) -> web.StreamResponse:
        self.stats.reset(time.time())
        return await self.get_stats(request)

    async def health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        body = error_body(f"Invalid URL ({request.method} {request.path})", "invalid_request_error")
        return web.Response(status=404, body=body, content_type=_JSON)


SIM_KEY = web.AppKey("sim", Sim)


def make_app(cfg: SimConfig) -> web.Application:
    """The aiohttp application; its Sim state is ``app[SIM_KEY]``. Does not bind anything."""
    sim = Sim(cfg)
    app = web.Application(client_max_size=256 * 1024 * 1024)  # a batch file: up to 200 MB
    app[SIM_KEY] = sim

    async def on_shutdown(app: web.Application) -> None:
        sim.stopping.set()
        await sim.batches.stop()

    app.on_shutdown.append(on_shutdown)
    b = sim.batches
    app.add_routes(
        [
            web.post("/v1/chat/completions", sim.chat_completions),
            web.post("/v1/completions", sim.completions),
            web.get("/v1/models", sim.models),
            web.get("/stats", sim.get_stats),
            web.post("/stats/reset", sim.reset_stats),
            web.get("/health", sim.health),
            web.post("/v1/files", b.upload),
            web.get("/v1/files", b.list_files),
            web.get("/v1/files/{id}", b.file_info),
            web.get("/v1/files/{id}/content", b.file_content),
            web.delete("/v1/files/{id}", b.file_delete),
            web.post("/v1/batches", b.create),
            web.get("/v1/batches", b.list_batches),
            web.get("/v1/batches/{id}", b.get),
            web.post("/v1/batches/{id}/cancel", b.cancel),
            web.route("*", "/{tail:.*}", sim.not_found),  # last: after every other route
        ]
    )
    return app
