"""synthd.sim.content: token counting, cutting, prompt reading and each mode's shape.

Shares of defective answers are measured over fixed seeds, so they are exact and repeatable;
the bounds only check that each share is near its nominal value.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from pathlib import Path

import pytest

from synthd.sim import content
from synthd.sim.content import PromptInfo

SAMPLES = 1000


def _answers(info: PromptInfo, n: int = SAMPLES) -> list[str]:
    digest = content.request_digest(0, b"x")
    return [content.generate(info, content.choice_rng(digest, i)) for i in range(n)]


@pytest.mark.parametrize(
    ("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)]
)
def test_count_tokens_is_ceil_of_quarter_length(text: str, tokens: int) -> None:
    assert content.count_tokens(text) == tokens


def test_chat_prompt_tokens_adds_four_per_message() -> None:
    assert content.chat_prompt_tokens(["abcd", "abcdefgh", ""]) == (1 + 4) + (2 + 4) + (0 + 4)


class TestCut:
    def test_length(self) -> None:
        assert content.cut("abcdefghij", 2, ()) == ("abcdefgh", "length")

    def test_natural_end(self) -> None:
        assert content.cut("abc", 2, ()) == ("abc", "stop")

    def test_earliest_stop_wins_and_is_excluded(self) -> None:
        assert content.cut("one two three", 100, ["three", "two"]) == ("one ", "stop")

    def test_stop_at_start_gives_empty_text(self) -> None:
        assert content.cut("USER: hi", 100, ["USER:"]) == ("", "stop")

    def test_stop_beyond_max_tokens_is_not_reached(self) -> None:
        # "STOP" starts at char 8 but ends past the 8-char (2-token) limit.
        assert content.cut("abcdefghSTOP", 2, ["STOP"]) == ("abcdefgh", "length")

    def test_cut_text_has_at_most_max_tokens(self) -> None:
        text, _ = content.cut("x" * 1001, 7, ())
        assert content.count_tokens(text) == 7


@pytest.mark.parametrize(
    ("prompt", "mode"),
    [
        ("Write five QUESTIONS about this", "questions"),
        ("Write a conversation between USER: and COACH:", "conversation"),
        ("A chat between a client and a coach", "conversation"),
        ("Write a Dialogue", "conversation"),
        ("Answer in JSON", "json"),
        ("Summarise the text", "text"),
        # First rule wins: a JSON list of questions is a questions prompt.
        ("Return a JSON list of questions", "questions"),
    ],
)
def test_detect_mode(prompt: str, mode: str) -> None:
    assert content.detect_mode(prompt) == mode


@pytest.mark.parametrize(
    ("prompt", "speakers"),
    [
        ("Write a chat. CLIENT: hello\nMAYA: hi\nCLIENT: bye", ("CLIENT", "MAYA")),
        ("USER: a\nUSER: b\nCOACH: c", ("USER", "COACH")),
        ("Only COACH: appears", ("COACH", "USER")),
        ("Only USER: appears", ("USER", "ASSISTANT")),
        ("no names here: none", ("USER", "ASSISTANT")),
    ],
)
def test_speaker_names(prompt: str, speakers: tuple[str, str]) -> None:
    assert content.speaker_names(prompt) == speakers


def test_context_words_are_distinct_lowercase_content_words() -> None:
    words = content.context_words(
        "Write questions about Photosynthesis: photosynthesis and LIGHT, sun"
    )
    assert words == ("photosynthesis",)  # "LIGHT" is a shout, "sun" too short, the rest stop words


def test_same_rng_same_text_and_indexes_differ() -> None:
    info = content.analyse("Write about gardens and tomatoes")
    digest = content.request_digest(1, b"{}")
    first = content.generate(info, content.choice_rng(digest, 0))
    assert first == content.generate(info, content.choice_rng(digest, 0))
    assert first != content.generate(info, content.choice_rng(digest, 1))
    assert first != content.generate(info, content.choice_rng(content.request_digest(2, b"{}"), 0))


def test_questions_shape() -> None:
    info = content.analyse("Write questions about photosynthesis, chlorophyll and sunlight")
    assert info.mode == "questions"
    few = lines_without_mark = total_lines = 0
    for answer in _answers(info):
        lines = answer.split("\n")
        numbered = [ln for ln in lines if re.match(r"^\d+\. ", ln)]
        others = [ln for ln in lines if ln and ln not in numbered]
        assert len(others) <= 1 and all("?" not in ln for ln in others)  # the intro
        assert [int(ln.split(".")[0]) for ln in numbered] == list(range(1, len(numbered) + 1))
        assert 1 <= len(numbered) <= 8
        few += len(numbered) < 3
        total_lines += len(numbered)
        lines_without_mark += sum(not ln.endswith("?") for ln in numbered)
        assert any(w in answer for w in info.words)
    assert 0.06 < few / SAMPLES < 0.14
    assert 0.11 < lines_without_mark / total_lines < 0.19


def test_conversation_shape_and_defects() -> None:
    info = content.analyse("Write a conversation between CLIENT: and MAYA: about marathons")
    assert (info.mode, info.speakers) == ("conversation", ("CLIENT", "MAYA"))
    repeated = third = 0
    for answer in _answers(info):
        turns = [ln for ln in answer.split("\n") if ln]
        speakers = [t.split(":", 1)[0] for t in turns]
        assert 6 <= len(turns) <= 14
        assert speakers[0] == "CLIENT"
        repeated += any(a == b for a, b in itertools.pairwise(speakers))
        third += any(s not in info.speakers for s in speakers)
    assert 0.02 < repeated / SAMPLES < 0.09
    assert 0.01 < third / SAMPLES < 0.06


def test_conversation_is_cut_by_a_speaker_stop_sequence() -> None:
    info = content.analyse("A dialogue. COACH: and USER:")
    for answer in _answers(info, 50):
        text, finish = content.cut(answer, 1000, ["USER:"])
        assert finish == "stop" and "USER:" not in text
        assert text.startswith("COACH:")  # usually one turn; two when the alternation breaks


def test_json_shape_and_invalid_share() -> None:
    info = content.analyse("Return JSON describing the economy")
    invalid = 0
    for answer in _answers(info):
        try:
            obj = json.loads(answer)
        except json.JSONDecodeError:
            invalid += 1
            continue
        assert set(obj) == {"summary", "questions", "score"}
        assert isinstance(obj["questions"], list) and 1 <= obj["score"] <= 10
    assert 0.06 < invalid / SAMPLES < 0.14


def test_text_shape_and_refusals() -> None:
    info = content.analyse("Tell me about gardens and tomatoes")
    assert info.mode == "text"
    refusals = 0
    for answer in _answers(info):
        assert 1 <= len(answer.split("\n\n")) <= 3
        refusals += answer.startswith(("As an AI language model", "I'm sorry"))
    assert 0.02 < refusals / SAMPLES < 0.08


def test_analyse_mode_override() -> None:
    assert content.analyse("questions please", "json").mode == "json"


# -- a pipeline's stages: answers and a judge's verdicts ------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_stage_prompts_are_read_as_answer_and_judge() -> None:
    assert content.detect_mode((ROOT / "prompts" / "answer.txt").read_text()) == "answer"
    assert content.detect_mode((ROOT / "prompts" / "qa_judge.txt").read_text()) == "judge"
    for other in ("questions.txt", "analysis.txt", "coach.txt"):
        assert content.detect_mode((ROOT / "prompts" / other).read_text()) not in {
            "answer",
            "judge",
        }


def test_answers_sometimes_say_the_passage_does_not_say() -> None:
    texts = _answers(content.analyse("Answer the question: harbour fishing boats", "answer"))
    not_said = [t for t in texts if re.search(r"(?i)passage does not say|not stated", t)]
    assert 0.10 < len(not_said) / SAMPLES < 0.20
    assert all(t.endswith(".") for t in texts)


def test_verdicts_are_json_with_score_and_reason_and_some_are_low() -> None:
    texts = _answers(content.analyse("Rate faithfulness of the answer", "judge"))
    verdicts = []
    for t in texts:
        with contextlib.suppress(json.JSONDecodeError):
            verdicts.append(json.loads(t))
    assert 0.95 < len(verdicts) / SAMPLES < 0.99, "a few are not JSON"
    assert all(v["score"] == min(v["faithfulness"], v["usefulness"]) for v in verdicts)
    assert all(isinstance(v["reason"], str) and v["reason"] for v in verdicts)
    low = [v for v in verdicts if v["score"] <= 4]
    assert 0.15 < len(low) / len(verdicts) < 0.25
