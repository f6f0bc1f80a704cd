"""What the tests share, apart from fixtures (those are in conftest.py).

A deployment in a temporary folder and its one config writer; the simulator as a
subprocess; the daemon run in-process in once mode; the good files every bad-input
scenario drops beside its bad input; the request helpers of the simulator's tests.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import orjson

from synthd import config
from synthd.budget import Budget
from synthd.checkpoint import Checkpoint
from synthd.client import make_client
from synthd.config import Config
from synthd.daemon import Daemon
from synthd.filters import FilterChain
from synthd.metrics import ProviderStats
from synthd.models import Outcome
from synthd.pipeline import Dispatcher, JobRuntime
from synthd.sim import RunningSim
from synthd.writer import Writer

ROOT = Path(__file__).resolve().parent.parent
"""The checkout: prompts/, config/, examples/, deploy/."""


class Workdir:
    """A deployment in tmp_path: prompts/, config/, spool/, out/, state/."""

    def __init__(self, path: Path) -> None:
        self.path = path
        shutil.copytree(ROOT / "prompts", path / "prompts")
        (path / "config").mkdir()

    def write_config(
        self, base_url: str, jobs: str, provider: str = "", service: str = "", rpm: int = 1_000_000
    ) -> Path:
        keys = {"base_url": base_url, **_PROVIDER_DEFAULTS, "rpm": rpm}
        return _write(self, _table(keys) + "\n" + provider, service, jobs)

    def spool(self, job: str) -> Path:
        d = self.path / "spool" / job
        d.mkdir(parents=True, exist_ok=True)
        return d

    def lines(self, job: str, stream: str = "records", live: bool = False) -> list[dict[str, Any]]:
        """Every line of a job's stream, closed and open shards alike. ``live``: a daemon may
        be appending, so an open shard's unfinished last line is not read (a torn line is
        an error only once every daemon has stopped)."""
        folder = self.path / "out" / job
        if stream == "rejects":
            folder = folder / "rejects"
        elif stream == "dead":
            folder = folder / "dead-letter"
        out = []
        for shard in sorted(folder.glob("*.jsonl*")):
            data = shard.read_bytes()
            if live:
                data = data[: data.rfind(b"\n") + 1]
            out.extend(orjson.loads(raw) for raw in data.splitlines())
        return out


@contextmanager
def sim_process(*flags: str) -> Iterator[str]:
    """The simulator as a subprocess on a free port; yields its /v1 URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "synthd.sim", "--port", "0", *flags], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        yield str(orjson.loads(proc.stdout.readline())["url"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def simple_job(name: str = "q", max_tokens: int = 40, **extra: Any) -> str:
    """A job that keeps every non-empty completion, so counts are exact."""
    lines = [
        f"[jobs.{name}]",
        'prompt = "prompts/questions.txt"',
        'model = "sim-1"',
        f"max_tokens = {max_tokens}",
    ]
    filters = {"dedupe": "false"}
    for key, value in extra.items():
        if key.startswith("f_"):
            filters[key[2:]] = value
        else:
            lines.append(f"{key} = {value}")
    lines.append(f"[jobs.{name}.filters]")
    lines.extend(f"{k} = {v}" for k, v in filters.items())
    return "\n".join(lines) + "\n"


# Job t on lines, on model m-1 with its price: what the readers (dry-run, status) cost.
# Its prompt is prompts/t.txt; a test may add keys to [jobs.t] after it.
PRICED_JOB = """
[prices."m-1"]
input_per_mtok = 2.0
output_per_mtok = 10.0

[jobs.t]
prompt = "prompts/t.txt"
model = "m-1"
input = "lines"
"""


_PROVIDER_DEFAULTS: dict[str, Any] = {
    "rpm": 1_000_000,
    "tpm": 1_000_000_000,
    "max_in_flight": 64,
    "request_timeout_s": 5,
    "backoff_base_s": 0.05,
    "backoff_max_s": 0.5,
}


def _table(keys: dict[str, Any]) -> str:
    return "\n".join(f"{k} = {_toml_value(v)}" for k, v in keys.items())


# Quick scans, no HTTP endpoint, no settling: each left out where the test sets that key.
_SERVICE_DEFAULTS: dict[str, Any] = {"listen": "", "settle_s": 0, "scan_interval_s": 0.1}


def _write(work: Workdir, provider: str, service: str, jobs: str) -> Path:
    """config/synthd.toml for tests: [provider], [service] with the test defaults under
    ``service``'s own keys, then the jobs (and any other tables)."""
    given = {line.split("=")[0].strip() for line in service.splitlines() if "=" in line}
    defaults = {k: v for k, v in _SERVICE_DEFAULTS.items() if k not in given}
    text = f"""
[provider]
{provider}

[service]
{_table(defaults)}
{service}

{jobs}
"""
    cfg = work.path / "config" / "synthd.toml"
    cfg.write_text(text)
    return cfg


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    return repr(value)


def write_provider_config(
    work: Workdir,
    base_url: str,
    jobs: str,
    service: str = "",
    *,
    service_keys: dict[str, Any] | None = None,
    **provider: Any,
) -> Path:
    """``Workdir.write_config`` with any [provider] key set (``tpm=...``, ``max_attempts=...``).

    The keys ``write_config`` fixes (tpm, request_timeout_s, backoff ...) can be overridden
    here, since TOML refuses a key given twice; so can the [service] defaults, by a line in
    ``service`` or a key in ``service_keys`` (plain values: ``{"listen": "127.0.0.1:0"}``).
    """
    keys = {"base_url": base_url, **_PROVIDER_DEFAULTS, **provider}
    service = _table(service_keys or {}) + "\n" + service
    return _write(work, _table(keys), service, jobs)


# -- the daemon in-process, and what bad-input scenarios drop and check ----------------------


async def run_once(work: Workdir) -> Daemon:
    cfg = config.load(work.path / "config" / "synthd.toml")
    daemon = Daemon(cfg, once=True, handle_signals=False)
    assert await daemon.run() == 0
    return daemon


GOOD = {
    f"good-{i}.txt": f"A good passage, number {i}, about the harbour at dawn." for i in range(3)
}


def drop_good(spool: Path) -> None:
    for name, text in GOOD.items():
        (spool / name).write_text(text)


def assert_good_once(work: Workdir, job: str = "q") -> None:
    """Each good file gave exactly one record, no other line, and went to done/."""
    lines = [*work.lines(job), *work.lines(job, "rejects"), *work.lines(job, "dead")]
    good = Counter(ln["source"]["file"] for ln in lines if ln["source"]["file"] in GOOD)
    assert good == dict.fromkeys(GOOD, 1)
    records = {r["source"]["file"]: r["context"] for r in work.lines(job)}
    assert {name: records[name] for name in GOOD} == GOOD
    assert set(GOOD) <= {p.name for p in (work.spool(job) / "done").iterdir()}


def failure(spool: Path, name: str) -> dict[str, Any]:
    """The ``NAME.error.json`` of a file in failed/ (and the file is there)."""
    assert (spool / "failed" / name).exists() or (spool / "failed" / name).is_symlink()
    report: dict[str, Any] = orjson.loads((spool / "failed" / f"{name}.error.json").read_bytes())
    assert report["file"] == name
    return report


def events(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event]


async def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def open_log(work: Workdir) -> BinaryIO:
    """The daemon subprocess's log file (the child gets a copy of the descriptor)."""
    return open(work.path / "daemon.log", "wb")


def without_dac_override() -> None:
    """In the child, before exec: drop the capabilities that let root ignore file modes.

    The child stays uid 0 (so it can still run the interpreter under /root), but
    without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH the kernel checks permission
    bits for it as for any user. Dropped from the bounding set, they are gone
    from the permitted and effective sets after exec.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for cap in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def permission_bits_apply() -> str | None:
    """None if a child without DAC capabilities is refused a mode-000 file; else why not."""
    if os.geteuid() != 0:
        return None  # an ordinary user: modes apply anyway
    probe = "import os, sys, tempfile\n" + (
        "p = tempfile.mktemp(); open(p, 'w').close(); os.chmod(p, 0)\n"
        "try:\n    open(p).close()\n    sys.exit(1)\n"
        "except PermissionError:\n    sys.exit(0)\nfinally:\n    os.unlink(p)\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", probe], preexec_fn=without_dac_override, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot drop CAP_DAC_OVERRIDE here: {e}"
    return None if result.returncode == 0 else "root keeps reading mode-000 files here"


# -- rate-limit scenarios: items of one size, the run's duration, the live budget ------------

CONTEXT = "The council met on Tuesday to vote on the budget for the new river bridge. " * 6


def jsonl_job(max_tokens: int = 40) -> str:
    """A JSONL job keeping every completion, so records = items."""
    return simple_job(input='"jsonl"', max_tokens=max_tokens)


def spool_items(work: Workdir, n: int) -> None:
    """``n`` items of the same length, so every request costs the same tokens."""
    rows = (orjson.dumps({"text": f"item {i:05d}. {CONTEXT}"[:400]}) + b"\n" for i in range(n))
    (work.spool("q") / "items.jsonl").write_bytes(b"".join(rows))


async def run_once_timed(work: Workdir) -> tuple[Daemon, float]:
    """Run the daemon in once mode; returns it and the seconds the run took."""
    cfg = config.load(work.path / "config" / "synthd.toml")
    daemon = Daemon(cfg, once=True, handle_signals=False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await daemon.run() == 0
    return daemon, loop.time() - started


def budget_of(daemon: Daemon) -> Budget:
    return daemon.dispatchers["default"].budget


# -- the simulator's HTTP API -------------------------------------------------------------

CHAT = "/chat/completions"


def chat(max_tokens: int = 10, content: str = "hello there") -> dict[str, Any]:
    # Prompt tokens: ceil(11 / 4) + 4 = 7.
    return {
        "model": "m",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    }


async def post(
    session: aiohttp.ClientSession, sim: RunningSim, body: dict[str, Any], key: str = "k"
) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post(sim.base_url + CHAT, json=body, headers=headers) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.json()


# -- a spool folder --------------------------------------------------------------------------

SECOND = 1_000_000_000


def drop(job_dir: Path, name: str, data: bytes = b"hello\n", mtime_s: int | None = None) -> Path:
    """A file dropped into a spool folder, with its mtime set to ``mtime_s`` if given."""
    path = job_dir / name
    path.write_bytes(data)
    if mtime_s is not None:
        os.utime(path, ns=(mtime_s * SECOND, mtime_s * SECOND))
    return path


# -- the daemon's parts, assembled by hand -----------------------------------------------------


@dataclass
class Parts:
    """One provider's dispatcher (not started), a writer (not running) on a fresh checkpoint,
    and each job's runtime, wired as the daemon wires them; ``committed`` collects what the
    writer made durable."""

    cfg: Config
    cp: Checkpoint
    writer: Writer
    dispatcher: Dispatcher
    jobs: dict[str, JobRuntime]
    committed: list[Outcome]


def assemble(work: Workdir, path: Path) -> Parts:
    """The parts for the config at ``path``, with provider "default"; close ``cp`` after."""
    cfg = config.load(path)
    cp = Checkpoint(work.path / "state" / "synthd.db")
    committed: list[Outcome] = []
    writer = Writer(cfg, cp, committed.extend, lambda src, done: None)
    provider = cfg.providers["default"]
    dispatcher = Dispatcher(
        "default", provider, make_client(provider, None), writer, ProviderStats()
    )
    jobs = {
        name: JobRuntime(job, FilterChain(job.config.filters, job.schema), dispatcher)
        for name, job in cfg.jobs.items()
    }
    return Parts(cfg, cp, writer, dispatcher, jobs, committed)
