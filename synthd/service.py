"""The daemon's HTTP endpoint: ``/healthz`` (liveness and readiness), ``/metrics``.

Bound to 127.0.0.1 by default: metrics name jobs and files, and nothing here
needs to face a network. ``/healthz`` answers 200 while the event loop runs
and no long-lived task has died (503 with the reason while a failed daemon exits);
its ``ready`` field (and ``/readyz``, 503 until then) says whether every
provider has answered at least once and none is in an outage. ``/healthz`` stays
200 through an outage (a restart does not fix a provider); its ``providers``
field says which is down.

``/`` is the live status page and ``/api/status`` its JSON (``synthd.statuspage``; behind a
token when listening beyond loopback); ``/metrics`` adds the dashboard's gauges
(``synthd.monitor``) to the hot-path counters.

The endpoint sees the daemon only through ``Watched``: the figures it shows and two
callables for the daemon's state, read at each request on the daemon's event loop. It writes
nothing back; ``start_service`` returns the bound port.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from synthd import __version__
from synthd.config import Price, parse_listen
from synthd.histogram import Histogram
from synthd.livestatus import Health, RecentLines
from synthd.looplag import LagCollector, LoopLag
from synthd.metrics import JobStats, ProviderStats, StatsCollector
from synthd.monitor import JobInfo, Limits, MonitorCollector
from synthd.statuspage import PageSources, StatusPage, is_loopback


@dataclass(frozen=True, slots=True)
class Watched:
    """What the endpoint shows of a daemon; the daemon's own objects, never copies."""

    jobs: dict[str, JobStats]
    providers: dict[str, ProviderStats]
    providers_used: frozenset[str]  # by some job: only these decide readiness
    loop_lag: LoopLag
    started: float  # wall-clock start, for uptime_s
    failure: Callable[[], tuple[str, str] | None]  # (task, error) that stopped the daemon
    output_blocked: Callable[[], str | None]  # why the writer cannot write, if it cannot
    # For the dashboard's gauges and the status page:
    info: Mapping[str, JobInfo] = field(default_factory=dict)
    prices: Mapping[str, Price] = field(default_factory=dict)
    limits: Callable[[], Mapping[str, Limits]] = dict
    commit_s: Histogram | None = None  # the writer's commit latency
    recent: RecentLines = field(default_factory=RecentLines)
    status_token: str | None = None  # SYNTHD_STATUS_TOKEN
    coordination: Callable[[], dict[str, object]] | None = None  # several daemons on Redis
    collectors: list[Collector] = field(default_factory=list)  # more for /metrics


async def start_service(watched: Watched, listen: str) -> tuple[web.AppRunner, int]:
    """Serve the endpoint on ``listen``; returns the runner (to clean up) and the bound port."""
    registry = CollectorRegistry()
    registry.register(StatsCollector(watched.jobs, watched.providers))
    registry.register(LagCollector(watched.loop_lag))
    registry.register(
        MonitorCollector(
            __version__,
            watched.jobs,
            watched.info,
            watched.limits,
            watched.output_blocked,
            watched.commit_s,
        )
    )
    for collector in watched.collectors:
        registry.register(collector)

    used = watched.providers_used
    stats: Mapping[str, ProviderStats] = watched.providers

    def ready() -> bool:
        return all(stats[name].answered and stats[name].up for name in used)

    def providers() -> dict[str, dict[str, object]]:
        return {
            name: {"up": p.up, "outages": p.outages} for name, p in stats.items() if name in used
        }

    async def healthz(_: web.Request) -> web.Response:
        failure = watched.failure()
        return web.json_response(
            {
                "status": "ok" if failure is None else "failing",
                "ready": ready(),
                "uptime_s": round(time.time() - watched.started, 1),
                "output_blocked": watched.output_blocked(),
                "failure": None if failure is None else {"task": failure[0], "error": failure[1]},
                "providers": providers(),
                **(
                    {} if watched.coordination is None else {"coordination": watched.coordination()}
                ),
            },
            status=200 if failure is None else 503,
        )

    async def readyz(_: web.Request) -> web.Response:
        ok = ready()
        body: dict[str, object] = {"ready": ok}
        down = [name for name, p in providers().items() if not p["up"]]
        if down:
            body["down"] = down
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def health() -> Health:
        failure = watched.failure()
        return Health(
            status="ok" if failure is None else "failing",
            ready=ready(),
            output_blocked=watched.output_blocked(),
            failure=None if failure is None else f"{failure[0]}: {failure[1]}",
            uptime_s=round(time.time() - watched.started, 1),
        )

    host, port = parse_listen(listen)
    page = StatusPage(
        PageSources(
            version=__version__,
            jobs=watched.jobs,
            info=watched.info,
            prices=watched.prices,
            providers={name: p for name, p in stats.items() if name in used},
            limits=watched.limits,
            health=health,
            recent=watched.recent,
        ),
        exposed=not is_loopback(host),
        token=watched.status_token,
    )
    app = web.Application()
    page.add_to(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, runner.addresses[0][1]
