"""``handoff.stage_item``: a hand-off row (``test_stagestore``) as the stage's work item."""

from __future__ import annotations

from pathlib import Path

from synthd import config, handoff, records
from synthd.checkpoint import Checkpoint
from synthd.models import Accepted, BadLine, Choice, Rejection, Reply
from synthd.stagestore import hand_over, stage_rows, stage_source
from tests.unit.test_stagestore import LINKS, rec


def test_a_stage_item_is_named_and_filled_from_its_parent(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "s.db")
    with cp.transaction() as tx:
        hand_over(tx.db, [("q", rec("p1", ["x?", "y?"], fp="fpq"))], LINKS)
    src = cp.write(stage_source, "a", "fpa")
    assert cp.write(stage_source, "a", "fpa") == src, "one source row per stage"
    assert cp.active_sources("a") == [], "not a spool file"
    item = handoff.stage_item(src, cp.read(stage_rows, "a", 1, 1)[0], "item")
    assert item.seq == 1
    assert item.line == 2
    assert item.source.id == src.id
    assert item.source.name == "q/p1/1"
    assert (item.source.parent, item.source.parent_fingerprint) == ("p1", "fpq")
    assert item.fields == {
        "context": "passage p1",
        "completion": "x?\ny?",
        "parent": "p1",
        "line": "2",
        "item": "y?",
        "source": "q/p1/1",
    }


def test_every_outcome_of_a_stage_item_names_its_parent(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("{{context}} {{item}}")
    (tmp_path / "synthd.toml").write_text(
        f'[jobs.q]\nprompt = "{tmp_path}/a.txt"\nmodel = "m"\ninput = "jsonl"\n'
        '[jobs.q.filters]\nsplit = "lines"\n'
        f'[jobs.a]\nfrom = "q"\nper = "item"\nprompt = "{tmp_path}/a.txt"\nmodel = "m"\n'
    )
    job = config.load(tmp_path / "synthd.toml").jobs["a"]
    cp = Checkpoint(tmp_path / "s.db")
    with cp.transaction() as tx:
        hand_over(tx.db, [("q", rec("p1", ["x?"], fp="fpq"))], LINKS)
    item = handoff.stage_item(
        cp.write(stage_source, "a", "fpa"), cp.read(stage_rows, "a", 0, 1)[0], "item"
    )
    reply = Reply([Choice("ok", "stop"), Choice("", "stop")], "m", 1, 1, True)
    out = records.completed(job, item, "p", {"n": 2}, reply, [Accepted("ok"), Rejection("e")], 0)
    dead = records.dead_letter(job, item, "boom", "attempts_exhausted", 6, 0)
    bad = records.bad_input(job, BadLine(item.source, 0, 1, 0, "missing_field", "x"), 0)
    lines = [*out.lines["records"], *out.lines["rejects"], *dead.lines["dead"]]
    lines += bad.lines["rejects"]
    assert [(ln["parent"], ln["parent_fingerprint"]) for ln in lines] == [("p1", "fpq")] * 4
    assert out.lines["records"][0]["item"] == "x?"
