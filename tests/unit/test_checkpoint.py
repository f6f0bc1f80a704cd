"""synthd.checkpoint: the SQLite record of done work, in a tmp_path database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from synthd.checkpoint import Checkpoint, JobCounts
from synthd.models import Outcome, Source


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Checkpoint]:
    checkpoint = Checkpoint(tmp_path / "state" / "checkpoint.db")
    yield checkpoint
    checkpoint.close()


def outcome(
    src: Source,
    seq: int,
    state: str = "record",
    records: int = 1,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> Outcome:
    lines = {"records": [{"n": i} for i in range(records)]} if records else {}
    return Outcome(
        src,
        seq,
        line=seq + 1,
        end=(seq + 1) * 10,
        state=state,
        lines=lines,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        records_written=records,  # as the writer sets it after de-duplication
    )


def test_add_source_returns_the_row(cp: Checkpoint) -> None:
    src = cp.add_source("q", "c1", "in.txt", "spool/q/.work/c1-in.txt", "fp1")
    assert src == Source(src.id, "q", "c1", "in.txt", "spool/q/.work/c1-in.txt", "fp1")
    assert src.id > 0
    assert (src.resume_seq, src.resume_line, src.resume_offset) == (0, 0, 0)
    other = cp.add_source("q", "c2", "in.txt", "p2", "fp1")
    assert other.id != src.id


def test_a_claim_id_is_unique(cp: Checkpoint) -> None:
    cp.add_source("q", "c1", "a.txt", "p", "fp")
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        cp.add_source("q", "c1", "b.txt", "p", "fp")
    assert [s.name for s in cp.active_sources("q")] == ["a.txt"]


def test_active_sources_by_job_in_claim_order(cp: Checkpoint) -> None:
    a = cp.add_source("q", "c1", "a.txt", "p1", "fp")
    b = cp.add_source("q", "c2", "b.txt", "p2", "fp")
    cp.add_source("other", "c3", "c.txt", "p3", "fp")
    assert cp.active_sources("q") == [a, b]
    cp.end_source(a.id, "done", "spool/q/done/a.txt", None)
    assert cp.active_sources("q") == [b]
    cp.end_source(b.id, "failed", "spool/q/failed/b.txt", "binary: NUL")
    assert cp.active_sources("q") == []
    assert [s.name for s in cp.active_sources("other")] == ["c.txt"]


def test_forget_and_set_fingerprint(cp: Checkpoint) -> None:
    a = cp.add_source("q", "c1", "a.txt", "p1", "fp")
    b = cp.add_source("q", "c2", "b.txt", "p2", "fp")
    cp.forget_source(a.id)
    cp.set_fingerprint(b.id, "fp2")
    (only,) = cp.active_sources("q")
    assert (only.id, only.fingerprint, only.path) == (b.id, "fp2", "p2")


def test_resume_points_show_in_active_sources(cp: Checkpoint) -> None:
    src = cp.add_source("q", "c1", "a.txt", "p1", "fp")
    with cp.transaction() as tx:
        tx.resume_points({src.id: (5, 7, 120)})
    (resumed,) = cp.active_sources("q")
    assert (resumed.resume_seq, resumed.resume_line, resumed.resume_offset) == (5, 7, 120)


def test_done_after_lists_items_at_or_past_a_seq(cp: Checkpoint) -> None:
    src = cp.add_source("q", "c1", "a.txt", "p1", "fp")
    other = cp.add_source("q", "c2", "b.txt", "p2", "fp")
    with cp.transaction() as tx:
        tx.record([outcome(src, s) for s in (0, 2, 3)] + [outcome(other, 9)])
    assert cp.done_after(src.id, 1) == {2: (3, 30), 3: (4, 40)}
    assert cp.done_after(src.id, 0) == {0: (1, 10), 2: (3, 30), 3: (4, 40)}
    assert cp.done_after(src.id, 4) == {}
    assert cp.done_after(other.id, 0) == {9: (10, 100)}


def test_an_item_is_recorded_once(cp: Checkpoint) -> None:
    src = cp.add_source("q", "c1", "a.txt", "p1", "fp")
    with cp.transaction() as tx:
        tx.record([outcome(src, 0, "record", records=2)])
    with cp.transaction() as tx:
        tx.record([outcome(src, 0, "dead", records=0)])
    (counts,) = cp.counts()
    assert counts.items == {"record": 1}
    assert counts.records == 2


def test_claim_ids_map_claims_to_sources(cp: Checkpoint) -> None:
    a = cp.add_source("q", "c1", "a.txt", "p1", "fp")
    b = cp.add_source("other", "c2", "b.txt", "p2", "fp")
    assert cp.claim_ids(["c1", "c2", "c1", "nope"]) == {"c1": a.id, "c2": b.id}
    assert cp.claim_ids([]) == {}


def test_claim_ids_with_more_claims_than_one_query_takes(cp: Checkpoint) -> None:
    known = {f"k{i}": cp.add_source("q", f"k{i}", "f", "p", "fp").id for i in range(3)}
    wanted = [f"unknown{i}" for i in range(1200)] + list(known)
    assert cp.claim_ids(iter(wanted)) == known


def test_shard_offsets_by_identity(cp: Checkpoint) -> None:
    assert cp.shard_offset(("q", "records", 1)) == 0
    assert cp.last_shard("q", "records") == 0
    with cp.transaction() as tx:
        tx.shard_offsets({("q", "records", 1): 100, ("q", "rejects", 1): 7})
    with cp.transaction() as tx:
        tx.shard_offsets({("q", "records", 1): 250, ("q", "records", 2): 3})
    assert cp.shard_offset(("q", "records", 1)) == 250
    assert cp.shard_offset(("q", "rejects", 1)) == 7
    assert (cp.last_shard("q", "records"), cp.last_shard("q", "rejects")) == (2, 1)
    assert cp.last_shard("other", "records") == 0


def test_an_offset_kept_by_path_is_read_until_the_stream_has_shard_rows(cp: Checkpoint) -> None:
    """A checkpoint from an earlier version keyed offsets by the .part file's path."""
    with cp.transaction() as tx:
        tx.db.execute("INSERT INTO streams VALUES ('out/q/q-000003.jsonl.part', 42)")
    assert cp.shard_offset(("q", "records", 3), "out/q/q-000003.jsonl.part") == 42
    with cp.transaction() as tx:
        tx.shard_offsets({("q", "records", 4): 1})
    assert cp.shard_offset(("q", "records", 3), "out/q/q-000003.jsonl.part") == 0


