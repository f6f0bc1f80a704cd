"""One provider's budget shared by every node through Redis, spent locally in small blocks.

Redis holds one bucket per provider (requests and tokens in one hash, under the hash tag
``{synthd:<provider>}`` so that Redis Cluster keeps a provider's keys on one shard). It
refills at the provider's limit by the *server's* clock (``TIME`` inside the script: the
nodes' clocks never meet), holds at most ``_CAPACITY_S`` of it and starts empty, so a
restarted Redis, or a node that comes back, never releases a burst.

A node does not go to Redis per request. Its ``SharedBudget`` keeps a small local stock and,
when a request finds it short, takes a block (``block_s`` of the node's share of the rate,
at least what this request needs) in one script call that takes requests and tokens
together, atomically. The local ``Budget`` still paces what is sent (its buckets, its 429
cut and ramp); this gate only adds: nothing is sent that the shared bucket did not grant.
Usage settles tokens locally (credit is spent on later requests, never returned as a
burst); ``close`` gives the unused stock back.

The same script call carries the shared state the other way: a 429 seen by any node sets
a pause key (``rate_limited``) that every node honours on its next call, and limits adopted
from headers (``adopt``) are stored for all; the effective limits come back with each grant.

When Redis cannot be reached, ``[coordination] on_redis_down`` decides: ``pause`` sends
nothing until it is back; ``split`` goes on at ``limit / nodes`` (the nodes last counted),
from a local bucket that starts empty. Either is reported once per change to the
``Coordinator`` (``/healthz``, ``/metrics``, the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from synthd.config import ProviderConfig
from synthd.config_coordination import CoordinationConfig

log = structlog.get_logger("synthd.sharedbudget")

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
_CAPACITY_S = 0.5  # the shared bucket holds this much of the rate: the most any burst is
_RETRY_DOWN_S = 0.5  # how often a node asks again while Redis is unreachable
_MAX_WAIT_S = 0.25  # a node never sleeps longer than this between asks (a pause may end)
_LIMITS_TTL_MS = 3_600_000  # an adopted limit is forgotten after an hour without a word

# KEYS: bucket, pause, limits. ARGV: rpm, tpm, capacity_s, ask_r, ask_t, need_t, give_r, give_t.
# Returns: granted requests, granted tokens, wait ms, pause id ("" if none), rpm, tpm.
TAKE_LUA = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local lim = redis.call('HMGET', KEYS[3], 'rpm', 'tpm')
if lim[1] then rpm = math.min(rpm, tonumber(lim[1])) end
if lim[2] then tpm = math.min(tpm, tonumber(lim[2])) end
local cap_s = tonumber(ARGV[3])
local ask_r = tonumber(ARGV[4])
local ask_t = tonumber(ARGV[5])
local need_t = tonumber(ARGV[6])
local rr = rpm / 60000.0
local tr = tpm / 60000.0
local cap_r = math.max(1, rpm * cap_s / 60.0)
local cap_t = math.max(1, tpm * cap_s / 60.0)
local b = redis.call('HMGET', KEYS[1], 'r', 't', 'ts')
local lr, lt, ts = 0, 0, now
if b[3] then
  lr = tonumber(b[1]); lt = tonumber(b[2]); ts = tonumber(b[3])
end
local el = math.max(0, now - ts)
lr = math.min(cap_r, lr + el * rr + tonumber(ARGV[7]))
lt = math.min(cap_t, lt + el * tr + tonumber(ARGV[8]))
local g_r, g_t, wait = 0, 0, 0
local pause_id = ''
local pause_ms = redis.call('PTTL', KEYS[2])
if pause_ms > 0 then
  pause_id = redis.call('GET', KEYS[2]) or ''
  wait = pause_ms
elseif ask_r > 0 or ask_t > 0 then
  local need = math.min(need_t, cap_t)
  local need_r = math.min(ask_r, math.floor(cap_r))
  if lr >= need_r and lt >= need then
    g_r = math.min(ask_r, math.floor(lr))
    g_t = math.max(need_t, math.min(ask_t, math.floor(lt)))
    lr = lr - g_r
    lt = lt - g_t
  else
    wait = math.max((need_r - lr) / rr, (need - lt) / tr, 1)
  end
end
redis.call('HSET', KEYS[1], 'r', lr, 't', lt, 'ts', now)
redis.call('PEXPIRE', KEYS[1], 600000)
return {g_r, g_t, math.ceil(wait), pause_id, math.floor(rpm), math.floor(tpm)}
"""

