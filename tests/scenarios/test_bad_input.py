"""Bad input: files and lines that cannot become items, against the real daemon.

Every test drops a few good files beside the bad input and checks both the bad
input's outcome (failed/ with a reason, a reject with ``"stage": "input"``, a
replaced character) and that every good item was sent and recorded exactly
once: a bad file never stops the daemon or costs other work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import orjson
import pytest
from structlog.testing import capture_logs

from synthd.request import TRUNCATION_MARKER
from synthd.sim import SimConfig, running_sim
from tests.helpers import (
    GOOD,
    Workdir,
    assert_good_once,
    drop_good,
    events,
    failure,
    run_once,
    sim_process,
    simple_job,
)

# -- whole files ---------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00"


async def test_empty_blank_and_binary_files_fail_with_their_reason(work: Workdir) -> None:
    spool = work.spool("q")
    bad = {
        "empty.txt": (b"", "empty"),
        "blank.txt": ("  \n\t\n\r\n\u3000\n".encode(), "empty"),
        "blank.jsonl": (b"\n   \n\n", "empty"),
        "nul.txt": (b"looks like text\x00but is not", "binary"),
        "picture.png": (PNG, "binary"),
    }
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, simple_job("q"))
        for name, (data, _) in bad.items():
            (spool / name).write_bytes(data)
        drop_good(spool)
        with capture_logs() as logs:
            await run_once(work)
        assert sim.stats()["requests"] == len(GOOD)
    for name, (data, reason) in bad.items():
        assert failure(spool, name)["reason"] == reason
        assert (spool / "failed" / name).read_bytes() == data, "kept as it was dropped"
    failed = {e["file"]: e["reason"] for e in events(logs, "file_failed")}
    assert failed == {name: reason for name, (_, reason) in bad.items()}
    assert_good_once(work)
    assert not work.lines("q", "rejects") and not list((spool / ".work").iterdir())


async def test_invalid_utf8_is_replaced_counted_and_logged(work: Workdir) -> None:
    spool = work.spool("q")
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, simple_job("q"))
        (spool / "latin1.txt").write_bytes(b"caf\xe9 au lait, \xff\xfe and a real \xef\xbf\xbd")
        drop_good(spool)
        with capture_logs() as logs:
            await run_once(work)
        assert sim.stats()["requests"] == len(GOOD) + 1
    (record,) = [r for r in work.lines("q") if r["source"]["file"] == "latin1.txt"]
    assert record["context"] == "caf\ufffd au lait, \ufffd\ufffd and a real \ufffd"
    (replaced,) = events(logs, "invalid_utf8_replaced")
    assert replaced["file"] == "latin1.txt"
    assert replaced["count"] == 3, "a U+FFFD already in the input is not a replacement"
    assert (spool / "done" / "latin1.txt").exists()
    assert_good_once(work)


async def test_utf16_with_bom_is_transcoded_and_broken_utf16_fails(work: Workdir) -> None:
    spool = work.spool("q")
    text = "Grüße aus Köln: ein Text über Straßen, Brücken und 東京."
    broken = b"\xff\xfe" + "half of it".encode("utf-16-le") + b"\x00\xd8" + b"x\x00"
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, simple_job("q"))
        (spool / "utf16.txt").write_bytes(text.encode("utf-16"))  # with a BOM
        (spool / "utf16be.txt").write_bytes(b"\xfe\xff" + text.encode("utf-16-be"))
        (spool / "broken16.txt").write_bytes(broken)  # a lone surrogate
        (spool / "odd16.txt").write_bytes(b"\xff\xfe" + "odd".encode("utf-16-le") + b"!")
        drop_good(spool)
        with capture_logs() as logs:
            await run_once(work)
        assert sim.stats()["requests"] == len(GOOD) + 2
    records = {r["source"]["file"]: r["context"] for r in work.lines("q")}
    assert records["utf16.txt"] == records["utf16be.txt"] == text
    assert {e["file"]: e["codec"] for e in events(logs, "transcoded")} == {
        "utf16.txt": "utf-16",
        "utf16be.txt": "utf-16",
    }
    # The transcoded copy is what lands in done/: UTF-8 from then on.
    assert (spool / "done" / "utf16.txt").read_text(encoding="utf-8") == text
    for name in ("broken16.txt", "odd16.txt"):
        report = failure(spool, name)
        assert report["reason"] == "bad_encoding"
        assert "utf-16" in report["detail"]
    assert (spool / "failed" / "broken16.txt").read_bytes() == broken, "not half-transcoded"
    assert not list((spool / ".work").iterdir()), "no transcoding leftovers"
    assert_good_once(work)


# -- lines ---------------------------------------------------------------------------------


async def test_jsonl_bad_lines_are_set_aside_with_their_line_numbers(work: Workdir) -> None:
    spool = work.spool("q")
    rows = [
        b'{"text": "the first good line", "n": 1}',
        b'{"text": "unterminated',
        b'{"text": "the second good line", "n": 2}',
        b"[1, 2, 3]",
        b'{"body": "no text field"}',
        b"",
        b'{"text": "   "}',
        b'{"text": 42}',
        b'"just a string"',
        b'{"text": "the third good line", "n": 3}',
    ]
    expected_bad = {
        2: "invalid_json",
        4: "not_an_object",
        5: "missing_text",
        7: "missing_text",
        8: "missing_text",
        9: "not_an_object",
    }
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, simple_job("q"))
        (spool / "mixed.jsonl").write_bytes(b"\n".join(rows) + b"\n")
        drop_good(spool)
        with capture_logs() as logs:
            await run_once(work)
        assert sim.stats()["requests"] == len(GOOD) + 3
    records = [r for r in work.lines("q") if r["source"]["file"] == "mixed.jsonl"]
    assert sorted((r["source"]["line"], r["meta"]["n"]) for r in records) == [
        (1, 1),
        (3, 2),
        (10, 3),
    ]
    rejects = work.lines("q", "rejects")
    assert {r["source"]["line"]: r["reason"] for r in rejects} == expected_bad
    assert all(r["stage"] == "input" and r["source"]["file"] == "mixed.jsonl" for r in rejects)
    assert all(f"line {r['source']['line']}" in r["detail"] for r in rejects)
    logged = {e["line"]: e["reason"] for e in events(logs, "bad_input_line")}
    assert logged == expected_bad
    # Bad lines are outcomes too: the file is finished, not failed.
    assert (spool / "done" / "mixed.jsonl").exists()
    assert not (spool / "failed" / "mixed.jsonl").exists()
    assert_good_once(work)


@pytest.fixture
def sim_url() -> Iterator[str]:
    with sim_process() as url:
        yield url


def run_daemon_measured(work: Workdir) -> tuple[int, int]:
    """Run ``synthd run --once`` as a child; its exit code and peak RSS in KiB."""
    with open(work.path / "daemon.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml", "--once"],
            cwd=work.path,
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + 60
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the daemon did not finish within 60 s")
        time.sleep(0.05)


def test_a_50_mb_line_is_set_aside_without_holding_it(work: Workdir, sim_url: str) -> None:
    """The reader never holds more than ``max_line_bytes`` of a line.

    Peak RSS is compared with a run of the same daemon on the same small lines
    without the huge one: holding the 50 MB line even once (let alone decoding
    it) would add at least 50 MB.
    """
    spool = work.spool("q")
    work.write_config(sim_url, simple_job("q", input='"lines"'))
    small = b"a topic before the huge line\nanother small topic\n"
    (spool / "small.txt").write_bytes(small)
    code, baseline_kib = run_daemon_measured(work)
    assert code == 0
    huge = spool / "huge.txt"
    with open(huge, "wb") as f:
        f.write(b"the first topic\n")
        chunk = b"x" * (1 << 20)
        for _ in range(50):
            f.write(chunk)
        f.write(b"\nthe topic right after the huge line\nand the last topic\n")
    drop_good(spool)
    code, peak_kib = run_daemon_measured(work)
    assert code == 0, (work.path / "daemon.log").read_text()
    assert peak_kib < baseline_kib + 25 * 1024, f"peak {peak_kib} KiB, baseline {baseline_kib} KiB"
    (reject,) = work.lines("q", "rejects")
    assert reject["source"]["file"] == "huge.txt" and reject["source"]["line"] == 2
    assert reject["stage"] == "input" and reject["reason"] == "line_too_long"
    assert "4000000 bytes" in reject["detail"]
    topics = Counter((r["source"]["file"], r["context"]) for r in work.lines("q"))
    assert {k: v for k, v in topics.items() if k[0] == "huge.txt"} == {
        ("huge.txt", "the first topic"): 1,
        ("huge.txt", "the topic right after the huge line"): 1,
        ("huge.txt", "and the last topic"): 1,
    }
    assert sum(1 for f, _ in topics if f == "small.txt") == 2
    assert (spool / "done" / "huge.txt").stat().st_size > 50 << 20
    logged = [
        e
        for raw in (work.path / "daemon.log").read_bytes().splitlines()
        if (e := orjson.loads(raw))["event"] == "bad_input_line"
    ]
    assert [(e["file"], e["line"], e["reason"]) for e in logged] == [
        ("huge.txt", 2, "line_too_long")
    ]
    assert_good_once(work)


# -- prompts longer than the model's window ---------------------------------------------------


async def test_a_context_too_long_is_truncated_or_rejected_as_configured(work: Workdir) -> None:
    long_text = " ".join(
        f"sentence {i} of a very long report about the harbour." for i in range(800)
    )
    limits = {"max_prompt_tokens": 300}
    jobs = simple_job("t", on_long_prompt='"truncate"', **limits) + simple_job(
        "r", on_long_prompt='"reject"', **limits
    )
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, jobs)
        for job in ("t", "r"):
            (work.spool(job) / "long.txt").write_text(long_text)
            drop_good(work.spool(job))
        with capture_logs() as logs:
            await run_once(work)
        # The rejected prompt was never sent: it would only be refused (and paid).
        assert sim.stats()["requests"] == 2 * len(GOOD) + 1
    (cut,) = [r for r in work.lines("t") if r["source"]["file"] == "long.txt"]
    prompt = cut["messages"][-1]["content"]
    assert TRUNCATION_MARKER in prompt
    assert prompt.startswith("Read the passage below.") and prompt.rstrip().endswith("QUESTIONS:")
    assert len(prompt) <= 300 * 4, "the whole prompt fits the limit (4 chars a token)"
    assert cut["usage"]["prompt_tokens"] < 400
    assert not work.lines("t", "rejects")
    (rejected,) = work.lines("r", "rejects")
    assert rejected["source"]["file"] == "long.txt" and rejected["stage"] == "input"
    assert rejected["reason"] == "prompt_too_long" and "> 300" in rejected["detail"]
    assert not [r for r in work.lines("r") if r["source"]["file"] == "long.txt"]
    assert (work.spool("r") / "done" / "long.txt").exists()
    assert [e["job"] for e in events(logs, "summary") if e["bad_input"]] == ["r"]
    assert_good_once(work, "t")
    assert_good_once(work, "r")


async def test_a_context_too_long_gets_a_log_line(work: Workdir) -> None:
    long_text = "a sentence of a very long report. " * 2000
    jobs = simple_job("t", on_long_prompt='"truncate"', max_prompt_tokens=300) + simple_job(
        "r", on_long_prompt='"reject"', max_prompt_tokens=300
    )
    async with running_sim(SimConfig(port=0)) as sim:
        work.write_config(sim.base_url, jobs)
        for job in ("t", "r"):
            (work.spool(job) / "long.txt").write_text(long_text)
        with capture_logs() as logs:
            await run_once(work)
    told = {e.get("job") for e in logs if e.get("file") == "long.txt" and e["log_level"] != "info"}
    assert told == {"t", "r"}
