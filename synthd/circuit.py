"""A provider's circuit: is it failing one item, or everyone? Pure: the caller passes the time.

One item failing while others succeed is that item's problem: it is retried and, after
``max_attempts``, dead-lettered. When the provider fails for everyone it is an outage, and
no item should pay for it. The rule (chosen to need no clock and no tuning of rates):

* **down** when ``trip_items`` different items have failed with no success in between. A
  success anywhere clears the count, so a poison item failing again and again never trips it,
  nor does a 5% fault rate (five failures in a row of different items: about 3 in 10 million).
  Only failures that say nothing came back count (5xx, timeouts, refused or dropped
  connections, an exhausted quota); a 429, a 4xx or a 200 that does not parse is an answer,
  and an answering provider is up.
* while down, one request at a time is let through as a probe, after ``probe_first_s``, then
  twice as long after each failed probe, capped at ``probe_max_s``;
* **up** again on the first answer.

An item out of attempts waits for a verdict before it is dead-lettered (see
``synthd.pipeline``): the failures before the trip may already have been the outage's.

The dispatcher owns the waiting (``synthd.pipeline``); this class only counts and decides.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal

State = Literal["up", "down"]


@dataclass(slots=True)
class Circuit:
    """One provider's up/down verdict (see the module docstring); owned by its dispatcher,
    called on the event loop, with the loop's time passed in."""

    trip_items: int = 5
    probe_first_s: float = 0.5
    probe_max_s: float = 10.0
    state: State = "up"
    since: float = 0.0  # when the state last changed
    probes: int = 0  # failed probes in this outage
    last_error: str = ""
    _failing: set[Hashable] = field(default_factory=set)

    @property
    def up(self) -> bool:
        return self.state == "up"

    def answered(self, now: float, sent_at: float | None = None) -> bool:
        """The provider answered a request sent at ``sent_at``. True when this ends an outage.

        An answer to a request sent before the outage began is a straggler: it does not end
        the outage (the circuit would flap: down, up, down).
        """
        self._failing.clear()
        if self.state == "up" or (sent_at is not None and sent_at < self.since):
            return False
        self.state, self.since, self.probes = "up", now, 0
        return True

    def failed(self, item: Hashable, now: float, error: str = "", probe: bool = False) -> bool:
        """A request of ``item`` failed in a way a retry may fix; ``probe``: it was the
        outage's probe (stragglers sent before the outage do not slow the probing down).
        True when this starts an outage."""
        self.last_error = error
        if self.state == "down":
            self.probes += probe
            return False
        self._failing.add(item)
        if len(self._failing) < self.trip_items:
            return False
        self._failing.clear()
        self.state, self.since, self.probes = "down", now, 0
        return True

    def probe_delay_s(self) -> float:
        """How long to wait before the next probe: doubling from the first, capped."""
        return min(self.probe_max_s, self.probe_first_s * 2.0 ** min(self.probes, 30))