def test_a_transaction_rolls_back_on_error(cp: Checkpoint) -> None:
    src = cp.add_source("q", "c1", "a.txt", "p1", "fp")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), cp.transaction() as tx:
        tx.record([outcome(src, 0)])
        tx.resume_points({src.id: (1, 1, 10)})
        tx.shard_offsets({("q", "records", 1): 99})
        assert tx.dedupe("q", [42]) == [True]
        raise Boom
    assert cp.done_after(src.id, 0) == {}
    assert cp.active_sources("q")[0].resume_seq == 0
    assert cp.shard_offset(("q", "records", 1)) == 0
    with cp.transaction() as tx:
        assert tx.dedupe("q", [42]) == [True]  # the digest was never remembered


def test_a_module_writes_its_tables_in_a_transaction_of_its_own(cp: Checkpoint) -> None:
    def insert(db: sqlite3.Connection, value: int, fail: bool = False) -> int:
        db.execute("INSERT INTO seen (job, digest) VALUES ('q', ?)", (value,))
        if fail:
            raise ValueError("after the insert")
        return value

    def count(db: sqlite3.Connection, job: str) -> int:
        return int(db.execute("SELECT count(*) FROM seen WHERE job = ?", (job,)).fetchone()[0])

    assert cp.write(insert, 1) == 1
    with pytest.raises(ValueError):
        cp.write(insert, 2, fail=True)
    assert cp.read(count, "q") == 1, "the failed write was rolled back"


def test_dedupe_across_transactions_and_jobs(cp: Checkpoint) -> None:
    with cp.transaction() as tx:
        assert tx.dedupe("q", [1, 2]) == [True, True]
    with cp.transaction() as tx:
        assert tx.dedupe("q", [2, 3]) == [False, True]
        assert tx.dedupe("other", [2]) == [True]
        assert tx.dedupe("q", [4, 4]) == [True, False]
        assert tx.dedupe("q", []) == []


def test_dedupe_takes_63_bit_digests(cp: Checkpoint) -> None:
    big = (1 << 63) - 1
    with cp.transaction() as tx:
        assert tx.dedupe("q", [big, 0]) == [True, True]
    with cp.transaction() as tx:
        assert tx.dedupe("q", [big, 0]) == [False, False]


def test_counts_per_job(cp: Checkpoint) -> None:
    a1 = cp.add_source("a", "c1", "1.txt", "p", "fp")
    a2 = cp.add_source("a", "c2", "2.txt", "p", "fp")
    a3 = cp.add_source("a", "c3", "3.txt", "p", "fp")
    cp.add_source("a", "c4", "4.txt", "p", "fp")
    b1 = cp.add_source("b", "c5", "5.txt", "p", "fp")
    cp.end_source(a2.id, "done", "done/2.txt", None)
    cp.end_source(a3.id, "failed", "failed/3.txt", "empty")
    with cp.transaction() as tx:
        tx.record(
            [
                outcome(a1, 0, "record", records=2, prompt_tokens=10, completion_tokens=20),
                outcome(a1, 1, "record", records=1, prompt_tokens=5, completion_tokens=7),
                outcome(a1, 2, "rejected", records=0, prompt_tokens=3, completion_tokens=4),
                outcome(a2, 0, "dead", records=0),
                outcome(a2, 1, "bad_input", records=0),
                outcome(b1, 0, "record", records=1, prompt_tokens=1, completion_tokens=1),
            ]
        )
    assert cp.counts() == [
        JobCounts("a", 2, 1, 1, {"record": 2, "rejected": 1, "dead": 1, "bad_input": 1}, 3, 18,
                  31),
        JobCounts("b", 1, 0, 0, {"record": 1}, 1, 1, 1),
    ]  # fmt: skip


def test_counts_of_an_empty_checkpoint(cp: Checkpoint) -> None:
    assert cp.counts() == []


def test_state_survives_a_reopen_and_a_readonly_reader_sees_it(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    first = Checkpoint(path)
    src = first.add_source("q", "c1", "a.txt", "p1", "fp")
    with first.transaction() as tx:
        tx.record([outcome(src, 0)])
        tx.shard_offsets({("q", "records", 1): 12})
    reader = Checkpoint(path, readonly=True)
    try:
        assert reader.counts()[0].items == {"record": 1}
    finally:
        reader.close()
    first.close()
    again = Checkpoint(path)
    try:
        assert again.active_sources("q") == [src]
        assert again.done_after(src.id, 0) == {0: (1, 10)}
        assert again.shard_offset(("q", "records", 1)) == 12
    finally:
        again.close()
