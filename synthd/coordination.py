"""Several daemons on one Redis: this node's lease, the nodes alive, dead nodes taken over.

Each node holds a lease, ``{synthd}:lease:<node>``, a key whose value names the process
that holds it and whose TTL (``lease_ttl_s``) is renewed every third of it. The nodes ever
seen are in ``{synthd}:nodes``, scored by when their lease runs out (server time), with
what ``synthd status`` shows in ``{synthd}:node:<node>``. All these keys share the hash tag
``{synthd}``, so one script touches them on one Redis Cluster shard.

A node starts only once it holds its own lease: if another process holds it (the node
is running elsewhere, or a survivor is finishing its work) it waits. A node that finds its
lease taken while it runs (it was frozen past the TTL and another node took it over) stops
at once with ``LeaseLost``: two processes must never write one node's files.

When a node's lease has run out for a further TTL (a live node renews every third of it,
so one that could not reach Redis for a moment is not taken for dead; nor is any in the two
TTLs after Redis comes back), the first survivor to take it (``takeover = true``) runs
the dead node's recovery and finishes its claimed files *as that node* (its checkpoint,
its shards, on the shared filesystem), then lets the lease go: exactly once rests on the
ordinary recovery. How that run is made is the daemon's (``on_takeover``); this module
only decides who and when. With ``takeover = false`` a dead node's files wait for it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from synthd.budget import Budget
from synthd.config import ProviderConfig
from synthd.config_coordination import CoordinationConfig
from synthd.errors import SynthdError
from synthd.redisclient import connect
from synthd.sharedbudget import REDIS_DOWN, SharedBudget

log = structlog.get_logger("synthd.coordination")

NODES_KEY = "{synthd}:nodes"
HEARTBEAT = "alive"  # in state/<node>/
_WAIT_LEASE_S = 1.0  # how often a node waiting for its own lease asks again
_INFO_TTL_MS = 86_400_000

# KEYS: lease, nodes, info. ARGV: node, holder, ttl ms, info fields (name, value)...
# Takes or renews the lease if it is free or already this holder's. Returns {1|0, holder}.
LEASE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[2] then return {0, cur} end
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
if #ARGV > 3 then
  redis.call('HSET', KEYS[3], unpack(ARGV, 4))
  redis.call('PEXPIRE', KEYS[3], 86400000)
end
return {1, ARGV[2]}
"""

# KEYS: lease, nodes, info. ARGV: node, holder, "gone" or "hand_over". Lets go of a lease
# this holder has: the node leaves the list, or (work left) is marked dead for a takeover now.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
  if ARGV[3] == 'hand_over' then
    redis.call('ZADD', KEYS[2], 0, ARGV[1])
  else
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('DEL', KEYS[3])
  end
  return 1
end
return 0
"""

# KEYS: nodes. ARGV: grace ms. Returns the nodes whose lease ran out more than the grace ago
# (by the server's clock), and the count of live ones.
DEAD_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
local live = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
return {live, dead}
"""


def lease_key(node: str) -> str:
    return f"{{synthd}}:lease:{node}"


def info_key(node: str) -> str:
    return f"{{synthd}}:node:{node}"


class LeaseLost(SynthdError):
    """Another process holds this node's lease: this one must stop writing at once."""

    def __init__(self, node: str, holder: str) -> None:
        super().__init__(f"node {node}: the lease is held by {holder}; stopping")
        self.node = node
        self.holder = holder


@dataclass(slots=True)
class CoordinationStats:
    """What ``/healthz`` and ``/metrics`` show of the coordination."""

    redis_up: bool = True
    redis_down_count: int = 0
    mode: str = "shared"  # "shared", or on_redis_down's "pause" / "split" while down
    nodes: int = 1
    takeovers: int = 0


