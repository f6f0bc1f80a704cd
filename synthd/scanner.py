"""Finding settled files in a job's spool folder without re-reading it all the time.

A spool may hold a million files. Listing and stat-ing them all every scan
interval would cost seconds of CPU a minute on a spool where nothing happens,
so a ``Scanner`` only lists the folder when its mtime changed (a name was
added, removed or renamed) and only stats names it has not seen. Names it has
seen are either settling (stat-ed again each scan until they stop changing) or
settled (queued, handed out a batch at a time to be claimed).

The folder's mtime has a coarse clock: a name added in the same tick as the
listing that missed it leaves the mtime unchanged. So a listing is trusted
only once a second listing, made a scan interval later, saw the same mtime.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from synthd.spool import Entry, candidate_name, entry_of, refusal

# Names stat-ed per listing: bounds the memory and the time of one scan of a
# huge folder; the rest are found by the next listing.
_NEW_PER_LISTING = 16384


@dataclass(slots=True)
class _Seen:
    size: int
    mtime_ns: int
    since: float  # loop time at which this size and mtime were first seen


class Settler:
    """Decides when a file has stopped changing and may be claimed.

    A file is settled once its size and mtime stayed the same for ``settle_s``
    of the caller's clock (the event loop's, so a file whose mtime lies in the
    future, or a wall clock that jumps, changes nothing). Pure.
    """

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self._seen: dict[str, _Seen] = {}

    def settled(self, entries: list[Entry], now: float) -> list[Entry]:
        """The entries ready to claim; forgets names not in ``entries``."""
        ready = []
        seen: dict[str, _Seen] = {}
        for e in entries:
            if e.refused is not None or self.settle_s <= 0:
                ready.append(e)
                continue
            old = self._seen.get(e.name)
            if old is None or (old.size, old.mtime_ns) != (e.size, e.mtime_ns):
                seen[e.name] = _Seen(e.size, e.mtime_ns, now)
            elif now - old.since >= self.settle_s:
                ready.append(e)
            else:
                seen[e.name] = old
        self._seen = seen
        return ready


class Scanner:
    """The settled files of one job folder, a batch at a time. Blocking; run in a thread."""

    def __init__(self, job_dir: Path, settle_s: float) -> None:
        self.job_dir = job_dir
        self._settler = Settler(settle_s)
        self._settling: dict[str, Entry] = {}
        self._ready: deque[Entry] = deque()
        self._ready_bytes = 0
        self._queued: set[str] = set()
        self._listed_mtime: int | None = None
        self._trusted = False  # two listings saw the same folder mtime
        self._complete = False  # the last listing stat-ed every new name
        self.listings = 0  # how many times the folder was listed (for the benchmarks)

    @property
    def idle(self) -> bool:
        """Nothing waiting, nothing settling, and the folder had nothing more at last look."""
        return not self._ready and not self._settling and self._trusted and self._complete

    @property
    def bytes_waiting(self) -> int:
        """Bytes of the files seen and not yet handed out."""
        return self._ready_bytes + sum(e.size for e in self._settling.values())

    def take(self, now: float, most: int) -> list[Entry]:
        """Up to ``most`` settled entries, oldest first, each handed out once."""
        if len(self._ready) < most:
            self._look(now)
        batch: list[Entry] = []
        while self._ready and len(batch) < most:
            e = self._ready.popleft()
            self._ready_bytes -= e.size
            self._queued.discard(e.name)
            batch.append(e)
        return batch

    def _look(self, now: float) -> None:
        try:
            mtime = os.stat(self.job_dir).st_mtime_ns
        except FileNotFoundError:
            return
        fresh: list[Entry] = []
        if mtime != self._listed_mtime or not self._trusted or not self._complete:
            self._trusted = mtime == self._listed_mtime
            self._listed_mtime = mtime
            fresh = self._list()
        again = [self._restat(name) for name in list(self._settling)]
        candidates = [e for e in (*again, *fresh) if e is not None]
        ready = self._settler.settled(candidates, now)
        ready_names = {e.name for e in ready}
        self._settling = {e.name: e for e in candidates if e.name not in ready_names}
        ready.sort(key=lambda e: (e.mtime_ns, e.name))
        for e in ready:
            self._ready.append(e)
            self._ready_bytes += e.size
            self._queued.add(e.name)

    def _list(self) -> list[Entry]:
        """Stat the names not seen before (at most ``_NEW_PER_LISTING``)."""
        self.listings += 1
        fresh: list[Entry] = []
        self._complete = True
        with os.scandir(self.job_dir) as it:
            for d in it:
                name = d.name
                if name in self._queued or name in self._settling or not candidate_name(d):
                    continue
                if len(fresh) >= _NEW_PER_LISTING:
                    self._complete = False
                    break
                try:
                    st = d.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # taken or deleted since the listing
                fresh.append(Entry(name, st.st_size, st.st_mtime_ns, refusal(st.st_mode)))
        return fresh

    def _restat(self, name: str) -> Entry | None:
        return entry_of(self.job_dir, name)
