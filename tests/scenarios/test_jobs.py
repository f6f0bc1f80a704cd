"""The shipped jobs (config/synthd.toml): their filters, prompts and a whole run each.

The filters are built from the real config, so a change to a shipped job that
lets refusals or broken conversations through fails here. Each job also runs
end to end: the real daemon against the simulator on the job's example inputs,
then an export that must pass the fine-tuning check.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from synthd import config
from synthd.config import Config
from synthd.daemon import Daemon
from synthd.export import Spec, check, export_job, val_path
from synthd.filters import FilterChain
from synthd.models import Accepted, Rejection
from synthd.sim import SimConfig, content, running_sim
from tests.helpers import ROOT

JOBS = ("questions", "analysis", "conversations")


@pytest.fixture(scope="module")
def shipped() -> Config:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the config names its prompts relative to the repository
        return config.load(Path("config/synthd.toml"))


def chain(cfg: Config, job: str) -> FilterChain:
    return FilterChain(cfg.jobs[job].config.filters)


def accepted(result: Accepted | Rejection) -> Accepted:
    assert isinstance(result, Accepted), result
    return result


def rejected(result: Accepted | Rejection) -> str:
    assert isinstance(result, Rejection), result
    return result.reason


def test_the_shipped_jobs_are_there(shipped: Config) -> None:
    assert set(JOBS) <= set(shipped.jobs)
    coach = shipped.jobs["conversations"]
    assert coach.system is not None and "MAYA" in coach.system
    assert (coach.config.temperature, coach.config.samples, coach.config.input) == (
        0.7,
        3,
        "lines",
    )


# -- questions ------------------------------------------------------------------------


def test_questions_keep_numbered_questions_and_drop_the_intro(shipped: Config) -> None:
    text = (
        "Sure! Here are some questions about the passage:\n\n"
        "1. Why was the culvert replacement postponed last spring?\n"
        "2) Who decided that the work could wait?\n"
        "- How are families on the far side getting medicine?\n"
        "Q4: What will the water authority do now?\n"
        "5. The school district cancelled classes.\n"
    )
    result = accepted(chain(shipped, "questions").apply(text, "stop"))
    assert result.items == [
        "Why was the culvert replacement postponed last spring?",
        "Who decided that the work could wait?",
        "How are families on the far side getting medicine?",
        "What will the water authority do now?",
    ]
    assert result.text == "\n".join(result.items)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Questions:\n1. Why did the council vote now?\n2. Who uses the branch?", "too_few_items"),
        ("The vote closed the library. Many people were upset.", "too_few_items"),
        (
            "As an AI language model, I cannot speculate.\n1. Why?\n2. Who?\n3. When?",
            "drop_if_matching",
        ),
        ("", "empty"),
    ],
)
def test_questions_rejects(shipped: Config, text: str, reason: str) -> None:
    assert rejected(chain(shipped, "questions").apply(text, "stop")) == reason


# -- analysis ---------------------------------------------------------------------------

ANALYSIS = (
    "The writer is exhausted by chronic understaffing and frightened by a near miss she has "
    "not reported, which suggests she fears blame more than she trusts the system to support "
    "her. Crying in the car before each shift shows that the strain has moved from her body "
    "into her sense of who she is as a nurse. She needs safe staffing and a way to report the "
    "error without punishment, but also someone who recognises how much she is carrying."
)


def test_analysis_keeps_one_paragraph(shipped: Config) -> None:
    assert accepted(chain(shipped, "analysis").apply(f"\n{ANALYSIS}\n", "stop")).text == ANALYSIS


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        (f"{ANALYSIS}\n\nIn summary, she needs help.", "stop", "not_single_paragraph"),
        (f"As an AI, I cannot diagnose anyone. {ANALYSIS}", "stop", "drop_if_matching"),
        ("I'm sorry, but I can't help with that request.", "stop", "drop_if_matching"),
        ("I’m unable to analyse this passage.", "stop", "drop_if_matching"),
        ("She is tired and needs rest.", "stop", "too_short"),
        (" ".join([ANALYSIS] * 4), "stop", "too_long"),
        (ANALYSIS[:250], "length", "finish_reason:length"),
    ],
)
def test_analysis_rejects(shipped: Config, text: str, finish: str, reason: str) -> None:
    assert rejected(chain(shipped, "analysis").apply(text, finish)) == reason


# -- conversations ----------------------------------------------------------------------

TURNS = [
    ("USER", "I've been asked to do my own taxes this year and I don't know where to start."),
    ("MAYA", "That sounds stressful. What part of it worries you most?"),
    ("USER", "Mostly the freelance income. I invoiced about forty clients."),
    ("MAYA", "Do you keep those invoices in one place, or are they spread around?"),
    ("USER", "Spread across email and two apps, honestly."),
    (
        "MAYA",
        "Then a first step could be: one folder, one spreadsheet.\nStep 1: list each invoice.",
    ),
    ("USER", "That feels doable. What about expenses?"),
    ("MAYA", "Same approach. And for anything unclear, an accountant's hour is money well spent."),
]


def conversation(turns: list[tuple[str, str]], sep: str = "\n") -> str:
    return sep.join(f"{s}: {t}" for s, t in turns)


def test_conversations_keep_alternating_turns(shipped: Config) -> None:
    result = accepted(chain(shipped, "conversations").apply(conversation(TURNS, "\n\n"), "stop"))
    assert result.turns == TURNS  # "Step 1:" continues MAYA's turn, it is no speaker


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        (TURNS[:4], "too_few_turns"),
        ([*TURNS[:3], ("USER", "And another thing."), *TURNS[3:]], "broken_alternation"),
        ([*TURNS[:5], ("NARRATOR", "She pauses."), *TURNS[5:]], "unknown_speaker"),
        ([*TURNS[:5], ("ASSISTANT", "Let me add."), *TURNS[5:]], "unknown_speaker"),
    ],
)
def test_conversations_rejects(shipped: Config, turns: list[tuple[str, str]], reason: str) -> None:
    assert rejected(chain(shipped, "conversations").apply(conversation(turns), "stop")) == reason


def test_conversations_reject_a_preamble_and_a_cut_off_chat(shipped: Config) -> None:
    c = chain(shipped, "conversations")
    preamble = "Sure! Here is the chat:\n" + conversation(TURNS)
    assert rejected(c.apply(preamble, "stop")) == "text_before_first_turn"
    assert rejected(c.apply(conversation(TURNS), "length")) == "finish_reason:length"


def test_conversation_stop_sequences_end_the_chat_not_its_first_turn(shipped: Config) -> None:
    stop = shipped.jobs["conversations"].config.stop
    chat = conversation(TURNS)
    assert content.cut(chat, 10_000, stop) == (chat, "stop")  # no turn label is a stop
    for ending in ("\n\nEND", "\nEND", "\nEND\nUSER: One more thing.", "<|end|>"):
        text, finish = content.cut(chat + ending, 10_000, stop)
        assert (text.rstrip(), finish) == (chat, "stop")


# -- the prompts pick what the job wants ------------------------------------------------


@pytest.mark.parametrize(
    ("job", "mode"),
    [("questions", "questions"), ("analysis", "text"), ("conversations", "conversation")],
)
def test_each_prompt_asks_for_its_kind_of_answer(shipped: Config, job: str, mode: str) -> None:
    """The simulator reads prompts the way the demo depends on: by keywords and labels."""
    j = shipped.jobs[job]
    value = "doing taxes for the first time"
    prompt = j.template.render({"context": value, "topic": value, "source": "x", "line": "1"})
    info = content.analyse("\n".join(filter(None, [j.system, prompt])))
    assert info.mode == mode
    if job == "conversations":
        assert info.speakers == j.config.filters.speakers


def test_analysis_prompt_is_three_worked_examples_then_the_context(shipped: Config) -> None:
    text = shipped.jobs["analysis"].template.text
    assert text.count("PASSAGE:\n") == 4 and text.count("ANALYSIS:\n") == 4  # 3 answered
    assert text.rstrip().endswith("PASSAGE:\n{{context}}\n\nANALYSIS:")


def test_examples_exist_for_each_job() -> None:
    assert 4 <= len(list((ROOT / "examples" / "analysis").glob("*.txt"))) <= 6
    topics = (ROOT / "examples" / "conversations" / "topics.txt").read_text().splitlines()
    assert 10 <= len([t for t in topics if t.strip()]) <= 15


# -- end to end: daemon, then export --------------------------------------------------


def deploy(folder: Path, base_url: str, job: str) -> Config:
    """The shipped config in ``folder`` (the current directory), with the job's examples."""
    shutil.copytree(ROOT / "prompts", folder / "prompts")
    shutil.copytree(ROOT / "examples" / job, folder / "spool" / job)
    text = (ROOT / "config" / "synthd.toml").read_text()
    text = re.sub(r'base_url = "[^"]*"', f'base_url = "{base_url}"', text, count=1)
    service = 'listen = ""\nsettle_s = 0\nscan_interval_s = 0.05\nprogress_interval_s = 60'
    text = re.sub(r'listen = "[^"]*"', service, text, count=1)
    (folder / "config").mkdir()
    (folder / "config" / "synthd.toml").write_text(text)
    return config.load(Path("config/synthd.toml"))


