"""``input = "chunks"`` end to end: long texts, pages and PDFs become passages, exactly once.

The daemon runs against the simulator; the expected passages come from the chunker run
over the same file, so each record can be matched to the passage it was asked about.
"""

from __future__ import annotations

import codecs
import io
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from synthd.chunking import Chunk, blocks_of, chunks
from synthd.extract import html_text
from tests.helpers import (
    ROOT,
    Workdir,
    failure,
    run_once,
    sim_process,
    simple_job,
    write_provider_config,
)
from tests.pdfs import pdf_of
from tests.unit.test_extract import MENU_AND_SCRIPT

LONG = ROOT / "examples" / "long"
RUN = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml", "--once"]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with sim_process("--latency-ms", "2", "--latency-spread-ms", "2") as url:
        yield url


def configure(work: Workdir, url: str, tokens: int, overlap: int = 0, **service: Any) -> None:
    job = simple_job("q", input='"chunks"', chunk_tokens=tokens, chunk_overlap=overlap)
    keys = {"commit_interval_s": 0.01, **service}
    write_provider_config(work, url, job, service_keys=keys, max_in_flight=64)


def expected(text: str, tokens: int, overlap: int = 0) -> list[Chunk]:
    return list(chunks(blocks_of(io.BytesIO(text.encode())), tokens, overlap))


def by_seq(work: Workdir, name: str) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in [*work.lines("q"), *work.lines("q", "rejects"), *work.lines("q", "dead")]:
        if r["source"]["file"] == name:
            out.setdefault(r["source"]["seq"], []).append(r)
    return out


def assert_each_passage_once(work: Workdir, name: str, want: list[Chunk]) -> None:
    got = by_seq(work, name)
    assert sorted(got) == list(range(len(want)))
    for c in want:
        (line,) = got[c.index]
        assert line["source"]["chunk"] == c.index
        assert line["source"]["span"] == [c.start, c.end]
        assert line["source"]["line"] == c.index + 1
        assert line["context"] == c.text


async def test_a_long_text_becomes_its_passages(work: Workdir, sim_url: str) -> None:
    configure(work, sim_url, 400, 40)
    text = (LONG / "kjv-genesis-to-ruth.txt").read_text()[:120_000]
    (work.spool("q") / "genesis.txt").write_text(text)
    await run_once(work)
    want = expected(text, 400, 40)
    assert len(want) > 60
    assert_each_passage_once(work, "genesis.txt", want)
    assert (work.spool("q") / "done" / "genesis.txt").exists()


async def test_a_saved_page_gives_article_passages_only(work: Workdir, sim_url: str) -> None:
    configure(work, sim_url, 100)
    page = LONG / "saved-article.html"
    (work.spool("q") / page.name).write_bytes(page.read_bytes())
    await run_once(work)
    want = expected(html_text(page.read_bytes()), 100)
    assert len(want) > 2
    assert_each_passage_once(work, page.name, want)
    contexts = " ".join(r["context"] for r in work.lines("q"))
    assert "my shepherd" in contexts and "a time of peace" in contexts
    for junk in MENU_AND_SCRIPT:
        assert junk not in contexts, junk


async def test_a_pdf_gives_its_text_in_order(work: Workdir, sim_url: str) -> None:
    configure(work, sim_url, 50)
    left = [f"Left column sentence number {i} ends here." for i in range(40)]
    right = [f"Right column sentence number {i} ends here." for i in range(40)]
    (work.spool("q") / "paper.pdf").write_bytes(pdf_of([[left, right], [["The last page."]]]))
    await run_once(work)
    got = by_seq(work, "paper.pdf")
    text = " ".join(got[s][0]["context"] for s in sorted(got))
    order = [text.index(line) for line in [*left, *right, "The last page."]]
    assert order == sorted(order)


async def test_files_without_text_go_to_failed_with_the_reason(work: Workdir, sim_url: str) -> None:
    configure(work, sim_url, 100)
    spool = work.spool("q")
    (spool / "empty.html").write_bytes(b"<html><script>var menu = 1;</script></html>")
    (spool / "scan.pdf").write_bytes(pdf_of([[[]]]))
    (spool / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")
    (spool / "blank.txt").write_text("  \n\n  \n")
    (spool / "ok.md").write_text("# A heading\n\nA short passage that is fine.\n")
    await run_once(work)
    assert failure(spool, "empty.html")["reason"] == "no_text"
    assert failure(spool, "scan.pdf")["reason"] == "no_text"
    assert failure(spool, "broken.pdf")["reason"] == "bad_pdf"
    assert failure(spool, "blank.txt")["reason"] == "empty"
    assert [r["context"] for r in work.lines("q")] == [
        "# A heading\n\nA short passage that is fine."
    ]


async def test_the_same_file_dropped_again_gets_the_same_ids(work: Workdir, sim_url: str) -> None:
    configure(work, sim_url, 200, 20)
    text = (LONG / "kjv-genesis-to-ruth.txt").read_text()[200_000:240_000]
    (work.spool("q") / "again.txt").write_text(text)
    await run_once(work)
    first = {r["source"]["chunk"]: r["id"] for r in work.lines("q")}
    (work.spool("q") / "again.txt").write_text(text)
    await run_once(work)
    ids = Counter(r["id"] for r in work.lines("q"))
    assert len(first) == len(expected(text, 200, 20))
    assert ids == dict.fromkeys(first.values(), 2)


def life(work: Workdir, crash_at: str | None) -> int:
    env = {**os.environ, "SYNTHD_CRASH_AT": crash_at or ""}
    with open(work.path / "daemon.log", "ab") as log:
        proc = subprocess.run(RUN, cwd=work.path, stdout=log, stderr=log, env=env, timeout=120)
    return proc.returncode


@pytest.mark.timeout(240)
def test_a_kill_during_a_5000_passage_file_leaves_every_passage_once(
    work: Workdir, sim_url: str
) -> None:
    configure(work, sim_url, 16, 3)
    rng = random.Random(22)
    words = ["harbour", "lantern", "morning", "quietly", "river", "stone", "window", "garden"]

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(4, 14))).capitalize() + "."

    text = "\n\n".join(" ".join(sentence() for _ in range(3)) for _ in range(4_000))
    text = text[: expected(text, 16, 3)[4999].end]
    want = expected(text, 16, 3)
    assert len(want) == 5000, len(want)
    (work.spool("q") / "long.txt").write_text(text)
    # Killed after a few commits, then at the fsync before a commit (lines past the
    # checkpoint that recovery adopts): both fall mid-file, so each life resumes mid-file.
    for point in ("checkpoint_committed:3", "shard_fsynced:5"):
        assert life(work, point) == -signal.SIGKILL
        assert 0 < len(by_seq(work, "long.txt")) < 5000, "the kill fell mid-file"
    # A third kill may or may not come before the end: a fast machine commits the
    # rest of the file in fewer than 40 group commits.
    assert life(work, "checkpoint_committed:40") in (0, -signal.SIGKILL)
    assert life(work, None) == 0, (work.path / "daemon.log").read_text()[-3000:]
    assert_each_passage_once(work, "long.txt", want)
    ids = [r["id"] for r in work.lines("q")]
    assert len(ids) == len(set(ids)) == 5000
    assert (work.spool("q") / "done" / "long.txt").exists()


