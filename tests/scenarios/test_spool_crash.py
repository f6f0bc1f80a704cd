"""The spool's durability boundaries: killed at each, the daemon recovers to exactly once.

The daemon runs as a subprocess armed with ``SYNTHD_CRASH_AT`` (see
``synthd.crashpoints``): SIGKILL right after a claim is committed, after the
claim renames, after a finished or failed file's move. Started again, it must
end with every item's one outcome, every file in done/ or failed/ exactly once,
and nothing left in the spool or in ``.work/``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter

import orjson
import pytest

from tests.helpers import Workdir, sim_process, simple_job

RUN = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml", "--once"]
FILES = 12
LINES = 30


def run(work: Workdir, crash_at: str = "") -> int:
    env = {**os.environ, "SYNTHD_CRASH_AT": crash_at}
    with open(work.path / "daemon.log", "ab") as log:
        done = subprocess.run(RUN, cwd=work.path, env=env, stdout=log, stderr=log, timeout=60)
    return done.returncode


@pytest.mark.parametrize(
    "point", ["claim_recorded:1", "claim_renamed:1", "source_moved:1", "source_moved:7"]
)
def test_killed_at_a_spool_boundary_every_file_ends_once(work: Workdir, point: str) -> None:
    spool = work.spool("q")
    with sim_process() as url:
        work.write_config(url, simple_job("q"))
        for i in range(FILES):
            (spool / f"f{i:02d}.txt").write_text(f"passage number {i} about the tide")
        rows = [orjson.dumps({"text": f"line {i}"}) for i in range(LINES)]
        (spool / "many.jsonl").write_bytes(b"\n".join(rows) + b"\n")
        (spool / "binary.txt").write_bytes(b"not\x00text")
        assert run(work, point) == -signal.SIGKILL
        assert run(work) == 0
    lines = [*work.lines("q"), *work.lines("q", "rejects"), *work.lines("q", "dead")]
    per_item = Counter((ln["source"]["file"], ln["source"]["seq"]) for ln in lines)
    expected = {(f"f{i:02d}.txt", 0): 1 for i in range(FILES)}
    expected |= {("many.jsonl", i): 1 for i in range(LINES)}
    assert per_item == expected
    done = sorted(p.name for p in (spool / "done").iterdir())
    assert done == sorted([*(f"f{i:02d}.txt" for i in range(FILES)), "many.jsonl"])
    assert sorted(p.name for p in (spool / "failed").iterdir()) == [
        "binary.txt",
        "binary.txt.error.json",
    ]
    assert not list((spool / ".work").iterdir())
    assert not [p for p in spool.iterdir() if p.is_file()]
