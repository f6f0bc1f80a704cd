"""synthd.judge: a judge's answer -> a kept verdict, a ``judge`` rejection or an invalid one."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from synthd import judge
from synthd.models import Accepted, Rejection


@dataclass(frozen=True)
class Settings:
    min_score: float = 6
    max_score: float = 10


def test_a_score_at_or_above_min_is_kept_with_its_verdict() -> None:
    text = '{"faithfulness": 8, "usefulness": 6, "score": 6, "reason": "fine"}'
    got = judge.verdict(text, Settings())
    assert isinstance(got, Accepted)
    assert got.data == {"faithfulness": 8, "usefulness": 6, "score": 6, "reason": "fine"}


def test_a_score_below_min_is_a_judge_rejection_with_the_score() -> None:
    got = judge.verdict('{"score": 3.5, "reason": "invents a date"}', Settings())
    assert got == Rejection("judge", "score 3.5 < 6: invents a date", 3.5)


@pytest.mark.parametrize(
    "text",
    [
        'Sure! ```json\n{"score": 7, "reason": "ok"}\n```',
        'My verdict: {"score": 7, "reason": "ok"}. Hope that helps.',
    ],
)
def test_json_in_a_fence_or_a_sentence_is_found(text: str) -> None:
    assert isinstance(judge.verdict(text, Settings()), Accepted)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("The answer seems fine.", "no JSON object"),
        ('{"score": 7, "reason": "ok"', "no JSON object"),
        ('{"score": 7 "reason": "ok"}', "not valid JSON"),
        ('{"score": "7", "reason": "ok"}', "no numeric score"),
        ('{"score": true, "reason": "ok"}', "no numeric score"),
        ('{"score": 7}', "no reason"),
        ('{"score": 70, "reason": "ok"}', "outside 0..10"),
        ('{"score": -1, "reason": "ok"}', "outside 0..10"),
    ],
)
def test_an_answer_that_is_no_verdict_is_judge_invalid(text: str, problem: str) -> None:
    got = judge.verdict(text, Settings())
    assert isinstance(got, Rejection)
    assert got.reason == "judge_invalid"
    assert problem in got.detail
