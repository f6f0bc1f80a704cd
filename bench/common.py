"""What the benchmarks share: a simulator subprocess, a daemon run, process figures.

Benchmarks run the simulator and the daemon as separate processes on this
machine, so each gets its own core and its own CPU accounting (read from the
kernel: /proc/<pid>/stat for a running process, ``wait4`` rusage at exit).
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
_SIM_PIDS: dict[str, int] = {}  # a started simulator's pid, by its URL


def cpu_seconds(pid: int) -> float:
    """utime + stime of a running process (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may contain spaces; it is the last ")"-terminated field.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    """Resident set size now, in MB (10^6 bytes, like every figure we print)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e6


def peak_rss_mb(usage: Any) -> float:
    """The peak RSS from ``wait4``'s rusage (``ru_maxrss`` is in KiB on Linux), in MB."""
    return float(usage.ru_maxrss) * 1024 / 1e6


def start_sim(extra: list[str], nice: int = 0) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m synthd.sim`` on a free port; returns the process and its /v1 URL.

    ``nice`` lowers the simulator's CPU priority: it stands in for a provider on another
    machine, and here it shares the daemon's cores (``bench/lag_causes.py`` shows the
    loop waiting for a CPU behind it)."""
    cmd = [sys.executable, "-m", "synthd.sim", "--host", "127.0.0.1", "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, preexec_fn=lambda: _lower(nice))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        raise SystemExit(f"simulator exited with {proc.returncode} before listening")
    event = orjson.loads(line)
    assert event["event"] == "sim_listening", event
    _SIM_PIDS[str(event["url"])] = proc.pid
    return proc, str(event["url"])


def _lower(nice: int) -> None:
    if nice > 0:
        # Under ``chrt -f`` (a benchmark kept apart from other load) the simulator would
        # inherit the real-time class, which ignores nice values: back to the normal one.
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        os.nice(nice)


def sim_cpu_s(base_url: str) -> float:
    """The CPU seconds the simulator at ``base_url`` has used so far."""
    return cpu_seconds(_SIM_PIDS[base_url])


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


@contextmanager
def simulator(flags: list[str], nice: int = 0) -> Iterator[str]:
    """``start_sim`` for the length of a ``with``: yields the /v1 URL, stops it after."""
    proc, url = start_sim(flags, nice)
    try:
        yield url
    finally:
        stop(proc)


def ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    """``a[key] / b[key]``, two runs of one benchmark compared (the figure a shared machine
    does not skew)."""
    return round(a[key] / b[key], 2)


def sim_stats(base_url: str) -> dict[str, Any]:
    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/stats", timeout=10) as resp:
        return orjson.loads(resp.read())  # type: ignore[no-any-return]


def sim_reset(base_url: str) -> None:
    root = base_url.removesuffix("/v1")
    req = urllib.request.Request(f"{root}/stats/reset", method="POST")
    urllib.request.urlopen(req, timeout=10).close()


def contexts(path: Path | None, count: int) -> Iterator[str]:
    """``count`` context texts: from the shared data set when given, else synthetic."""
    if path is None:
        for i in range(count):
            yield f"Context {i}: a short passage about item {i * 7919 % 10007} and its owner."
        return
    made = 0
    while made < count:
        with gzip.open(path, "rb") as f:
            for line in f:
                yield orjson.loads(line)["text"]
                made += 1
                if made == count:
                    return


@dataclass
class DaemonRun:
    exec_at: float  # wall clock (time.time()) when the process was started
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    returncode: int
    log: list[dict[str, Any]]

    def event(self, name: str) -> dict[str, Any]:
        return next(e for e in self.log if e.get("event") == name)

    def figures(self) -> dict[str, Any]:
        """What every run reports: its wall time, the daemon's CPU and peak RSS, its exit."""
        return {
            "wall_s": round(self.wall_s, 2),
            "daemon_cpu_s": round(self.cpu_s, 2),
            "peak_rss_mb": round(self.max_rss_mb, 1),
            "exit": self.returncode,
        }


class Workdir:
    """A throw-away deployment folder for one daemon run."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="synthd-bench-"))
        shutil.copytree(ROOT / "prompts", self.path / "prompts")
        (self.path / "config").mkdir()

    def config(
        self, base_url: str, provider: dict[str, Any], job: str = "", **service: Any
    ) -> None:
        lines = ["[provider]", f'base_url = "{base_url}"']
        lines += [f"{k} = {_toml(v)}" for k, v in provider.items()]
        settings = {"listen": "", "settle_s": 0, "scan_interval_s": 0.1, **service}
        lines += ["[service]", *(f"{k} = {_toml(v)}" for k, v in settings.items())]
        lines += [
            "[jobs.bench]",
            'prompt = "prompts/questions.txt"',
            'model = "gpt-4o-mini"',
            "max_tokens = 120",
            job,
            "[jobs.bench.filters]",
            "dedupe = false",
        ]
        (self.path / "config" / "synthd.toml").write_text("\n".join(lines) + "\n")

    def spool_jsonl(self, texts: Iterator[str], name: str = "input.jsonl") -> int:
        folder = self.path / "spool" / "bench"
        folder.mkdir(parents=True, exist_ok=True)
        n = 0
        with open(folder / name, "wb") as f:
            for i, text in enumerate(texts):
                f.write(orjson.dumps({"text": text, "i": i}) + b"\n")
                n += 1
        return n

    def spool_files(self, texts: Iterator[str]) -> int:
        """One ``.txt`` file per context, as a producer dropping contexts one by one would."""
        folder = self.path / "spool" / "bench"
        folder.mkdir(parents=True, exist_ok=True)
        n = 0
        for i, text in enumerate(texts):
            (folder / f"ctx-{i:07d}.txt").write_text(text)
            n += 1
        return n

    def run(self, *extra: str, until_event: str | None = None) -> DaemonRun:
        """Run the daemon (``--once`` unless ``extra`` says otherwise) and measure it."""
        cmd = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml", *extra]
        log_path = self.path / "daemon.log"
        with open(log_path, "wb") as log:
            exec_at = time.time()
            started = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=self.path, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        events = [
            orjson.loads(raw) for raw in log_path.read_bytes().splitlines() if raw[:1] == b"{"
        ]
        return DaemonRun(
            exec_at,
            wall,
            usage.ru_utime + usage.ru_stime,
            peak_rss_mb(usage),
            proc.returncode,
            events,
        )

    def count_lines(self, stream: str = "", job: str = "bench") -> int:
        folder = self.path / "out" / job / stream
        return sum(p.read_bytes().count(b"\n") for p in folder.glob("*.jsonl*"))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def report(self, figures: dict[str, Any], keep: bool) -> dict[str, Any]:
        """Print a run's figures and remove its folder (unless ``keep``); returns them."""
        emit(figures)
        if not keep:
            self.remove()
        return figures


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def emit(obj: dict[str, Any]) -> None:
    print(orjson.dumps(obj).decode(), flush=True)


def arguments(doc: str) -> argparse.ArgumentParser:
    """The arguments every daemon benchmark takes (``--contexts``, ``--keep``,
    ``--sim-nice``); add yours."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--contexts", type=Path, help="contexts.jsonl.gz (default: synthetic)")
    p.add_argument("--keep", action="store_true", help="keep the work folders")
    p.add_argument(
        "--sim-nice",
        type=int,
        default=0,
        help="the simulator's nice value (e.g. 5: a provider on another machine, not a rival"
        " for this machine's cores)",
    )
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments; then the output's first line, what the benchmark runs on."""
    args = p.parse_args()
    emit(
        {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    )
    return args
