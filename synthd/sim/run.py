"""Running the simulator: in the current event loop (``running_sim``) or as the CLI.

``running_sim`` binds the app of ``synthd.sim.server`` and yields a ``RunningSim``
handle (its URL and stats); ``serve`` and ``main`` are ``synthd sim`` and
``python -m synthd.sim``: signals, the ``sim_listening`` line and exit codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from aiohttp import web

from synthd.sim.config import SimConfig, parse_args
from synthd.sim.server import SIM_KEY, Sim, make_app


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
