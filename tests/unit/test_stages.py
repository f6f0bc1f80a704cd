"""synthd.stages: the pipeline graph checks and what a stage item is made of."""

from __future__ import annotations

import pytest

from synthd import stages
from synthd.errors import ConfigError


def test_a_chain_passes_and_its_links_are_read() -> None:
    up = {"questions": None, "answers": "questions", "qa_judge": "answers"}
    stages.check_graph("f.toml", up)
    assert stages.downstream(up) == {"questions": ["answers"], "answers": ["qa_judge"]}
    assert stages.chain_of(up, "qa_judge") == ["questions", "answers", "qa_judge"]
    assert stages.chain_of(up, "questions") == ["questions"]


def test_a_missing_upstream_names_the_key() -> None:
    with pytest.raises(ConfigError) as e:
        stages.check_graph("f.toml", {"a": None, "b": "nope"})
    assert (e.value.file, e.value.key) == ("f.toml", "jobs.b.from")
    assert "no job named 'nope'" in e.value.problem


@pytest.mark.parametrize(
    ("up", "key", "chain"),
    [
        ({"a": "a"}, "jobs.a.from", "a -> a"),
        ({"a": "b", "b": "a"}, "jobs.a.from", "a -> b -> a"),
        ({"s": None, "a": "c", "b": "a", "c": "b"}, "jobs.a.from", "a -> b -> c -> a"),
    ],
)
def test_a_cycle_is_a_config_error_naming_it(
    up: dict[str, str | None], key: str, chain: str
) -> None:
    with pytest.raises(ConfigError) as e:
        stages.check_graph("f.toml", up)
    assert e.value.key == key
    assert chain in e.value.problem


def test_a_job_hanging_off_a_cycle_is_refused_at_the_cycle() -> None:
    with pytest.raises(ConfigError) as e:
        stages.check_graph("f.toml", {"x": "a", "a": "b", "b": "a"})
    assert e.value.key in {"jobs.a.from", "jobs.b.from"}


def test_item_is_carried_by_per_item_stages_and_below() -> None:
    up = {"q": None, "a": "q", "j": "a", "other": "q"}
    per: dict[str, stages.Per] = {"q": "record", "a": "item", "j": "record", "other": "record"}
    assert [stages.carries_item(up, per, n) for n in up] == [False, True, True, False]


def test_children_per_record_and_per_item() -> None:
    rec = {"id": "p", "items": ["a?", "b?", "c?"], "context": "C", "completion": "a?\nb?\nc?"}
    assert stages.children(rec, "record") == 1
    assert stages.children(rec, "item") == 3
    assert stages.children({"id": "p"}, "item") == 0


def test_item_fields_give_the_element_the_passage_and_the_parent() -> None:
    rec = {"id": "p", "items": ["a?", "b?"], "context": "C", "completion": "a?\nb?", "x": 1}
    kept = stages.parent_fields(rec)
    assert kept == {"context": "C", "completion": "a?\nb?", "items": ["a?", "b?"]}
    f = stages.item_fields(kept, "p", 1, "item")
    assert f == {"context": "C", "completion": "a?\nb?", "parent": "p", "line": "2", "item": "b?"}
    # Per record, an item carried by the parent (an answer to a question) travels on.
    carried = stages.parent_fields({"context": "C", "completion": "ans", "item": "b?"})
    assert stages.item_fields(carried, "p2", 0, "record")["item"] == "b?"
    assert "item" not in stages.item_fields(
        stages.parent_fields({"context": "C"}), "p", 0, "record"
    )
    assert stages.child_name("questions", "p", 1) == "questions/p/1"
