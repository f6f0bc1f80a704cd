"""Crash points: the durability boundaries, by name, where a test can kill the daemon.

Each promise of the write path (exactly one outcome per item, no torn line,
nothing lost) must hold whichever boundary the process dies at. The code calls
``hit("name")`` at each boundary; disarmed, that is one truth test. A crash test
arms one point with ``SYNTHD_CRASH_AT="name:N"`` (read by ``config``, armed by
the CLI) and the Nth pass through it sends SIGKILL to the process itself: no
``finally``, no atexit, no buffered flush, exactly as a real ``kill -9``.
"""

from __future__ import annotations

import os
import signal
import threading

_lock = threading.Lock()
_armed: dict[str, int] = {}


def arm(spec: str | None) -> None:
    """Arm ``name:N`` (N >= 1, default 1); None or an empty spec disarms."""
    _armed.clear()
    if not spec:
        return
    name, _, count = spec.partition(":")
    _armed[name] = max(1, int(count or "1"))


def hit(name: str) -> None:
    """Pass a boundary; die here if this is the armed pass."""
    if not _armed or name not in _armed:
        return
    with _lock:
        _armed[name] -= 1
        if _armed[name] > 0:
            return
    os.kill(os.getpid(), signal.SIGKILL)
