"""synthd.export and synthd.exportcheck: shards in, fine-tuning files out, byte for byte."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from synthd import config
from synthd.cli import main
from synthd.daemon import Daemon
from synthd.export import (
    Format,
    ShardReader,
    Spec,
    Unusable,
    export_job,
    in_validation,
    to_example,
    turn_messages,
    val_path,
)
from synthd.exportcheck import (
    check_chat,
    check_prompt_completion,
    check_raw,
    messages_tokens,
    text_tokens,
    training_cost,
)
from synthd.prompts import Template
from synthd.sim import SimConfig, running_sim

CONFIG = """
[provider]
base_url = "http://127.0.0.1:9/v1"

[service]
listen = ""

[jobs.qa]
prompt = "prompts/qa.txt"
model = "m"

[jobs.qa.export]
separator = "\\n\\nQUESTIONS:\\n\\n"
completion_stop = " END"
price_per_mtok = 25.0
epochs = 2

[jobs.coach]
prompt = "prompts/coach.txt"
system_prompt = "prompts/coach_system.txt"
model = "m"
input = "lines"

[jobs.coach.filters]
split = "turns"
speakers = ["USER", "MAYA"]
"""


def record(rid: str, context: str, completion: str, **extra: Any) -> dict[str, Any]:
    """A record as synthd.records.completed writes it (the fields export reads, and more)."""
    return {
        "id": rid,
        "job": "qa",
        "source": {"file": "a.txt", "line": 1, "seq": 0, "claim": "c1", "end": 10},
        "sample": 0,
        "messages": [{"role": "user", "content": f"Passage:\n{context}\n\nQuestions:"}],
        "context": context,
        "completion": completion,
        "model": "m",
        "params": {"n": 1},
        "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
        "finish_reason": "stop",
        "fingerprint": "f",
        "created": 1,
        **extra,
    }


def line(rec: dict[str, Any]) -> bytes:
    return orjson.dumps(rec) + b"\n"


R1 = record("r1", "The river rose.", "Who was warned?\nWhat happens next?")
R2 = record("r2", "The vote passed.", "Why now?")
R3 = record("r3", "The river rose.", "Who was warned?\nWhat happens next?")  # same as r1
R4 = record("r4", "Rent is due.", "Can they pay?")
TORN = b'{"id": "r5", "job": "qa", "comp'  # a write in progress: no newline yet

TURNS = [
    {"speaker": "MAYA", "text": "Hello."},  # a leading assistant turn: dropped
    {"speaker": "USER", "text": "I dread Mondays."},
    {"speaker": "MAYA", "text": "What happens on Mondays?"},
    {"speaker": "USER", "text": "Thanks."},  # a trailing user turn: dropped
]
C1 = record("c1", "dreading work", "MAYA: Hello.\nUSER: ...", job="coach", turns=TURNS)


@pytest.fixture
def deploy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder with the config, prompts and shards: qa has a closed and an open shard."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "qa.txt").write_text("Passage:\n{{context}}\n\nQuestions:")
    (tmp_path / "prompts" / "coach.txt").write_text("A chat about {{topic}}")
    (tmp_path / "prompts" / "coach_system.txt").write_text("You are MAYA.\n")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "synthd.toml").write_text(CONFIG)
    qa = tmp_path / "out" / "qa"
    (qa / "rejects").mkdir(parents=True)
    (qa / "rejects" / "rejects-000001.jsonl").write_bytes(line(R4))  # never exported
    (qa / "qa-000001.jsonl").write_bytes(line(R1) + line(R2) + line(R3))
    (qa / "qa-000002.jsonl.part").write_bytes(line(R4) + TORN)
    coach = tmp_path / "out" / "coach"
    coach.mkdir(parents=True)
    (coach / "coach-000001.jsonl.part").write_bytes(line(C1))
    yield tmp_path


def run(job: str, fmt: Format, out: Path, val_fraction: float = 0.0, seed: int = 7) -> Any:
    cfg = config.load(Path("config/synthd.toml"))
    return export_job(cfg, job, fmt, out, val_fraction=val_fraction, seed=seed)


# -- the three formats, byte for byte ------------------------------------------------


def test_chat_export_bytes(deploy: Path) -> None:
    out = deploy / "ft" / "train.jsonl"
    summary = run("qa", "chat", out)
    assert out.read_bytes() == (
        b'{"messages":[{"role":"user","content":"The river rose."},'
        b'{"role":"assistant","content":"Who was warned?\\nWhat happens next?"}]}\n'
        b'{"messages":[{"role":"user","content":"The vote passed."},'
        b'{"role":"assistant","content":"Why now?"}]}\n'
        b'{"messages":[{"role":"user","content":"Rent is due."},'
        b'{"role":"assistant","content":"Can they pay?"}]}\n'
    )
    assert (deploy / "ft" / "train.val.jsonl").read_bytes() == b""
    assert (summary.read, summary.torn, summary.duplicates) == (4, 1, 1)
    assert (summary.train, summary.val, summary.failed) == (3, 0, 0)
    assert summary.ok


def test_chat_export_of_turns_has_the_system_prompt_and_ends_with_the_assistant(
    deploy: Path,
) -> None:
    out = deploy / "coach.jsonl"
    assert run("coach", "chat", out).ok
    assert out.read_bytes() == (
        b'{"messages":[{"role":"system","content":"You are MAYA."},'
        b'{"role":"user","content":"I dread Mondays."},'
        b'{"role":"assistant","content":"What happens on Mondays?"}]}\n'
    )


def test_prompt_completion_export_bytes(deploy: Path) -> None:
    out = deploy / "pc.jsonl"
    assert run("qa", "prompt-completion", out).ok
    assert out.read_bytes().splitlines()[:2] == [
        b'{"prompt":"The river rose.\\n\\nQUESTIONS:\\n\\n",'
        b'"completion":" Who was warned?\\nWhat happens next? END"}',
        b'{"prompt":"The vote passed.\\n\\nQUESTIONS:\\n\\n","completion":" Why now? END"}',
    ]


def test_raw_export_copies_complete_record_lines(deploy: Path) -> None:
    out = deploy / "raw.jsonl"
    summary = run("qa", "raw", out)
    # r3 differs from r1 only in its id, so as a raw record it is no duplicate.
    assert out.read_bytes() == line(R1) + line(R2) + line(R3) + line(R4)
    assert (summary.duplicates, summary.torn) == (0, 1)


def test_the_torn_line_is_read_once_it_is_complete(deploy: Path) -> None:
    part = deploy / "out" / "qa" / "qa-000002.jsonl.part"
    part.write_bytes(line(R4) + line(record("r5", "A new passage.", "What now?")))
    summary = run("qa", "chat", deploy / "t.jsonl")
    assert (summary.train, summary.torn) == (4, 0)


def test_a_part_shard_closed_after_listing_is_read_under_its_final_name(
    deploy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = deploy / "out" / "qa"
    listed = [folder / "qa-000001.jsonl", folder / "qa-000002.jsonl.part"]
    (folder / "qa-000002.jsonl.part").rename(folder / "qa-000002.jsonl")  # the daemon rotated
    monkeypatch.setattr("synthd.export.job_shard_paths", lambda folder, prefix: listed)
    lines = list(ShardReader(folder, "qa"))
    assert [orjson.loads(raw)["id"] for raw in lines] == ["r1", "r2", "r3", "r4"]


def test_no_output_yet_exports_nothing(deploy: Path) -> None:
    cfg = config.load(Path("config/synthd.toml"))
    for p in (deploy / "out" / "coach").iterdir():
        p.unlink()
    summary = export_job(cfg, "coach", "chat", deploy / "x.jsonl")
    assert (summary.read, summary.train, summary.ok) == (0, 0, True)
    assert (deploy / "x.jsonl").read_bytes() == b""


# -- the train/validation split ------------------------------------------------------


def test_split_is_stable_for_a_seed_and_changes_with_it() -> None:
    ids = [f"id{i}" for i in range(2000)]
    first = {i for i in ids if in_validation(7, i, 0.1)}
    assert first == {i for i in ids if in_validation(7, i, 0.1)}
    assert 140 <= len(first) <= 260
    other = {i for i in ids if in_validation(8, i, 0.1)}
    assert other != first
    assert not any(in_validation(7, i, 0.0) for i in ids)


def test_split_keeps_each_record_on_its_side_when_records_are_added(deploy: Path) -> None:
    folder = deploy / "out" / "qa"
    many = [record(f"m{i}", f"passage {i}", f"question {i}?") for i in range(60)]
    (folder / "qa-000003.jsonl.part").write_bytes(b"".join(line(r) for r in many[:30]))
    before = run("qa", "raw", deploy / "a.jsonl", val_fraction=0.3)
    val_before = (deploy / "a.val.jsonl").read_bytes().splitlines()
    (folder / "qa-000003.jsonl.part").write_bytes(b"".join(line(r) for r in many))
    after = run("qa", "raw", deploy / "b.jsonl", val_fraction=0.3)
    val_after = (deploy / "b.val.jsonl").read_bytes().splitlines()
    assert val_before and set(val_before) <= set(val_after)
    assert after.val > before.val
    other_seed = run("qa", "raw", deploy / "c.jsonl", val_fraction=0.3, seed=8)
    assert (deploy / "c.val.jsonl").read_bytes().splitlines() != val_after
    assert other_seed.train + other_seed.val == after.train + after.val


def test_val_path_inserts_val_before_the_suffix() -> None:
    assert val_path(Path("d/train.jsonl")) == Path("d/train.val.jsonl")
    assert val_path(Path("data")) == Path("data.val")


# -- conversion -----------------------------------------------------------------------


SPEC = Spec(
    system=None,
    user_from="context",
    separator="\n###\n",
    completion_stop=" END",
    roles={"USER": "user", "MAYA": "assistant"},
    context_tokens=100,
    epochs=3,
    price_per_mtok=0.0,
)


def test_turns_keep_their_alternation_between_first_user_and_last_assistant() -> None:
    roles = SPEC.roles
    assert [m["role"] for m in turn_messages(TURNS, roles)] == ["user", "assistant"]
    full = [{"speaker": s, "text": "x"} for s in ("USER", "MAYA") * 3]
    assert [m["role"] for m in turn_messages(full, roles)] == ["user", "assistant"] * 3
    with pytest.raises(Unusable) as e:
        turn_messages([*full, {"speaker": "NARRATOR", "text": "x"}], roles)
    assert e.value.kind == "unknown_speaker"


def test_user_from_prompt_takes_the_rendered_prompt() -> None:
    spec = Spec(**{**_fields(SPEC), "user_from": "prompt", "system": "Be brief."})
    messages = to_example("chat", spec, R2)["messages"]
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Passage:\nThe vote passed.\n\nQuestions:"},
        {"role": "assistant", "content": "Why now?"},
    ]


def test_a_user_template_puts_a_pipeline_record_s_passage_and_question_together() -> None:
    spec = Spec(**{**_fields(SPEC), "user_template": Template("{{context}}\n\nQ: {{item}}")})
    judged = {"id": "j", "context": "The vote passed.", "item": "Why now?", "completion": "Dues."}
    assert to_example("chat", spec, judged)["messages"] == [
        {"role": "user", "content": "The vote passed.\n\nQ: Why now?"},
        {"role": "assistant", "content": "Dues."},
    ]
    with pytest.raises(Unusable) as e:
        to_example("chat", spec, {**judged, "item": None})
    assert e.value.kind == "missing_field"


def test_an_empty_export_system_leaves_the_job_system_prompt_out(deploy: Path) -> None:
    text = (deploy / "config" / "synthd.toml").read_text()
    (deploy / "config" / "synthd.toml").write_text(text + '\n[jobs.coach.export]\nsystem = ""\n')
    spec = Spec.of(config.load(Path("config/synthd.toml")).jobs["coach"])
    assert spec.system is None
    assert to_example("chat", spec, C1)["messages"][0]["role"] == "user"


@pytest.mark.parametrize(
    ("fmt", "rec", "kind"),
    [
        ("chat", ["not", "an", "object"], "invalid_record"),
        ("prompt-completion", {k: v for k, v in R1.items() if k != "context"}, "missing_context"),
        ("chat", {k: v for k, v in R1.items() if k != "completion"}, "missing_completion"),
        ("chat", {**C1, "turns": "USER: hi"}, "invalid_record"),
    ],
)
def test_records_that_cannot_become_examples(fmt: Format, rec: Any, kind: str) -> None:
    with pytest.raises(Unusable) as e:
        to_example(fmt, SPEC, rec)
    assert e.value.kind == kind


def test_unusable_and_unreadable_records_fail_the_export(deploy: Path) -> None:
    part = deploy / "out" / "qa" / "qa-000002.jsonl.part"
    old = {k: v for k, v in R4.items() if k != "context"}  # written before records had it
    part.write_bytes(line(old) + b"{not json}\n")
    summary = run("qa", "chat", deploy / "f.jsonl")
    assert not summary.ok
    assert (summary.failed, dict(summary.problems)) == (
        2,
        {"missing_context": 1, "unreadable_line": 1},
    )
    assert summary.train == 2  # the good ones are still written


# -- the checker flags each kind of problem --------------------------------------------

U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "ok"}


def chat(*messages: Any) -> dict[str, Any]:
    return {"messages": list(messages)}


@pytest.mark.parametrize(
    ("example", "kind"),
    [
        ([1, 2], "data_type"),
        ({"messages": []}, "missing_messages_list"),
        ({"prompt": "hi"}, "missing_messages_list"),
        ({**chat(U, A), "extra": 1}, "unrecognized_key"),
        (chat({"role": "user"}, A), "message_missing_key"),
        (chat(U, {**A, "mood": "calm"}), "message_unrecognized_key"),
        (chat({**U, "role": "coach"}, A), "unrecognized_role"),
        (chat({**U, "content": " "}, A), "missing_content"),
        (chat({**U, "content": 7}, A), "missing_content"),
        (chat(U), "example_missing_assistant_message"),
        (chat({**U, "content": "x" * 400}, A), "too_long"),
    ],
)
def test_chat_check_flags(example: Any, kind: str) -> None:
    assert kind in check_chat(example, 100).problems


def test_a_good_chat_example_passes_with_its_token_estimate() -> None:
    verdict = check_chat(chat(U, A), 100)
    assert verdict.problems == frozenset()
    assert verdict.tokens == (1 + 4) + (1 + 4)  # ceil(2/4) + 4 per message


SEP, STOP = "\n###\n", " END"


@pytest.mark.parametrize(
    ("example", "kind"),
    [
        ("text", "data_type"),
        ({"prompt": "p" + SEP}, "missing_key"),
        ({"prompt": "p" + SEP, "completion": " c END", "id": 1}, "unrecognized_key"),
        ({"prompt": "p" + SEP, "completion": ""}, "missing_content"),
        ({"prompt": "a" + SEP + "b" + SEP, "completion": " c END"}, "separator_in_prompt"),
        ({"prompt": "p" + SEP, "completion": " c END and END"}, "stop_in_completion"),
        ({"prompt": "p" * 300 + SEP, "completion": " c END"}, "too_long"),
    ],
)
def test_prompt_completion_check_flags(example: Any, kind: str) -> None:
    assert kind in check_prompt_completion(example, 50, SEP, STOP).problems


def test_a_good_pair_passes() -> None:
    verdict = check_prompt_completion({"prompt": "p" + SEP, "completion": " c END"}, 50, SEP, STOP)
    assert verdict.problems == frozenset()
    assert verdict.tokens == 2 + 2


@pytest.mark.parametrize(
    ("example", "kind"),
    [
        (3, "data_type"),
        ({"id": "x"}, "missing_content"),
        ({**R1, "completion": "x" * 999}, "too_long"),
    ],
)
def test_raw_check_flags(example: Any, kind: str) -> None:
    assert kind in check_raw(example, 100).problems


def test_token_estimate_and_cost() -> None:
    assert [text_tokens(t) for t in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]
    assert messages_tokens([{"content": "abcde"}, {"content": None}]) == 2 + 4 + 4
    assert training_cost(1_000_000, 3, 25.0) == pytest.approx(75.0)


def test_too_long_examples_are_left_out_and_counted(deploy: Path) -> None:
    text = (deploy / "config" / "synthd.toml").read_text()
    text = text.replace("epochs = 2", "epochs = 2\ncontext_tokens = 18")
    (deploy / "config" / "synthd.toml").write_text(text)
    summary = run("qa", "chat", deploy / "long.jsonl")
    # r1 is 21 tokens: "The river rose." 4 + 4, "Who was warned?\nWhat happens next?" 9 + 4.
    assert dict(summary.problems) == {"too_long": 1}
    assert (summary.train, summary.failed) == (2, 1)


# -- the command ------------------------------------------------------------------------


def test_cli_export_prints_the_summary(deploy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["export", "qa", "--config", "config/synthd.toml", "--format", "chat"]
    assert main([*args, "--out", "ft/train.jsonl", "--val-fraction", "0"]) == 0
    out = capsys.readouterr().out
    assert "records read   4 (skipped 1 incomplete last line" in out
    assert "written        3 train -> ft/train.jsonl, 0 validation -> ft/train.val.jsonl" in out
    assert "duplicates     1 removed" in out
    assert "problems       none" in out
    assert "tokens         min 14, median 15, max 21 per example" in out
    assert "cost           under $0.01: 50 training tokens x 2 epochs at $25 per 1M" in out
    assert "OpenAI needs at least 10 training examples" in out


def test_cli_export_exits_1_when_an_example_fails(
    deploy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (deploy / "out" / "qa" / "qa-000002.jsonl.part").write_bytes(b"[1]\n")
    args = ["export", "qa", "--config", "config/synthd.toml", "--format", "raw", "--out", "r.jsonl"]
    assert main(args) == 1
    assert "problems       1 example left out: invalid_record 1" in capsys.readouterr().out


def test_cli_export_usage_errors(deploy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--config", "config/synthd.toml", "--format", "chat", "--out", "x.jsonl"]
    assert main(["export", "nope", *base]) == 2
    assert "jobs.nope: no such job (have: coach, qa)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["export", "qa", *base, "--val-fraction", "1.5"])
    assert e.value.code == 2


def _fields(spec: Spec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in Spec.__dataclass_fields__}


# -- while the daemon writes ----------------------------------------------------------


async def test_export_while_the_daemon_writes(deploy: Path) -> None:
    """Every export taken mid-run passes the check; shards rotate under it meanwhile."""
    async with running_sim(SimConfig(port=0, latency_ms=2)) as sim:
        text = CONFIG.replace("http://127.0.0.1:9/v1", sim.base_url)
        text = text.replace("[service]", "rpm = 1000000\ntpm = 1000000000\n[service]")
        text = text.replace('listen = ""', 'listen = ""\nsettle_s = 0\nscan_interval_s = 0.05')
        text += '[jobs.live]\nprompt = "prompts/qa.txt"\nmodel = "m"\nmax_tokens = 30\n'
        text += "input = 'lines'\n[jobs.live.filters]\ndedupe = false\n"
        text += "[jobs.live.output]\nshard_max_records = 300\n"
        (deploy / "config" / "synthd.toml").write_text(text)
        (deploy / "spool" / "live").mkdir(parents=True)
        topics = "".join(f"passage number {i}\n" for i in range(3000))
        (deploy / "spool" / "live" / "many.txt").write_text(topics)
        cfg = config.load(Path("config/synthd.toml"))
        task = asyncio.create_task(Daemon(cfg, once=True, handle_signals=False).run())
        seen = []
        while not task.done():
            summary = await asyncio.to_thread(export_job, cfg, "live", "chat", deploy / "l.jsonl")
            assert summary.ok and summary.duplicates == 0
            seen.append(summary.train + summary.val)
            await asyncio.sleep(0.01)
        assert await task == 0
    final = export_job(cfg, "live", "chat", deploy / "l.jsonl")
    assert final.train + final.val == 3000 and final.torn == 0
    assert len(seen) > 1 and seen == sorted(seen) and seen[0] < 3000
