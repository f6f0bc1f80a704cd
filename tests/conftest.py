"""Shared fixtures: a working folder laid out like a deployment, and a config writer."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

ROOT = Path(__file__).resolve().parent.parent


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

    def lines(self, job: str, stream: str = "records") -> list[dict[str, Any]]:
        """Every complete line of a job's stream, closed and open shards alike."""
        folder = self.path / "out" / job
        if stream == "rejects":
            folder = folder / "rejects"
        elif stream == "dead":
            folder = folder / "dead-letter"
        out = []
        for shard in sorted(folder.glob("*.jsonl*")):
            out.extend(orjson.loads(raw) for raw in shard.read_bytes().splitlines())
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


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """A command run in-process configures structlog globally; undo it after each test."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workdir]:
    monkeypatch.chdir(tmp_path)
    yield Workdir(tmp_path)


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


def _write(work: Workdir, provider: str, service: str, jobs: str) -> Path:
    """config/synthd.toml for tests: quick scans, no HTTP endpoint (unless ``service`` sets
    ``listen``), no settling."""
    listen = "" if "listen" in service else 'listen = ""'
    text = f"""
[provider]
{provider}

[service]
{listen}
settle_s = 0
scan_interval_s = 0.1
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
    work: Workdir, base_url: str, jobs: str, service: str = "", **provider: Any
) -> Path:
    """``Workdir.write_config`` with any [provider] key set (``tpm=...``, ``max_attempts=...``).

    The keys ``write_config`` fixes (tpm, request_timeout_s, backoff ...) can be overridden
    here, since TOML refuses a key given twice.
    """
    keys = {"base_url": base_url, **_PROVIDER_DEFAULTS, **provider}
    return _write(work, _table(keys), service, jobs)
