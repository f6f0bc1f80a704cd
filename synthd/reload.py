"""Reload on SIGHUP: the config and templates read again and applied to the running jobs.

Jobs keep running, and work already prepared keeps the settings it was prepared with (its
``JobSnapshot``); items prepared from now on use the new ones. What a running daemon cannot
change in place (a new job, a job's provider, ``from``/``per``, ``mode``) is logged and
skipped: it needs a restart. A config that does not load is logged and changes nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from synthd import config as config_mod
from synthd.config import Job
from synthd.errors import ConfigError
from synthd.filters import FilterChain
from synthd.pipeline import JobRuntime

log = structlog.get_logger("synthd.reload")


def filter_chain(job: Job) -> FilterChain:
    """A job's validation chain, built at start-up and again at each reload."""
    return FilterChain(job.config.filters, job.schema, job.config.judge)


async def reload_jobs(source: Path, jobs: dict[str, JobRuntime]) -> None:
    """Re-read config and templates; jobs keep running, in flight work is kept."""
    try:
        fresh = await asyncio.to_thread(config_mod.load, source)
    except ConfigError as e:
        log.error("reload_failed", error=str(e))
        return
    changed = []
    for name, job in fresh.jobs.items():
        rt = jobs.get(name)
        if rt is None or job.config.provider != rt.job.config.provider:
            log.warning("reload_skipped_job", job=name, note="new jobs need a restart")
            continue
        was = rt.job.config
        if (job.config.from_, job.config.per) != (was.from_, was.per):
            log.warning("reload_skipped_job", job=name, note="from and per need a restart")
            continue
        if job.config.mode != was.mode:
            log.warning("reload_skipped_job", job=name, note="a mode change needs a restart")
            continue
        if job.fingerprint != rt.job.fingerprint or job.config != rt.job.config:
            rt.reload(job, filter_chain(job))
            changed.append(name)
    log.info("reloaded", changed=changed)
