"""A crash point kills its own process with SIGKILL on the armed pass, not before."""

from __future__ import annotations

import signal
import subprocess
import sys

SCRIPT = """
import sys
from synthd import crashpoints
crashpoints.arm(sys.argv[1])
for i in range(5):
    crashpoints.hit("other")
    crashpoints.hit("boundary")
    print(i, flush=True)
"""


def run(spec: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, spec], capture_output=True, text=True, timeout=30
    )


def test_third_pass_dies_by_sigkill() -> None:
    done = run("boundary:3")
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split() == ["0", "1"]


def test_disarmed_runs_through() -> None:
    done = run("")
    assert done.returncode == 0
    assert done.stdout.split() == ["0", "1", "2", "3", "4"]
