"""Shared fixtures: a working folder laid out like a deployment (helpers live in helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from synthd import spool
from tests.helpers import Workdir, sim_process, simple_job, write_provider_config
from tests.redisserver import redis_server  # noqa: F401 - the fixture, for every test

# Re-exported: tests written before helpers.py import these from here.
__all__ = ["Workdir", "sim_process", "simple_job", "write_provider_config"]


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """A command run in-process configures structlog globally; undo it after each test."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workdir]:
    monkeypatch.chdir(tmp_path)
    yield Workdir(tmp_path)


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """One job's spool folder with its layout (.work/, done/, failed/) made."""
    d = tmp_path / "spool" / "q"
    spool.ensure_layout(d)
    return d
