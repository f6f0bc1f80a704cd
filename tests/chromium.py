"""A real headless Chromium, for tests that open a page as a user would.

Debian's `chromium` is installed by `make sysdeps` (deploy/system-packages.sh) when absent;
where it cannot be, `require()` skips the test and says why. The flags are the ones that work
on a machine with no network: without the background-networking ones Chromium keeps trying to
reach Google's hosts.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)
_CONSOLE = re.compile(r":CONSOLE[^\]]*\] (.*)$")


@dataclass(frozen=True)
class Page:
    dom: str
    """The document after its scripts ran for the time budget."""
    console: list[str]
    """Every console message and uncaught error the page produced."""


def require() -> str:
    """The browser's path, or a skip that names the missing package."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("needs Debian's chromium (make sysdeps installs it as root); not installed")
    return path


def _run(url: str, extra: list[str], wait_ms: int) -> tuple[str, list[str]]:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [require(), *_FLAGS, f"--user-data-dir={profile}"]
        cmd += [f"--virtual-time-budget={wait_ms}", *extra, url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    console = [m.group(1) for line in done.stderr.splitlines() if (m := _CONSOLE.search(line))]
    return done.stdout, console


def render(url: str, wait_ms: int = 3000) -> Page:
    """Opens `url`, lets its scripts run for `wait_ms` of virtual time, returns the DOM."""
    dom, console = _run(url, ["--dump-dom"], wait_ms)
    return Page(dom=dom, console=console)


def screenshot(
    url: str, out: Path, size: tuple[int, int] = (1280, 900), wait_ms: int = 3000
) -> Page:
    """Writes a PNG of the page at `size` to `out`; returns the console messages too."""
    extra = [f"--screenshot={out}", f"--window-size={size[0]},{size[1]}"]
    _, console = _run(url, extra, wait_ms)
    if not out.exists():
        raise AssertionError(f"chromium wrote no screenshot to {out}")
    return Page(dom="", console=console)
