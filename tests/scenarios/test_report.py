"""``synthd report`` on the shipped demo's output: every section, the shards' own numbers,
and a page that a real browser renders with no console error and no network."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from synthd.reportpage import SECTIONS
from tests import chromium
from tests.helpers import ROOT, Workdir, sim_process, simple_job, write_provider_config


def lines(folder: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(r)
        for p in sorted(folder.glob("*.jsonl*"))
        for r in p.read_bytes().splitlines()
    ]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """The questions demo run to its end, then reported on."""
    work = tmp_path_factory.mktemp("demo") / "run"
    demo_py = [sys.executable, str(ROOT / "examples" / "demo.py")]
    subprocess.run(
        [*demo_py, "--job", "questions", "--workdir", str(work)], check=True, timeout=300
    )
    report = [sys.executable, "-m", "synthd", "report", "questions"]
    done = subprocess.run(
        [*report, "--config", "config/synthd.toml", "--out", "report"],
        cwd=work,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    data = orjson.loads((work / "report" / "report.json").read_bytes())
    return work, data, (work / "report" / "report.html").read_text()


def test_numbers_equal_those_counted_from_the_shards(demo: tuple[Path, Any, str]) -> None:
    work, data, _ = demo
    out = work / "out" / "questions"
    records, rejects, dead = lines(out), lines(out / "rejects"), lines(out / "dead-letter")
    assert records, "the demo wrote records"
    assert data["totals"] == {"records": len(records), "rejects": len(rejects), "dead": len(dead)}
    assert data["rejects_by_reason"] == dict(Counter(r["reason"] for r in rejects))
    lengths = data["lengths"]
    assert lengths["completion_chars"]["max"] == max(len(r["completion"]) for r in records)
    assert lengths["context_chars"]["count"] == len(records)
    items = [len(i) for r in records for i in r.get("items", [])]
    assert lengths["item_chars"]["count"] == len(items)
    assert lengths["item_chars"]["mean"] == round(sum(items) / len(items), 2)
    assert data["tokens"]["items"] == len(
        {(r["source"]["claim"], r["source"]["seq"]) for r in records + rejects}
    )
    assert data["tokens"]["completion_tokens"] > 0
    assert data["stages"][-1]["job"] == "questions"
    assert data["stages"][-1]["pass_rate"] == round(len(records) / (len(records) + len(rejects)), 4)
    firsts = Counter(" ".join(r["completion"].split()[:2]) for r in records)
    assert dict(data["openings"]) == dict(firsts.most_common(15))


def test_page_has_every_section_and_fetches_nothing(demo: tuple[Path, Any, str]) -> None:
    _, _, page = demo
    for section in SECTIONS:
        assert f"id='{section}'" in page
    assert page.count("<svg") >= 5
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page


def test_browser_renders_the_plots_without_console_errors(
    demo: tuple[Path, Any, str], tmp_path: Path
) -> None:
    work, _, _ = demo
    url = (work / "report" / "report.html").as_uri()
    page = chromium.render(url)
    assert not page.console, page.console
    assert page.dom.count("<svg") >= 5
    for section in SECTIONS:
        assert f'id="{section}"' in page.dom
    shot = chromium.screenshot(url, tmp_path / "report.png")
    assert not shot.console
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_report_beside_a_running_daemon_reads_and_never_blocks(work: Workdir) -> None:
    with sim_process("--latency-ms", "20") as url:
        write_provider_config(work, url, simple_job("q", input='"lines"'), max_in_flight=4)
        (work.spool("q") / "t.txt").write_text("\n".join(f"topic {i}" for i in range(3000)))
        run = [sys.executable, "-m", "synthd", "run", "--config", "config/synthd.toml"]
        with open(work.path / "daemon.log", "wb") as log:
            daemon = subprocess.Popen(run, cwd=work.path, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while not work.lines("q"):
                assert time.monotonic() < deadline and daemon.poll() is None
                time.sleep(0.1)
            report = [sys.executable, "-m", "synthd", "report", "q", "--config"]
            done = subprocess.run(
                [*report, "config/synthd.toml", "--out", "rep"], cwd=work.path, timeout=120
            )
            assert done.returncode == 0
            seen = orjson.loads((work.path / "rep" / "report.json").read_bytes())["totals"]
            assert seen["records"] > 0
            assert daemon.poll() is None, "the daemon kept running"
            while len(work.lines("q")) <= seen["records"]:  # and kept writing
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0