class Coordinator:
    """This node's Redis side: its lease, the shared budgets' health, the takeovers.

    ``start`` blocks until this node holds its lease; ``run`` (a supervised task) renews it
    and takes over dead nodes; ``close`` gives the budgets' stock and the lease back. A
    takeover's daemon shares this coordinator (``attach`` its budgets) but not its lease.
    """

    def __init__(self, cfg: CoordinationConfig, state_root: Path | None = None) -> None:
        self.cfg = cfg
        # ``state/<node>/alive``, touched with each renewal: the shared filesystem's word
        # that a node lives even when Redis cannot hear from it (None: no such check).
        self.state_root = state_root
        self.node = cfg.node
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.redis: Redis = connect(cfg.redis_url)
        self._lease: AsyncScript = self.redis.register_script(LEASE_LUA)
        self._release: AsyncScript = self.redis.register_script(RELEASE_LUA)
        self._dead: AsyncScript = self.redis.register_script(DEAD_LUA)
        self.stats = CoordinationStats()
        self.gates: list[SharedBudget] = []
        self.started = time.time()
        self._held: set[str] = set()  # nodes whose lease this process holds (its own first)
        self._takeover_after = 0.0  # monotonic: no takeover before (just after Redis returns)
        self._deferred: set[str] = set()  # dead by Redis, alive by the filesystem (logged once)
        self._takeovers: dict[str, asyncio.Task[None]] = {}  # dead node -> its takeover

    @property
    def nodes(self) -> int:
        return self.stats.nodes

    # -- health, as the gates and the lease see it ---------------------------------

    def redis_up(self) -> None:
        if not self.stats.redis_up:
            # Every lease may have run out while Redis was away: let the live nodes renew
            # theirs before any is taken for dead.
            self._takeover_after = time.monotonic() + 2 * self.cfg.lease_ttl_s
            self.stats.redis_up = True
            self.stats.mode = "shared"
            log.warning("redis_back", node=self.node, note="shared budget again, from empty")

    def redis_down(self, error: str) -> None:
        if self.stats.redis_up:
            self.stats.redis_up = False
            self.stats.redis_down_count += 1
            self.stats.mode = self.cfg.on_redis_down
            log.error(
                "redis_down",
                node=self.node,
                error=error,
                action=self.cfg.on_redis_down,
                nodes=self.stats.nodes,
            )

    def health(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "redis": "up" if self.stats.redis_up else "down",
            "budget": self.stats.mode,
            "nodes": self.stats.nodes,
            "takeovers": self.stats.takeovers,
        }

    # -- the shared budgets ------------------------------------------------------

    def attach(self, provider: str, cfg: ProviderConfig, budget: Budget) -> SharedBudget:
        """Share ``budget`` with the other nodes (see ``synthd.sharedbudget``)."""
        gate = SharedBudget(
            provider,
            cfg,
            self.cfg,
            self.redis,
            self,
            budget.paused_elsewhere,
            budget.adopt_shared,
        )
        budget.gate = gate
        self.gates.append(gate)
        return gate

    # -- the lease -----------------------------------------------------------------

    def _info(self) -> list[Any]:
        granted = sum(g.granted_requests for g in self.gates)
        return [
            "holder",
            self.holder,
            "started",
            self.started,
            "granted_requests",
            granted,
            "at",
            time.time(),
        ]

    async def _take_lease(self, node: str, info: bool) -> tuple[bool, str]:
        keys = [lease_key(node), NODES_KEY, info_key(node)]
        ttl = int(self.cfg.lease_ttl_s * 1000)
        args: list[Any] = [node, self.holder, ttl, *(self._info() if info else [])]
        ok, holder = await self._lease(keys=keys, args=args)
        text = holder.decode() if isinstance(holder, bytes) else str(holder)
        return bool(ok), text

    async def start(self) -> None:
        """Wait until this node holds its own lease (Redis reachable, nobody else holding
        it). Logs once while it waits."""
        said = ""
        while True:
            try:
                ok, holder = await self._take_lease(self.node, info=True)
            except REDIS_DOWN as e:
                ok, holder = False, f"redis unreachable: {e!r}"
            if ok:
                self._held.add(self.node)
                log.info("lease_taken", node=self.node, ttl_s=self.cfg.lease_ttl_s)
                return
            if holder != said:
                said = holder
                log.warning("lease_wait", node=self.node, held_by=holder)
            await asyncio.sleep(_WAIT_LEASE_S)

    async def run(self, on_takeover: Callable[[str], Awaitable[None]]) -> None:
        """Renew the leases held, count the live nodes, take over dead ones. Raises
        ``LeaseLost`` if this node's lease was taken while it ran."""
        every = self.cfg.lease_ttl_s / 3
        try:
            while True:
                await self._renew()
                await asyncio.to_thread(self._beat)
                dead = await self._dead_nodes() if self.stats.redis_up else []  # counts too
                if self.cfg.takeover and time.monotonic() >= self._takeover_after:
                    for node in dead:
                        if node in self._held:
                            continue
                        if await self._try_take(node):
                            task = asyncio.create_task(self._take_over(node, on_takeover))
                            self._takeovers[node] = task
                            task.add_done_callback(functools.partial(self._took_over, node))
                await asyncio.sleep(every)
        finally:
            for task in self._takeovers.values():
                task.cancel()

    def _took_over(self, node: str, task: asyncio.Task[None]) -> None:
        if self._takeovers.get(node) is task:
            del self._takeovers[node]

    async def _renew(self) -> None:
        for node in list(self._held):
            try:
                ok, holder = await self._take_lease(node, info=node == self.node)
            except REDIS_DOWN as e:
                self.redis_down(repr(e))
                return
            self.redis_up()
            if not ok:
                if node == self.node:
                    raise LeaseLost(node, holder)
                self._held.discard(node)
                log.error("takeover_lease_lost", node=node, held_by=holder)
                # Another node has taken it over (our renewals came too late: a stalled
                # loop): stop finishing its files, so that two do not write them at once.
                if (task := self._takeovers.get(node)) is not None:
                    task.cancel()

    async def _dead_nodes(self) -> list[str]:
        try:
            grace_ms = int(self.cfg.lease_ttl_s * 1000)
            live, dead = await self._dead(keys=[NODES_KEY], args=[grace_ms])
        except REDIS_DOWN as e:
            self.redis_down(repr(e))
            return []
        self.stats.nodes = max(1, int(live))
        return [d.decode() if isinstance(d, bytes) else str(d) for d in dead]

    def _heartbeat(self, node: str) -> Path | None:
        return None if self.state_root is None else self.state_root / node / HEARTBEAT

    def _beat(self) -> None:
        path = self._heartbeat(self.node)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    def _alive_on_disk(self, node: str) -> bool:
        """Whether ``node`` touched its heartbeat lately: alive, only cut off from Redis
        (a partition), and still writing its files. Never taken over then."""
        path = self._heartbeat(node)
        if path is None:
            return False
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        return age < 1.5 * self.cfg.lease_ttl_s  # a live node touches it every third

    async def _try_take(self, node: str) -> bool:
        if await asyncio.to_thread(self._alive_on_disk, node):
            if node not in self._deferred:
                self._deferred.add(node)
                log.warning(
                    "takeover_deferred",
                    node=self.node,
                    dead_node=node,
                    note="its lease ran out but it is alive on the shared filesystem",
                )
            return False
        self._deferred.discard(node)
        try:
            ok, _ = await self._take_lease(node, info=False)
        except REDIS_DOWN as e:
            self.redis_down(repr(e))
            return False
        if ok:
            self._held.add(node)
        return ok

    async def _take_over(self, node: str, on_takeover: Callable[[str], Awaitable[None]]) -> None:
        log.warning("takeover_start", node=self.node, dead_node=node)
        self.stats.takeovers += 1
        try:
            await on_takeover(node)
        except Exception as e:  # its lease runs out; another node tries again
            self._held.discard(node)
            log.error("takeover_failed", node=self.node, dead_node=node, error=repr(e))
            return
        try:
            await self._release(
                keys=[lease_key(node), NODES_KEY, info_key(node)], args=[node, self.holder]
            )
        except REDIS_DOWN as e:  # the lease runs out by itself; the next taker finds no work
            self.redis_down(repr(e))
        finally:
            # Only now: while the release is on its way the node is still listed as dead, and
            # the loop would take it over a second time.
            self._held.discard(node)
        log.warning("takeover_done", node=self.node, dead_node=node)

    async def close(self, work_left: bool) -> None:
        """Give the budgets' stock back and let this node's lease go. ``work_left``: files
        it claimed are unfinished (a drain cut short), so another node takes them over now,
        as if it had died; else it leaves the list of nodes."""
        for gate in self.gates:
            await gate.close()
        if (beat := self._heartbeat(self.node)) is not None:
            beat.unlink(missing_ok=True)  # stopped: a takeover need not wait for it to age
        if self.node in self._held:
            self._held.discard(self.node)
            how = "hand_over" if work_left and self.cfg.takeover else "gone"
            try:
                await self._release(
                    keys=[lease_key(self.node), NODES_KEY, info_key(self.node)],
                    args=[self.node, self.holder, how],
                )
                log.info("lease_released", node=self.node, work_left=work_left)
            except REDIS_DOWN:
                log.warning("lease_not_released", node=self.node, note="it runs out by itself")
        await self.redis.aclose()


