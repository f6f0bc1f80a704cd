"""synthd.stagestore: the hand-off table, a stage item per kept upstream record (or
element), made once, in the commit of its parent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthd import config
from synthd.checkpoint import Checkpoint
from synthd.stagestore import (
    Handover,
    StageLinks,
    hand_over,
    stage_links,
    stage_pending,
    stage_rows,
    stage_totals,
)
from tests.helpers import Workdir, simple_job

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


def test_a_commit_hands_over_only_the_records_of_jobs_with_stages(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "s.db")
    handover = Handover(LINKS)
    handover.offer("other", rec("p0", ["w?"]))
    handover.offer("q", rec("p1", ["x?", "y?"]))
    assert handover.records == [("q", rec("p1", ["x?", "y?"]))]
    with cp.transaction() as tx:
        handover.commit(tx.db)
        Handover(LINKS).commit(tx.db)  # nothing offered: nothing to do
    assert [(r.seq, r.parent) for r in cp.read(stage_pending, "a")] == [(0, "p1"), (1, "p1")]
    assert cp.read(stage_totals) == {"a": 2, "whole": 1}


def test_links_follow_each_stage_to_its_upstream(tmp_path: Path) -> None:
    jobs = (
        simple_job("q", f_split='"lines"')
        + simple_job("a", **{"from": '"q"', "per": '"item"'})
        + simple_job("whole", **{"from": '"q"'})
    )
    links = stage_links(config.load(Workdir(tmp_path).write_config("http://127.0.0.1:9/v1", jobs)))
    assert links == {"q": [("a", "item"), ("whole", "record")]}
