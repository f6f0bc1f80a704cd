"""A dry run shows what the daemon then does: the same request for every item.

Dry-run reads, transcodes and renders with the daemon's own functions (spool, items,
request); this run checks it end to end: the prompts it shows, truncation and a
UTF-16 file included, are the prompts the daemon sends and records.
"""

from __future__ import annotations

import codecs

from synthd import config, dryrun
from synthd.daemon import Daemon
from synthd.request import TRUNCATION_MARKER
from synthd.sim import SimConfig, running_sim
from tests.conftest import Workdir, simple_job


async def test_dry_run_prompts_are_the_prompts_the_daemon_records(work: Workdir) -> None:
    long_text = " ".join(f"sentence {i} of a long report about the harbour." for i in range(400))
    async with running_sim(SimConfig(port=0)) as sim:
        cfg_path = work.write_config(
            sim.base_url, simple_job("t", max_prompt_tokens=300, on_long_prompt='"truncate"')
        )
        spool = work.spool("t")
        (spool / "long.txt").write_text(long_text)
        (spool / "short.txt").write_text("the lighthouse keeper's log\n")
        (spool / "wide.txt").write_bytes(
            codecs.BOM_UTF16_LE + "a tide table in UTF-16\n".encode("utf-16-le")
        )

        (plan,) = dryrun.plan(config.load(cfg_path), n=10).jobs
        shown = {s.file: s.body["messages"] for s in plan.samples}
        assert {s.url for s in plan.samples} == {sim.base_url + "/chat/completions"}
        assert TRUNCATION_MARKER in shown["long.txt"][-1]["content"]
        assert "a tide table in UTF-16" in shown["wide.txt"][-1]["content"]

        daemon = Daemon(config.load(cfg_path), once=True, handle_signals=False)
        assert await daemon.run() == 0
        assert sim.stats()["requests"] == plan.backlog.requests == 3

    recorded = {r["source"]["file"]: r["messages"] for r in work.lines("t")}
    assert recorded == shown


async def test_dry_run_cuts_files_as_the_daemon_does(work: Workdir) -> None:
    paragraphs = [
        f"Paragraph {i}: the keeper wrote about the tide and the boats." for i in range(60)
    ]
    async with running_sim(SimConfig(port=0)) as sim:
        job = simple_job("t", input='"chunks"', max_prompt_tokens=120, chunk_overlap=5)
        cfg_path = work.write_config(sim.base_url, job)
        spool = work.spool("t")
        (spool / "log.txt").write_text("\n\n".join(paragraphs))
        page = "<html><body><nav>Home | Sign in</nav><article>{}</article></body></html>"
        body = "".join(f"<p>{p}</p>" for p in paragraphs[:20])
        (spool / "page.html").write_text(page.format(body))

        (plan,) = dryrun.plan(config.load(cfg_path), n=1000).jobs
        shown = {(s.file, s.line): s.body["messages"] for s in plan.samples}
        cut = {c.file: c for c in plan.chunked}
        assert cut["log.txt"].passages + cut["page.html"].passages == plan.backlog.requests
        assert plan.backlog.unsendable == 0  # passages fit max_prompt_tokens by default

        daemon = Daemon(config.load(cfg_path), once=True, handle_signals=False)
        assert await daemon.run() == 0
        assert sim.stats()["requests"] == plan.backlog.requests

    recorded = {(r["source"]["file"], r["source"]["line"]): r["messages"] for r in work.lines("t")}
    assert recorded == shown
