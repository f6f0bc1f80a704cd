"""``synthd status --watch``: the status table, redrawn in place every few seconds.

Each frame is ``synthd.status.render`` of a fresh ``collect``, so the numbers are exactly
those of ``synthd status``. On a terminal the frame is drawn over the last one (cursor home,
each line cleared to its end, the rest of the screen cleared below: no flicker, no scroll);
into a pipe or a file the frames follow one another, as plain text. Ctrl-C ends it (exit 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

import orjson

from synthd.status import Status, render

HOME = "\x1b[H"
CLEAR_LINE = "\x1b[K"
CLEAR_BELOW = "\x1b[J"
CLEAR_SCREEN = "\x1b[2J"


def frame(status: Status, interval_s: float, now: float, terminal: bool) -> str:
    """One frame: a header line with the time and the table; ANSI in-place on a terminal."""
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    text = f"synthd status, every {interval_s:g}s (Ctrl-C to stop)   {stamp}\n" + render(status)
    if not terminal:
        return text + "\n"
    return HOME + "".join(f"{line}{CLEAR_LINE}\n" for line in text.splitlines()) + CLEAR_BELOW


def watch(
    collect: Callable[[], Status],
    out: TextIO,
    interval_s: float,
    count: int | None = None,
    as_json: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Draw ``count`` frames (forever if None), ``interval_s`` apart. Returns 0, also on Ctrl-C.

    With ``as_json`` each frame is one line of ``synthd status --json``'s document.
    """
    terminal = out.isatty() and not as_json
    drawn = 0
    try:
        if terminal:
            out.write(HOME + CLEAR_SCREEN)
        while count is None or drawn < count:
            if drawn:
                sleep(interval_s)
            status = collect()
            if as_json:
                out.write(orjson.dumps(status.to_json()).decode() + "\n")
            else:
                out.write(frame(status, interval_s, time.time(), terminal))
            out.flush()
            drawn += 1
    except KeyboardInterrupt:
        if terminal:
            out.write("\n")
    return 0
