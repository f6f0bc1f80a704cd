"""This daemon's part in a scale-out: several daemons on one Redis (``[coordination]``).

A daemon started with ``[coordination]`` owns its ``Coordinator``: it takes its lease before
touching anything of its node's, runs the coordination loop, which hands it the dead nodes to
take over, and at its end gives the shared budgets' stock back and lets the lease go.

A takeover finishes a dead node's claimed files as that node (its checkpoint, its shards):
another daemon, run in this process in once mode, that recovers, resumes that node's files
and claims nothing new. It shares the host's coordinator; at its end it gives back only the
stock of its own budgets, and it is not what systemd started (no notifications).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from synthd.budget import Budget
from synthd.checkpoint import STATE_FILE
from synthd.config import Config
from synthd.coordination import Coordinator

# Runs a daemon as another node, sharing the host's coordinator (the daemon module's own).
RunNode = Callable[[Config, Coordinator], Coroutine[Any, Any, object]]


class ScaleOut:
    """Whether this daemon coordinates with others, and how: as a node of its own, or as a
    takeover of a dead one inside its host."""

    def __init__(self, config: Config, coordinator: Coordinator | None, run_node: RunNode) -> None:
        self.config = config
        # Several daemons on one Redis: our own coordinator, or (a takeover) the host's.
        self.own = coordinator is None and config.coordination is not None
        if self.own and config.coordination is not None:
            coordinator = Coordinator(config.coordination, config.paths.state)
        self.coordinator = coordinator
        self.takeover = coordinator is not None and not self.own
        self._run_node = run_node

    async def start(self) -> None:
        """Take this node's lease; nothing of this node's is touched before."""
        if self.own and self.coordinator is not None:
            await self.coordinator.start()

    def loop(self) -> Coroutine[Any, Any, None] | None:
        """The coordination loop for the daemon to supervise; None unless the coordinator
        is ours."""
        if self.own and self.coordinator is not None:
            return self.coordinator.run(self._take_over)
        return None

    async def _take_over(self, node: str) -> None:
        """Finish a dead node's claimed files as that node (its checkpoint, its shards):
        its recovery, then its resumed files, in once mode, without claiming new ones."""
        coord = self.config.coordination
        assert coord is not None and self.coordinator is not None
        as_node = dataclasses.replace(
            self.config,
            coordination=coord.model_copy(update={"node": node}),
            service=self.config.service.model_copy(update={"listen": ""}),
        )
        if not (as_node.state_dir / STATE_FILE).exists():
            return  # it never wrote anything here: nothing to finish
        await self._run_node(as_node, self.coordinator)

    async def close(self, work_left: bool, budgets: Iterable[Budget]) -> None:
        """Give the shared budgets' stock back; our own coordinator lets the lease go."""
        c = self.coordinator
        if c is None:
            return
        if self.own:
            await c.close(work_left)
            return
        for budget in budgets:
            if budget.gate in c.gates:
                c.gates.remove(budget.gate)
                await budget.gate.close()
