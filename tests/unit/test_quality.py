"""synthd.quality: the report's numbers from plain lines."""

from __future__ import annotations

from array import array

from synthd import quality


def rec(i: int, completion: str, items: list[str] | None = None) -> dict[str, object]:
    line: dict[str, object] = {
        "id": f"r{i}",
        "context": "c" * (10 + i),
        "completion": completion,
        "created": 1_000_000 + 30 * i,
    }
    if items is not None:
        line["items"] = items
    return line


def test_counts_reasons_filters_openings_and_timeline() -> None:
    t = quality.Tally("q")
    for i in range(4):
        t.record(rec(i, f"Here are {i} things", ["As a rule?", "Why not?"]))
    t.record(rec(4, "As a coach I would"))
    t.reject({"reason": "too_short", "created": 1_000_000})
    t.reject({"reason": "near_duplicate", "similarity": 0.9, "created": 1_000_100})
    t.reject({"reason": "finish_reason:content_filter"})
    t.reject({"reason": "bad_json", "stage": "input", "created": 1_000_000})
    t.dead_letter({"kind": "timeout", "failed_at": 1_000_200.5})
    j = t.to_json()
    assert j["totals"] == {"records": 5, "rejects": 4, "dead": 1}
    assert j["pass_rate"] == round(5 / 9, 4)
    assert j["rejects_by_filter"] == {
        "min_chars": 1,
        "near_dedupe": 1,
        "reject_finish_reasons": 1,
        "input": 1,
    }
    assert j["near_duplicates"]["count"] == 1
    assert j["near_duplicates"]["share"] == round(1 / 6, 4)
    assert j["openings"][0] == ["Here are", 4]
    assert j["item_openings"][0][1] == 4
    assert j["lengths"]["items_per_record"]["p50"] == 2
    assert j["lengths"]["context_chars"]["count"] == 5
    tl = j["timeline"]
    assert tl["undated"] == 1
    assert sum(n for _, n in tl["records"]) == 5
    assert tl["bucket_s"] == 5  # 200 s of lines: the smallest round size under 120 buckets
    assert tl["dead"] == [[1_000_200, 1]]
    assert sum(n for _, n in tl["rejects"]) == 3
    assert len(j["samples"]["kept"]) == 5 and len(j["samples"]["rejected"]) == 4


def test_summary_percentiles_and_histogram() -> None:
    s = quality.summary(array("I", range(1, 101)))
    assert (s["count"], s["min"], s["max"], s["p50"], s["p90"]) == (100, 1, 100, 51, 91)
    assert sum(s["histogram"]["counts"]) == 100 and len(s["histogram"]["edges"]) == 21
    assert quality.summary(array("I")) == {"count": 0}
    same = quality.summary(array("I", [7, 7, 7]))
    assert same["histogram"]["counts"][0] == 3


def test_diversity_of_repeated_and_varied_texts() -> None:
    same = quality.diversity(["the cat sat"] * 10, 10)
    varied = quality.diversity([f"word{i} other{i} thing{i}" for i in range(10)], 10)
    assert same["distinct_1"] == 0.1 and varied["distinct_1"] == 1.0
    assert varied["distinct_2_per_record"] == 2.0


def test_reservoir_is_uniform_bounded_and_repeatable() -> None:
    a, b = quality.Reservoir(5, 1), quality.Reservoir(5, 1)
    for i in range(1000):
        a.add(i)
        b.add(i)
    assert a.items == b.items and len(a.items) == 5 and a.seen == 1000
    assert max(a.items) > 5  # later items do get in


def test_opening_takes_the_first_words() -> None:
    assert quality.opening("Here are some questions") == "Here are"
    assert quality.opening("  One") == "One"
    assert quality.opening("") == ""
