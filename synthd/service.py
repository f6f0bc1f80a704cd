"""The daemon's HTTP endpoint: ``/healthz`` (liveness and readiness), ``/metrics``.

Bound to 127.0.0.1 by default: metrics name jobs and files, and nothing here
needs to face a network. ``/healthz`` answers 200 while the event loop runs
and no long-lived task has died (503 with the reason while a failed daemon exits);
its ``ready`` field (and ``/readyz``, 503 until then) says whether every
provider has answered at least once and none is in an outage. ``/healthz`` stays
200 through an outage (a restart does not fix a provider); its ``providers``
field says which is down.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from synthd.config import parse_listen
from synthd.looplag import LagCollector
from synthd.metrics import StatsCollector

if TYPE_CHECKING:
    from synthd.daemon import Daemon


async def start_service(daemon: Daemon, listen: str) -> web.AppRunner:
    registry = CollectorRegistry()
    registry.register(
        StatsCollector({n: rt.stats for n, rt in daemon.jobs.items()}, daemon.provider_stats)
    )
    registry.register(LagCollector(daemon.loop_lag))

    used = {rt.job.config.provider for rt in daemon.jobs.values()}

    def ready() -> bool:
        return all(
            daemon.provider_stats[name].answered and daemon.provider_stats[name].up for name in used
        )

    def providers() -> dict[str, dict[str, object]]:
        return {
            name: {"up": p.up, "outages": p.outages}
            for name, p in daemon.provider_stats.items()
            if name in used
        }

    async def healthz(_: web.Request) -> web.Response:
        failure = daemon.failure
        return web.json_response(
            {
                "status": "ok" if failure is None else "failing",
                "ready": ready(),
                "uptime_s": round(time.time() - daemon.started, 1),
                "output_blocked": daemon.writer.blocked,
                "failure": None if failure is None else {"task": failure[0], "error": failure[1]},
                "providers": providers(),
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

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = parse_listen(listen)
    site = web.TCPSite(runner, host, port)
    await site.start()
    daemon.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner
