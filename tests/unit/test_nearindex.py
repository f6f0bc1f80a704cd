"""synthd.nearindex: the near-duplicate index in the checkpoint, and what the writer asks it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from synthd import config, nearindex
from synthd.checkpoint import Checkpoint
from synthd.models import Outcome, Source
from synthd.nearindex import near_keep, near_match, near_reject
from tests.helpers import Workdir, simple_job
from tests.unit.test_neardup import PARAMS, TEXTS, one_word_changed, reorder, reworded


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Checkpoint]:
    checkpoint = Checkpoint(tmp_path / "state" / "synthd.db")
    yield checkpoint
    checkpoint.close()


def keep_all(cp: Checkpoint, texts: list[str]) -> None:
    with cp.transaction() as tx:
        for i, t in enumerate(texts):
            keys = PARAMS.keys({"completion": t})
            assert near_match(tx.db, "q", keys, PARAMS.threshold) is None, t
            near_keep(tx.db, "q", f"id{i}", keys)


@pytest.mark.parametrize("variant", [reorder, one_word_changed, reworded])
def test_planted_near_duplicates_are_found_with_the_kept_id(
    cp: Checkpoint, variant: object
) -> None:
    keep_all(cp, TEXTS)
    with cp.transaction() as tx:
        for i, t in enumerate(TEXTS):
            planted = variant(t)  # type: ignore[operator]
            assert planted != t
            match = near_match(tx.db, "q", PARAMS.keys({"completion": planted}), PARAMS.threshold)
            assert match is not None, planted
            assert match[0] == f"id{i}"
            assert PARAMS.threshold <= match[1] <= 1.0


def test_distinct_texts_are_all_kept_and_jobs_do_not_share_an_index(cp: Checkpoint) -> None:
    keep_all(cp, TEXTS)  # asserts that none of them matched another
    with cp.transaction() as tx:
        keys = PARAMS.keys({"completion": TEXTS[0]})
        assert near_match(tx.db, "q", keys, PARAMS.threshold) == ("id0", 1.0)
        assert near_match(tx.db, "other", keys, PARAMS.threshold) is None


def test_the_index_is_part_of_the_transaction(cp: Checkpoint) -> None:
    keys = PARAMS.keys({"completion": TEXTS[0]})
    with pytest.raises(RuntimeError), cp.transaction() as tx:
        near_keep(tx.db, "q", "id0", keys)
        raise RuntimeError("the commit failed")
    with cp.transaction() as tx:
        assert near_match(tx.db, "q", keys, PARAMS.threshold) is None


def test_a_near_duplicate_becomes_a_reject_line_naming_the_kept_record(cp: Checkpoint) -> None:
    near = {"q": PARAMS}
    first = {"id": "r1", "completion": TEXTS[0]}
    again = {"id": "r2", "completion": reorder(TEXTS[0])}
    with cp.transaction() as tx:
        assert near_reject(tx.db, near, "q", first, PARAMS.keys(first)) is None, "kept"
        line = near_reject(tx.db, near, "q", again, PARAMS.keys(again))
        assert near_reject(tx.db, near, "q", again, None) is None, "no keys: not checked"
    assert line is not None
    assert (line["id"], line["reason"], line["kept"]) == ("r2", "near_duplicate", "r1")
    assert PARAMS.threshold <= line["similarity"] <= 1.0
    assert line["detail"].startswith("completion ")  # the field compared
    assert line["detail"].endswith(" similar to r1")


def test_a_batch_is_keyed_only_for_the_jobs_that_ask(tmp_path: Path) -> None:
    jobs = simple_job("q", f_near_dedupe=PARAMS.threshold) + simple_job("other")
    near = nearindex.params_by_job(
        config.load(Workdir(tmp_path).write_config("http://127.0.0.1:9/v1", jobs))
    )
    assert near == {"q": PARAMS}

    def outcome(job: str, texts: list[str]) -> Outcome:
        lines = {"records": [{"completion": t} for t in texts]}
        return Outcome(Source(1, job, "c", "f", "", ""), 0, 1, 1, "record", lines=lines)

    keys = nearindex.batch_keys(near, [outcome("other", TEXTS[:1]), outcome("q", TEXTS[1:3])])
    assert keys == {(1, 0): PARAMS.keys({"completion": TEXTS[1]}),
                    (1, 1): PARAMS.keys({"completion": TEXTS[2]})}  # fmt: skip
