"""The hand-off table (``synthd.stagestore``: ``hand_over``, ``stage_rows``) and
``handoff.stage_item``: a stage item per kept upstream record (or element), made once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthd import config, handoff, records
from synthd.checkpoint import Checkpoint
from synthd.models import Accepted, BadLine, Choice, Rejection, Reply
from synthd.stagestore import StageLinks, hand_over, stage_rows, stage_source, stage_totals

LINKS: StageLinks = {"q": [("a", "item"), ("whole", "record")], "a": [("j", "record")]}


def rec(rid: str, items: list[str], fp: str = "f1") -> dict[str, Any]:
    return {"id": rid, "context": f"passage {rid}", "completion": "\n".join(items),
            "items": items, "fingerprint": fp}  # fmt: skip


def test_each_record_hands_each_stage_its_items_in_order(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "s.db")
    with cp.transaction() as tx:
        added = hand_over(tx.db, [("q", rec("p1", ["x?", "y?"])), ("q", rec("p2", ["z?"]))], LINKS)
    assert added == 3 + 2
    rows = cp.read(stage_rows, "a", 0, 10)
    assert [(r.seq, r.parent, r.idx) for r in rows] == [(0, "p1", 0), (1, "p1", 1), (2, "p2", 0)]
    assert [(r.seq, r.parent) for r in cp.read(stage_rows, "whole", 0, 10)] == [
        (0, "p1"),
        (1, "p2"),
    ]
    assert [r.seq for r in cp.read(stage_rows, "a", 1, 1)] == [1]
    assert cp.read(stage_totals) == {"a": 3, "whole": 2}


def test_handing_over_the_same_record_again_adds_nothing(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "s.db")
    for _ in range(2):
        with cp.transaction() as tx:
            hand_over(tx.db, [("q", rec("p1", ["x?", "y?"]))], LINKS)
    with cp.transaction() as tx:
        assert (
            hand_over(tx.db, [("q", rec("p1", ["x?", "y?"])), ("q", rec("p3", ["w?"]))], LINKS) == 2
        )
    assert [r.seq for r in cp.read(stage_rows, "a", 0, 10)] == [0, 1, 2], "seqs stay contiguous"


def test_a_rolled_back_commit_hands_over_nothing(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "s.db")
    try:
        with cp.transaction() as tx:
            hand_over(tx.db, [("q", rec("p1", ["x?"]))], LINKS)
            raise OSError("the shard append failed")
    except OSError:
        pass
    assert cp.read(stage_rows, "a", 0, 10) == []


def test_jobs_without_stages_and_records_without_items_hand_over_nothing(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "s.db")
    with cp.transaction() as tx:
        assert hand_over(tx.db, [("other", rec("p1", ["x?"]))], LINKS) == 0
        assert (
            hand_over(tx.db, [("q", {**rec("p2", []), "items": []})], {"q": [("a", "item")]}) == 0
        )


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