# KEYS: limits. ARGV: field, value, ttl ms. Keeps the lowest limit any node was told.
ADOPT_LUA = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if (not old) or tonumber(old) > tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def provider_keys(provider: str) -> list[str]:
    """The bucket, pause and limits keys of a provider, all in one cluster slot."""
    tag = f"{{synthd:{provider}}}"
    return [f"{tag}:bucket", f"{tag}:pause", f"{tag}:limits"]


class Health(Protocol):
    """What a gate tells the coordinator: Redis answered, or could not be reached."""

    @property
    def nodes(self) -> int: ...

    def redis_up(self) -> None: ...

    def redis_down(self, error: str) -> None: ...


class SharedBudget:
    """The shared-budget gate of one provider on one node (``synthd.budget.Gate``).

    Called by ``Budget.acquire`` under its FIFO lock, so one ``take`` runs at a time.
    ``on_pause(wait_s)`` is called once per pause another node started; ``on_limits(rpm,
    tpm)`` whenever the shared limits are below the configured ones.
    """

    def __init__(
        self,
        provider: str,
        cfg: ProviderConfig,
        coord: CoordinationConfig,
        redis: Redis,
        health: Health,
        on_pause: Callable[[float], None],
        on_limits: Callable[[float, float], None],
    ) -> None:
        self.provider = provider
        self.cfg = cfg
        self.coord = coord
        self.redis = redis
        self.health = health
        self.on_pause = on_pause
        self.on_limits = on_limits
        self.keys = provider_keys(provider)
        self._take: AsyncScript = redis.register_script(TAKE_LUA)
        self._adopt: AsyncScript = redis.register_script(ADOPT_LUA)
        self.rpm = float(cfg.rpm)
        self.tpm = float(cfg.tpm)
        self.stock_r = 0.0
        self.stock_t = 0.0
        self._tokens_per_request: float | None = None
        self._seen_pauses: set[str] = set()
        self._pause_ids = itertools.count(1)
        self._split_at: float | None = None  # while Redis is down in split mode
        self._retry_at = 0.0  # when to try a down Redis again
        self._tasks: set[asyncio.Task[Any]] = set()
        self.round_trips = 0
        self.granted_requests = 0
        self.granted_tokens = 0

    async def take(self, tokens: int) -> None:
        """Wait until the shared bucket has granted one request and ``tokens``."""
        if self._tokens_per_request is None:
            self._tokens_per_request = float(tokens)
        self._tokens_per_request += 0.1 * (tokens - self._tokens_per_request)
        while self.stock_r < 1 or self.stock_t < tokens:
            await self._refill(tokens)
        self.stock_r -= 1
        self.stock_t -= tokens

    def settle(self, reserved: int, actual: int) -> None:
        """What the provider counted: the difference is spent (or owed) by later requests."""
        self.stock_t += reserved - actual
        # Credit is bounded like the local budget's: no burst out of over-estimates.
        self.stock_t = min(self.stock_t, self._block_tokens(0))

    def rate_limited(self, pause_s: float) -> None:
        """This node saw a 429: every node pauses for ``pause_s`` (a shared key with a TTL)."""
        pause_id = f"{self.coord.node}:{next(self._pause_ids)}"
        self._seen_pauses.add(pause_id)
        ms = max(1, int(pause_s * 1000))
        self._spawn(self.redis.set(self.keys[1], pause_id, px=ms))

    def adopt(self, what: str, limit: int) -> None:
        """A limit read from headers (``rpm`` or ``tpm``), for every node."""
        self._spawn(self._adopt(keys=[self.keys[2]], args=[what, limit, _LIMITS_TTL_MS]))

    async def close(self) -> None:
        """Give unused stock back to the shared bucket (best effort: Redis may be gone)."""
        for task in list(self._tasks):
            task.cancel()
        give_r, give_t = max(0.0, self.stock_r), max(0.0, self.stock_t)
        self.stock_r = self.stock_t = 0.0
        if give_r < 1 and give_t < 1:
            return
        with contextlib.suppress(*REDIS_DOWN):
            await self._call(0, 0, 0, give_r, give_t)

    # -- inside ------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        async def guarded() -> None:
            try:
                await coro
            except REDIS_DOWN as e:
                self.health.redis_down(repr(e))

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _share_per_s(self) -> float:
        return self.rpm / 60.0 / max(1, self.health.nodes)

    def _block_tokens(self, tokens: int) -> float:
        per_s = self.tpm / 60.0 / max(1, self.health.nodes)
        return max(float(tokens), per_s * self.coord.block_s)

    async def _refill(self, tokens: int) -> None:
        loop = asyncio.get_running_loop()
        if self._split_at is not None and loop.time() < self._retry_at:
            await self._split(tokens)  # between tries, a down Redis costs no connect
            return
        block_r = max(1, math.ceil(self._share_per_s() * self.coord.block_s))
        ask_r = block_r if self.stock_r < 1 else 0  # short of tokens only: ask for tokens only
        per_request = self._tokens_per_request or float(tokens)
        ask_t = max(
            tokens - self.stock_t,
            min(self._block_tokens(tokens), max(ask_r, 1) * per_request),
        )
        need_t = max(1.0, tokens - self.stock_t)
        try:
            reply = await self._call(ask_r, math.ceil(ask_t), math.ceil(need_t), 0, 0)
        except REDIS_DOWN as e:
            self.health.redis_down(repr(e))
            self._retry_at = loop.time() + _RETRY_DOWN_S
            if self.coord.on_redis_down == "pause":
                await asyncio.sleep(_RETRY_DOWN_S)
            else:
                await self._split(tokens)
            return
        self.health.redis_up()
        self._split_at = None
        granted_r, granted_t, wait_ms, pause_id, rpm, tpm = reply
        pause_id = pause_id.decode() if isinstance(pause_id, bytes) else str(pause_id)
        if float(rpm) < self.rpm or float(tpm) < self.tpm:
            self.rpm, self.tpm = min(self.rpm, float(rpm)), min(self.tpm, float(tpm))
            self.on_limits(self.rpm, self.tpm)
        if pause_id and pause_id not in self._seen_pauses:
            self._seen_pauses.add(pause_id)
            self.on_pause(int(wait_ms) / 1000.0)
        self.stock_r += int(granted_r)
        self.stock_t += int(granted_t)
        self.granted_requests += int(granted_r)
        self.granted_tokens += int(granted_t)
        if int(granted_r) == 0:
            await asyncio.sleep(min(_MAX_WAIT_S, max(0.001, int(wait_ms) / 1000.0)))

    async def _call(
        self, ask_r: int, ask_t: int, need_t: int, give_r: float, give_t: float
    ) -> list[Any]:
        self.round_trips += 1
        args = [self.cfg.rpm, self.cfg.tpm, _CAPACITY_S, ask_r, ask_t, need_t, give_r, give_t]
        reply: list[Any] = await self._take(keys=self.keys, args=args)
        return reply

    async def _split(self, tokens: int) -> None:
        """Redis is down in ``split`` mode: a local bucket at ``limit / nodes``, which starts
        empty (no burst) and holds at most ``_CAPACITY_S`` of that rate."""
        now = asyncio.get_running_loop().time()
        per_r = max(self._share_per_s(), 1e-3)
        per_t = max(self.tpm / 60.0 / max(1, self.health.nodes), 1e-3)
        if self._split_at is None:
            self._split_at = now
        elapsed, self._split_at = now - self._split_at, now
        self.stock_r = min(max(1.0, per_r * _CAPACITY_S), self.stock_r + elapsed * per_r)
        self.stock_t = min(max(float(tokens), per_t * _CAPACITY_S), self.stock_t + elapsed * per_t)
        if self.stock_r < 1 or self.stock_t < tokens:
            short_s = max((1 - self.stock_r) / per_r, (tokens - self.stock_t) / per_t)
            await asyncio.sleep(min(_MAX_WAIT_S, max(0.001, short_s)))