@pytest.mark.timeout(180)
def test_the_demo_runs_the_questions_job_on_the_long_examples(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    demo = [sys.executable, str(ROOT / "examples" / "demo.py"), "--job", "questions"]
    args = ["--inputs", str(LONG), "--workdir", str(tmp_path / "demo")]
    got = subprocess.run(demo + args, env=env, capture_output=True, text=True, timeout=170)
    assert got.returncode == 0, got.stderr[-3000:]
    assert 'cut into passages (input = "chunks")' in got.stdout
    out = tmp_path / "demo" / "out" / "questions"
    shards = [*out.glob("*.jsonl*"), *(out / "rejects").glob("*.jsonl*")]
    lines = [orjson.loads(raw) for p in shards for raw in p.read_bytes().splitlines()]
    files = Counter(ln["source"]["file"] for ln in lines)
    assert files["kjv-genesis-to-ruth.txt"] > 200
    assert files["saved-article.html"] >= 1
    assert not list((tmp_path / "demo" / "spool" / "questions" / "failed").iterdir())


@pytest.mark.timeout(180)
def test_jsonl_fields_are_cut_and_a_kill_inside_a_record_resumes_there(
    work: Workdir, sim_url: str
) -> None:
    configure(work, sim_url, 16, 2)
    book = (LONG / "kjv-genesis-to-ruth.txt").read_text()
    rows = [book[i * 3000 : i * 3000 + 200 + i * 25] for i in range(60)]
    data = b"".join(orjson.dumps({"text": t, "n": i}) + b"\n" for i, t in enumerate(rows))
    (work.spool("q") / "rows.jsonl").write_bytes(data)
    want = [(i, c) for i, t in enumerate(rows) for c in expected(t, 16, 2)]
    assert len(want) > 1000
    for point in ("checkpoint_committed:3", "shard_fsynced:7"):
        assert life(work, point) == -signal.SIGKILL
    assert 0 < len(by_seq(work, "rows.jsonl")) < len(want), "the kills fell mid-file"
    assert life(work, None) == 0, (work.path / "daemon.log").read_text()[-3000:]
    got = by_seq(work, "rows.jsonl")
    assert sorted(got) == list(range(len(want)))
    for seq, (row, c) in enumerate(want):
        (line,) = got[seq]
        assert line["source"]["line"] == row + 1
        assert (line["source"]["chunk"], line["source"]["span"]) == (c.index, [c.start, c.end])
        assert line["context"] == c.text
    assert len({r["id"] for r in work.lines("q")}) == len(want)


_MDWE_LAUNCHER = """
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE
    sys.exit(77)
os.execv(sys.executable, [sys.executable, "-c", sys.argv[1]])
"""
_MDWE_EXTRACT = """
import ctypes
assert ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) == 1  # PR_GET_MDWE: really under it
from synthd.extract import html_text, pdf_text
from tests.pdfs import pdf_of
assert "my shepherd" in html_text(open("examples/long/saved-article.html", "rb").read())
assert pdf_text(pdf_of([[["Read under W^X."]]])).strip() == "Read under W^X."
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_extraction_works_without_writable_executable_memory() -> None:
    """The unit's MemoryDenyWriteExecute=yes holds for lxml, trafilatura and pypdf too."""
    result = subprocess.run(
        [sys.executable, "-c", _MDWE_LAUNCHER, _MDWE_EXTRACT],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    if result.returncode == 77:
        pytest.skip("the kernel has no PR_SET_MDWE (Linux 6.3+), or a sandbox forbids it")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


async def test_a_utf16_text_is_cut_like_its_utf8_copy(work: Workdir, sim_url: str) -> None:
    configure(work, sim_url, 60)
    text = (LONG / "kjv-genesis-to-ruth.txt").read_text()[:20_000]
    (work.spool("q") / "wide.txt").write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    await run_once(work)
    assert_each_passage_once(work, "wide.txt", expected(text, 60))
