"""The ``[coordination]`` section: several daemons sharing one budget and one spool
through Redis (``docs/scaleout.md``). Read by ``synthd.coordination``,
``synthd.sharedbudget`` and ``synthd.nodes``; loaded by ``synthd.config``."""

from __future__ import annotations

import re
import socket
from typing import Annotated, Literal

from pydantic import Field, field_validator

from synthd.config_base import Frozen

RedisDown = Literal["pause", "split"]

_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CoordinationConfig(Frozen):
    """Several daemons sharing one budget and one spool through Redis (``docs/scaleout.md``)."""

    redis_url: str
    node: str = Field(default_factory=lambda: _default_node(socket.gethostname()))
    lease_ttl_s: Annotated[float, Field(ge=1, le=15)] = 10.0
    takeover: bool = True
    on_redis_down: RedisDown = "pause"
    block_s: Annotated[float, Field(gt=0, le=1)] = 0.1

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("node")
    @classmethod
    def _node_name(cls, v: str) -> str:
        if not _NODE_NAME.match(v):
            raise ValueError("a node name may hold letters, digits, '_', '-', '.'")
        return v


def _default_node(hostname: str) -> str:
    """The host's short name, made a valid node name."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", hostname.split(".")[0]).lstrip("_.-")
    return name or "node"
