"""The simulator's HTTP shell: the aiohttp app and its handlers around the pure modules.

One request's trip: parse and validate (400) -> rate limits per API key (429) -> fault draw
(a hang waits here; an error, HTML or drop answers here) -> generate the choices -> simulated
latency -> respond. OpenAI's wire format (request validation, response and error bodies) is in
protocol.py; content, limits and faults are in theirs. What needs a socket, a clock or state
stays here: the handlers, stats, simulated latency and the run/CLI plumbing.

Hot-path rules: orjson only, no pydantic, no logging per request, no sleep when latency is 0,
and stats are a few integer increments.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from aiohttp import web

from synthd.errors import InvalidRequest
from synthd.sim import content
from synthd.sim.config import SimConfig, parse_args
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

STATS_WINDOW_S = 600
TOO_MANY_CONCURRENT = error_body(
    "Too many concurrent requests", "requests", None, "rate_limit_exceeded"
)
_JSON = "application/json"


# --- stats -----------------------------------------------------------------------------------


class Stats:
    """Counters behind GET /stats. Updating costs a few dict/int operations per request."""

    __slots__ = (
        "accepted_tokens",
        "by_status",
        "completion_tokens",
        "faults",
        "per_second",
        "prompt_tokens",
        "rate_limited",
        "requests",
        "started",
    )

    def __init__(self, started: float) -> None:
        self.reset(started)

    def reset(self, started: float) -> None:
        """Zero every counter in place (handlers in flight keep counting into this object)."""
        self.started = started
        self.requests = 0
        self.rate_limited = 0
        self.accepted_tokens = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.by_status: dict[int, int] = {}
        self.faults: dict[str, int] = {}
        self.per_second: dict[int, int] = {}

    def status(self, code: int) -> None:
        self.by_status[code] = self.by_status.get(code, 0) + 1

    def admitted(self, unix_s: float, tokens: int) -> None:
        self.accepted_tokens += tokens
        second = int(unix_s)
        count = self.per_second.get(second)
        if count is None:
            # A new second: the moment to forget seconds that fell out of the window, so the
            # dict stays bounded without a timer.
            if len(self.per_second) >= STATS_WINDOW_S:
                horizon = second - STATS_WINDOW_S
                for old in [s for s in self.per_second if s <= horizon]:
                    del self.per_second[old]
            count = 0
        self.per_second[second] = count + 1

    def snapshot(self, unix_s: float) -> dict[str, Any]:
        """The JSON of GET /stats; per_second covers the last STATS_WINDOW_S seconds."""
        horizon = int(unix_s) - STATS_WINDOW_S
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "faults": dict(self.faults),
            "rate_limited": self.rate_limited,
            "accepted_tokens": self.accepted_tokens,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "per_second": [[s, c] for s, c in sorted(self.per_second.items()) if s > horizon],
            "started": self.started,
        }


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
            await asyncio.wait_for(self.stopping.wait(), self.cfg.hang_s)

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
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SIM_KEY] = sim

    async def on_shutdown(app: web.Application) -> None:
        sim.stopping.set()

    app.on_shutdown.append(on_shutdown)
    r = app.router
    r.add_post("/v1/chat/completions", sim.chat_completions)
    r.add_post("/v1/completions", sim.completions)
    r.add_get("/v1/models", sim.models)
    r.add_get("/stats", sim.get_stats)
    r.add_post("/stats/reset", sim.reset_stats)
    r.add_get("/health", sim.health)
    r.add_route("*", "/{tail:.*}", sim.not_found)
    return app


@dataclass(frozen=True, slots=True)
class RunningSim:
    """A simulator serving in the current event loop (see ``running_sim``)."""

    host: str
    port: int
    app: web.Application

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as base_url."""
        return self.url + "/v1"

    @property
    def sim(self) -> Sim:
        return self.app[SIM_KEY]

    def stats(self) -> dict[str, Any]:
        """The same dict GET /stats returns."""
        return self.sim.snapshot()

    def reset_stats(self) -> None:
        """The same as POST /stats/reset."""
        self.sim.stats.reset(time.time())


@contextlib.asynccontextmanager
async def running_sim(cfg: SimConfig) -> AsyncIterator[RunningSim]:
    """Serve ``cfg`` on cfg.host:cfg.port (port 0 = a free one) in the running loop.

    Yields once listening; on exit stops accepting, ends hanging requests at once, waits up to
    5 s for in-flight handlers, then cancels them. Raises OSError if the address is taken.
    """
    app = make_app(cfg)
    # handler_cancellation: a client that gives up (a timeout on a hang) cancels its handler,
    # as a real server stops generating for a closed connection.
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, handler_cancellation=True, shutdown_timeout=5.0
    )
    await runner.setup()
    refusing = None
    try:
        # aiohttp's default backlog of 128 drops SYNs when a client opens 2048
        # connections at once; the kernel's 1 s, 3 s, 7 s... retransmits then
        # stall start-up by up to a minute. Real servers (uvicorn) use 2048.
        site = web.TCPSite(runner, cfg.host, cfg.port, backlog=4096)
        await site.start()
        port = int(runner.addresses[0][1])
        if cfg.outage_s > 0 and cfg.outage_kind == "refuse":
            refusing = asyncio.create_task(_refuse_during_outage(runner, site, cfg, port))
        yield RunningSim(cfg.host, port, app)
    finally:
        if refusing is not None:
            refusing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refusing
        await runner.cleanup()


async def _refuse_during_outage(
    runner: web.AppRunner, site: web.TCPSite, cfg: SimConfig, port: int
) -> None:
    """Close the listening socket for the outage (connections are refused), then reopen it."""
    sim = runner.app[SIM_KEY]
    await asyncio.sleep(max(0.0, sim.born + cfg.outage_at_s - time.monotonic()))
    await site.stop()
    await asyncio.sleep(max(0.0, sim.born + cfg.outage_at_s + cfg.outage_s - time.monotonic()))
    await web.TCPSite(runner, cfg.host, port, backlog=4096).start()


# --- CLI -------------------------------------------------------------------------------------


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def serve(cfg: SimConfig) -> int:
    """Serve until SIGTERM or SIGINT, then shut down cleanly; a second signal cancels the
    drain. Prints one ``sim_listening`` JSON line on stdout once listening."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.current_task()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            stop.set()
        elif task is not None:
            task.cancel("second signal")

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        async with running_sim(cfg) as sim:
            line = {
                "event": "sim_listening",
                "url": sim.base_url,
                "host": sim.host,
                "port": sim.port,
                "pid": os.getpid(),
                "config": asdict(cfg),
            }
            sys.stdout.write(orjson.dumps(line).decode() + "\n")
            sys.stdout.flush()
            await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0


def main(argv: list[str]) -> int:
    """``synthd sim ...`` / ``python -m synthd.sim ...``; returns the exit code.

    0 after a signal-initiated shutdown, 2 for bad arguments (argparse's message on stderr),
    1 when the server cannot start (e.g. the port is taken) or is forced down.
    """
    try:
        cfg = parse_args(argv)
    except SystemExit as e:  # argparse exits on --help and on errors; we return instead
        return e.code if isinstance(e.code, int) else 2
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(serve(cfg))
    except OSError as e:
        sys.stderr.write(orjson.dumps({"event": "sim_failed", "error": str(e)}).decode() + "\n")
        return 1
    except asyncio.CancelledError:
        return 1