def lines(folder: Path) -> list[dict[str, Any]]:
    shards = sorted(folder.glob("*.jsonl"))
    return [orjson.loads(raw) for p in shards for raw in p.read_bytes().splitlines()]


@pytest.mark.parametrize("job", JOBS)
async def test_job_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job: str) -> None:
    monkeypatch.chdir(tmp_path)
    async with running_sim(SimConfig(port=0)) as sim:
        cfg = deploy(tmp_path, sim.base_url, job)
        assert await Daemon(cfg, once=True, handle_signals=False).run() == 0
    j = cfg.jobs[job]
    inputs = sorted((tmp_path / "spool" / job / "done").iterdir())
    items = sum(
        len([t for t in p.read_text().splitlines() if t.strip()])
        if j.config.input == "lines"
        else 1
        for p in inputs
    )
    records = lines(tmp_path / "out" / job)
    rejects = lines(tmp_path / "out" / job / "rejects")
    assert records, "the simulator's answers should pass the job's filters at least once"
    assert len(records) + len(rejects) == items * j.config.samples
    assert {r["job"] for r in records} == {job}
    assert all(isinstance(r["context"], str) and r["context"] for r in records)
    if job == "conversations":
        assert all(len(r["turns"]) >= 6 for r in records)

    spec = Spec.of(j)
    for fmt in ("chat", "prompt-completion", "raw"):
        out = tmp_path / f"{job}-{fmt}.jsonl"
        summary = export_job(cfg, job, fmt, out, val_fraction=0.2, seed=7)
        assert summary.ok, summary.problems
        assert summary.train + summary.val + summary.duplicates == len(records)
        written = out.read_bytes().splitlines() + val_path(out).read_bytes().splitlines()
        assert len(written) == summary.train + summary.val
        for raw in written:  # what was written passes the check when read back
            assert not check(fmt, spec, orjson.loads(raw)).problems
        if fmt == "chat":
            for raw in written:
                roles = [m["role"] for m in orjson.loads(raw)["messages"]]
                assert roles[-1] == "assistant" and "user" in roles
                assert (roles[0] == "system") == (j.system is not None)
