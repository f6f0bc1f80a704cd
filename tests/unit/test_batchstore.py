"""Batch mode's state: membership recorded in one transaction, moved on resubmission,
read back for status."""

from __future__ import annotations

from pathlib import Path

from synthd.batchfile import Member
from synthd.batchstore import COMPLETION_WINDOW_S, BatchStore, NewBatch, describe
from synthd.checkpoint import Checkpoint


def members(n: int, tries: int = 0) -> list[Member]:
    return [
        Member(
            f"c:{i}", 1, i, i + 1, i * 10, i * 5, 5, {"context": f"t{i}"}, None, None, 4, 9, tries
        )
        for i in range(n)
    ]


def new(ms: list[Member], round_: int = 0) -> NewBatch:
    return NewBatch("q", "default", "chat", "/x.jsonl", "fp", {"n": 1}, 100, 90, ms, round_)


def test_members_are_recorded_and_moved_to_the_next_batch(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "synthd.db")
    store = BatchStore(cp)
    first = store.add(new(members(4)))
    assert first.state == "packed" and first.key.startswith("synthd-") and first.requests == 4
    assert store.batched_seqs(1) == {0, 1, 2, 3}
    store.submitted(first.id, {"id": "batch_1", "status": "validating"})
    store.observed(first.id, {"status": "expired", "request_counts": {"completed": 2, "failed": 2}})
    again = store.add(new(members(4)[2:], 1), closing=first.id)
    assert [m.custom_id for m in store.members(again.id)] == ["c:2", "c:3"]
    assert store.members(first.id) == []
    assert [b.id for b in store.open_batches("q")] == [again.id]
    assert store.batched_seqs(1) == {2, 3}
    store.close(again.id, "batch_expired")
    assert store.batched_seqs(1) == frozenset() and store.open_batches() == []
    assert store.recent()[0].reason == "batch_expired"
    cp.close()


def test_status_extrapolates_the_finish_from_the_counts(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "synthd.db")
    store = BatchStore(cp)
    row = store.add(new(members(4)))
    store.submitted(row.id, {"id": "batch_1", "status": "in_progress"})
    fresh = store.open_batches()[0]
    shown = describe(fresh, fresh.created_at + 10)
    assert shown["state"] == "in_progress" and shown["id"] == "batch_1"
    assert shown["expected_finish"] == round((fresh.submitted_at or 0) + COMPLETION_WINDOW_S, 1)
    store.observed(row.id, {"status": "in_progress", "request_counts": {"completed": 1}})
    half = store.open_batches()[0]
    now = (half.submitted_at or 0) + 60
    assert describe(half, now)["expected_finish"] == round(now + 180, 1)  # 1 of 4 in 60 s
    cp.close()