class CoordinationCollector(Collector):
    """The coordination's state for ``/metrics``."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    def collect(self) -> Any:
        s = self.c.stats
        up = GaugeMetricFamily("synthd_redis_up", "1 while Redis answers", labels=["node"])
        up.add_metric([self.c.node], 1.0 if s.redis_up else 0.0)
        yield up
        mode = GaugeMetricFamily(
            "synthd_shared_budget_mode",
            "1 for the mode the shared budget is in (shared, pause, split)",
            labels=["node", "mode"],
        )
        for m in ("shared", "pause", "split"):
            mode.add_metric([self.c.node, m], 1.0 if s.mode == m else 0.0)
        yield mode
        nodes = GaugeMetricFamily("synthd_nodes", "Nodes holding a live lease", labels=["node"])
        nodes.add_metric([self.c.node], float(s.nodes))
        yield nodes
        down = CounterMetricFamily("synthd_redis_down", "Times Redis was lost", labels=["node"])
        down.add_metric([self.c.node], float(s.redis_down_count))
        yield down
        taken = CounterMetricFamily(
            "synthd_takeovers", "Dead nodes whose work this node finished", labels=["node"]
        )
        taken.add_metric([self.c.node], float(s.takeovers))
        yield taken
        trips = CounterMetricFamily(
            "synthd_shared_budget_round_trips",
            "Calls to the shared budget in Redis",
            labels=["provider"],
        )
        for g in self.c.gates:
            trips.add_metric([g.provider], float(g.round_trips))
        yield trips
