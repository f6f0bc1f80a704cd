"""The live status page: ``/`` (the page), ``/static/*`` (its assets), ``/api/status`` (JSON).

Served by the daemon's HTTP endpoint (``synthd.service``) beside ``/metrics``. The page is
static HTML, CSS and a small script, all package data read once at start-up: no CDN, so it
works offline. The script polls ``/api/status`` every few seconds; that document is
``synthd.livestatus.snapshot`` over the same counters ``/metrics`` exports, plus a
15-minute history that a task here samples every ``history.EVERY_S`` (bounded: see
``synthd.history``).

Record samples are the user's data. While the endpoint listens on loopback only, the page
is open like ``/metrics``. Listening beyond it, ``/`` and ``/api/status`` need the token
from ``SYNTHD_STATUS_TOKEN``, as ``Authorization: Bearer <token>`` (scripts) or as the
password of HTTP Basic auth (a browser asks for it on a 401); without a token set they
answer 403 and the start-up log says why. Assets carry no data and are always served.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from importlib import resources

import orjson
import structlog
from aiohttp import web

from synthd.config import Price
from synthd.history import EVERY_S, History, ProviderSample
from synthd.livestatus import Health, RecentLines, snapshot
from synthd.metrics import JobStats, ProviderStats
from synthd.monitor import JobInfo, Limits

log = structlog.get_logger("synthd.statuspage")

ASSETS = {"status.js": "text/javascript", "status.css": "text/css"}
_REALM = 'Basic realm="synthd status", charset="UTF-8"'
# The page loads nothing from anywhere but the daemon, and is never framed by another site.
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class PageSources:
    """What the page reads: the daemon's own objects and callables, never copies."""

    version: str
    jobs: Mapping[str, JobStats]
    info: Mapping[str, JobInfo]
    prices: Mapping[str, Price]
    providers: Mapping[str, ProviderStats]  # only the providers some job uses
    limits: Callable[[], Mapping[str, Limits]]
    health: Callable[[], Health]
    recent: RecentLines


def is_loopback(host: str) -> bool:
    """Whether a listen host is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, a wildcard ("0.0.0.0", "::") or an interface address


def authorized(header: str | None, token: str) -> bool:
    """``Bearer <token>``, or Basic auth whose password is the token (any user name)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        value = decoded.partition(":")[2]
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.encode(), token.encode())


class StatusPage:
    """The routes and the sampling task; ``add_to(app)`` wires both to the app's lifetime."""

    def __init__(self, sources: PageSources, exposed: bool, token: str | None) -> None:
        self.sources = sources
        self.exposed = exposed  # listening beyond loopback
        self.token = token
        self.history = History()
        pkg = resources.files("synthd") / "static"
        self._index = (pkg / "index.html").read_bytes()
        self._assets = {name: (pkg / name).read_bytes() for name in ASSETS}

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/", self.index)
        app.router.add_get("/api/status", self.status)
        app.router.add_get("/static/{name}", self.asset)
        app.cleanup_ctx.append(self._sampling)
        if self.exposed and self.token is None:
            log.warning(
                "status_page_off",
                reason="the endpoint listens beyond loopback and SYNTHD_STATUS_TOKEN is not set",
                note="/ and /api/status answer 403; /metrics, /healthz and /readyz are served",
            )

    def _refused(self, request: web.Request) -> web.Response | None:
        """None if the request may see record samples, else the answer that says no."""
        if not self.exposed:
            return None
        if self.token is None:
            return web.Response(
                status=403,
                text="the status page is off: the service listens beyond loopback and "
                "SYNTHD_STATUS_TOKEN is not set\n",
            )
        if authorized(request.headers.get("Authorization"), self.token):
            return None
        return web.Response(
            status=401, text="a token is required\n", headers={"WWW-Authenticate": _REALM}
        )

    async def index(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        return web.Response(body=self._index, content_type="text/html", headers=_PAGE_HEADERS)

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return web.Response(
            body=self._assets[name],
            content_type=ASSETS[name],
            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    async def status(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        body = orjson.dumps(self.document(asyncio.get_running_loop().time()))
        return web.Response(
            body=body, content_type="application/json", headers={"Cache-Control": "no-store"}
        )

    def document(self, now: float) -> dict[str, object]:
        s = self.sources
        return snapshot(
            version=s.version,
            health=s.health(),
            jobs=s.jobs,
            info=s.info,
            prices=s.prices,
            providers=s.providers,
            limits=s.limits(),
            history=self.history,
            recent=s.recent,
            now=now,
        )

    def sample(self, now: float) -> None:
        """One point of history: each used provider's totals and each job's items done."""
        s = self.sources
        requests = dict.fromkeys(s.providers, 0)
        tokens = dict.fromkeys(s.providers, 0)
        for name, stats in s.jobs.items():
            info = s.info.get(name)
            if info is None or info.provider not in requests:
                continue
            requests[info.provider] += sum(stats.requests.values())
            tokens[info.provider] += stats.prompt_tokens + stats.completion_tokens
            self.history.sample_job(name, now, stats.items_done)
        for name, p in s.providers.items():
            sample = ProviderSample(now, requests[name], tokens[name], p.rate_limited)
            self.history.sample_provider(name, sample)

    async def _sample_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.sample(loop.time())
            await asyncio.sleep(EVERY_S)

    async def _sampling(self, _: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self._sample_forever(), name="status-history")
        task.add_done_callback(_log_failure)
        yield
        task.cancel()
        # A sampler that died has been logged; the page only loses its chart, the daemon
        # must not fail its shutdown over it.
        await asyncio.gather(task, return_exceptions=True)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("status_history_failed", error=repr(exc), exc_info=exc)
