"""``synthd report JOB --config FILE --out DIR``: report.json and report.html of a job's output.

Read-only, like ``synthd export`` and ``synthd status``: the shards through
``export.ShardReader`` (closed shards whole, of the open ``.part`` only the lines that end
in a newline), the checkpoint opened read-only for tokens, so it runs beside a working
daemon and never blocks it. Streaming: each line is parsed, counted (``quality.Tally``) and
dropped. For a pipeline (jobs with ``from = "<job>"``) every stage of JOB's chain is counted,
so each stage's pass rate is there.

The two files hold the same numbers: report.json is ``build``'s dict, report.html draws it
(``synthd.reportpage``), with its plots inline, so it opens with no network.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from synthd import quality, reportpage
from synthd.checkpoint import STATE_FILE
from synthd.errors import ConfigError, ExportError
from synthd.export import ShardReader
from synthd.status import cost_usd, read_counts

if TYPE_CHECKING:
    from synthd.config import Config


def chain(config: Config, job: str) -> list[str]:
    """JOB's stages, first to last: its ``from`` jobs, then JOB (just JOB if it has none)."""
    stages = [job]
    while (up := getattr(config.jobs[stages[0]].config, "from_", None)) and up not in stages:
        stages.insert(0, str(up))
    return stages


def tally(config: Config, job: str) -> quality.Tally:
    """Every complete line of a job's records, rejects and dead letters, counted."""
    out = config.paths.out / job
    t = quality.Tally(job)
    streams = [
        (ShardReader(out, job), t.record),
        (ShardReader(out / "rejects", "rejects"), t.reject),
        (ShardReader(out / "dead-letter", "dead"), t.dead_letter),
    ]
    for reader, add in streams:
        for raw in reader:
            try:
                add(orjson.loads(raw))
            except orjson.JSONDecodeError as e:
                raise ExportError(str(reader.folder), f"a line is not JSON: {e}") from e
    return t


def build(config: Config, job: str) -> dict[str, Any]:
    """The report's numbers; raises ``ConfigError`` for an unknown job."""
    if job not in config.jobs:
        raise ConfigError(str(config.source), "jobs", f"no job named {job!r}")
    started = time.perf_counter()
    stages = chain(config, job)
    tallies = {name: tally(config, name) for name in stages}
    report = tallies[job].to_json()
    counts = {c.job: c for c in read_counts(config.paths.state / STATE_FILE)}
    c = counts.get(job)
    model = config.jobs[job].config.model
    report["tokens"] = {
        "model": model,
        "items": sum(c.items.values()) if c else 0,
        "prompt_tokens": c.prompt_tokens if c else 0,
        "completion_tokens": c.completion_tokens if c else 0,
        "cost_usd": cost_usd(config.prices.get(model), c.prompt_tokens, c.completion_tokens)
        if c
        else None,
    }
    report["stages"] = [
        {
            "job": name,
            "records": t.records,
            "rejects": t.rejects,
            "dead": t.dead,
            "pass_rate": round(t.records / (t.records + t.rejects), 4)
            if t.records + t.rejects
            else None,
        }
        for name, t in tallies.items()
    ]
    report["generated"] = int(time.time())
    report["read_s"] = round(time.perf_counter() - started, 2)
    return report


def write(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """report.json and report.html in ``out`` (made if missing), each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "report.json", out / "report.html")
    data = orjson.dumps(report, option=orjson.OPT_INDENT_2)
    for path, body in zip(paths, (data, reportpage.render(report).encode()), strict=True):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(body)
        os.replace(tmp, path)
    return paths
