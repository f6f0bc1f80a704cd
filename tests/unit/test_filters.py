"""synthd.filters: each step of the chain, on plain strings."""

from __future__ import annotations

import itertools
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthd.config_jobs import FiltersConfig
from synthd.filters import FilterChain
from synthd.models import Accepted, Rejection


def chain(schema: dict[str, Any] | None = None, **settings: Any) -> FilterChain:
    return FilterChain(FiltersConfig(**settings), schema)


def accepted(result: Accepted | Rejection) -> Accepted:
    assert isinstance(result, Accepted), result
    return result


def rejected(result: Accepted | Rejection) -> Rejection:
    assert isinstance(result, Rejection), result
    return result


# -- 1. finish reason and empty text -------------------------------------------


def test_content_filter_finish_is_rejected_whatever_the_text() -> None:
    r = rejected(chain().apply("A fine answer.", "content_filter"))
    assert r.reason == "finish_reason:content_filter"
    # It is checked before emptiness, so the reason stays precise.
    assert rejected(chain().apply(None, "content_filter")).reason == "finish_reason:content_filter"


def test_other_finish_reasons_pass_unless_configured() -> None:
    assert accepted(chain().apply("cut sho", "length")).text == "cut sho"
    assert accepted(chain().apply("done", None)).text == "done"
    strict = chain(reject_finish_reasons=("length", "content_filter"))
    assert rejected(strict.apply("cut sho", "length")).reason == "finish_reason:length"


@pytest.mark.parametrize("text", [None, "", "   ", "\n\t \n"])
def test_empty_or_missing_text_is_rejected(text: str | None) -> None:
    assert rejected(chain().apply(text, "stop")) == Rejection("empty")


# -- 2. strip and refusals ----------------------------------------------------------


def test_strip_trims_the_text() -> None:
    assert accepted(chain().apply("  \n hello \n ", "stop")).text == "hello"


def test_strip_can_be_turned_off() -> None:
    assert accepted(chain(strip=False).apply(" hello\n", "stop")).text == " hello\n"


def test_drop_if_matching_rejects_refusals_case_insensitively() -> None:
    c = chain(drop_if_matching="as an ai language model|i cannot help with")
    r = rejected(c.apply("Sorry. As an AI Language Model, I won't.", "stop"))
    assert r.reason == "drop_if_matching"
    assert r.detail == "As an AI Language Model"
    assert accepted(c.apply("An AI wrote this?", "stop")).text == "An AI wrote this?"


def test_drop_if_matching_sees_the_whole_text_before_lines_are_filtered() -> None:
    c = chain(split="lines", keep_lines_matching=r"\?$", drop_if_matching="I cannot help")
    r = rejected(c.apply("What is it?\nI cannot help with that.", "stop"))
    assert r.reason == "drop_if_matching"


# -- 3. split --------------------------------------------------------------------


def test_split_lines_drops_blank_lines_and_trims_each() -> None:
    a = accepted(chain(split="lines").apply("first \n\n   \n  second\r\nthird", "stop"))
    assert a.items == ["first", "second", "third"]
    assert a.text == "first\nsecond\nthird"


def test_split_paragraphs_on_blank_lines() -> None:
    text = "p1 line one\np1 line two\n\n  \np2 only\n\n\n\np3"
    a = accepted(chain(split="paragraphs").apply(text, "stop"))
    assert a.items == ["p1 line one\np1 line two", "p2 only", "p3"]
    assert a.text == "p1 line one\np1 line two\n\np2 only\n\np3"


def test_split_none_keeps_items_empty() -> None:
    a = accepted(chain().apply("a\nb", "stop"))
    assert a.items is None
    assert a.turns is None
    assert a.data is None


# -- 4. numbering and line patterns -------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "1. What next?",
        "1) What next?",
        "12. What next?",
        "3: What next?",
        "- What next?",
        "* What next?",
        "• What next?",
        "Q1: What next?",
        "Q12. What next?",
        "a) What next?",
        "(b) What next?",
        "   7.   What next?",
    ],
)
def test_strip_numbering(line: str) -> None:
    a = accepted(chain(split="lines", strip_numbering=True).apply(line, "stop"))
    assert a.items == ["What next?"]


def test_strip_numbering_removes_only_one_marker() -> None:
    a = accepted(chain(split="lines", strip_numbering=True).apply("1. - dash kept?", "stop"))
    assert a.items == ["- dash kept?"]


def test_strip_numbering_off_keeps_markers() -> None:
    a = accepted(chain(split="lines").apply("1. What next?", "stop"))
    assert a.items == ["1. What next?"]


def test_strip_numbering_leaves_a_leading_decimal_number_alone() -> None:
    c = chain(split="lines", strip_numbering=True)
    a = accepted(c.apply("1. Why did 3.5 million people move?\n3.5 million people moved?", "stop"))
    assert a.items == ["Why did 3.5 million people move?", "3.5 million people moved?"]


def test_keep_lines_matching_questions() -> None:
    c = chain(split="lines", strip_numbering=True, keep_lines_matching=r"\?\s*$")
    text = "Here are some questions:\n1. What happened?\n2. Why now?  \nThat is all."
    a = accepted(c.apply(text, "stop"))
    assert a.items == ["What happened?", "Why now?"]
    assert a.text == "What happened?\nWhy now?"


def test_drop_lines_matching() -> None:
    c = chain(split="lines", drop_lines_matching=r"^(Note|Sure)\b")
    a = accepted(c.apply("Sure, here you go\nWho?\nNote: fine\nWhen?", "stop"))
    assert a.items == ["Who?", "When?"]


def test_every_line_filtered_out_leaves_too_few_items() -> None:
    c = chain(split="lines", keep_lines_matching=r"\?$", min_items=1)
    r = rejected(c.apply("no questions\nat all", "stop"))
    assert r == Rejection("too_few_items", "0 < 1")


def test_every_line_filtered_out_without_min_items_is_too_short() -> None:
    c = chain(split="lines", keep_lines_matching=r"\?$")
    assert rejected(c.apply("no questions", "stop")).reason == "too_short"


# -- 5. counts and paragraphs ----------------------------------------------------------


def test_min_items() -> None:
    c = chain(split="lines", min_items=3)
    assert rejected(c.apply("a\nb", "stop")) == Rejection("too_few_items", "2 < 3")
    assert accepted(c.apply("a\nb\nc", "stop")).items == ["a", "b", "c"]


def test_max_items_keeps_the_first_ones() -> None:
    a = accepted(chain(split="lines", max_items=2).apply("a\nb\nc\nd", "stop"))
    assert a.items == ["a", "b"]
    assert a.text == "a\nb"


def test_single_paragraph() -> None:
    c = chain(single_paragraph=True)
    assert rejected(c.apply("one\n\ntwo", "stop")).reason == "not_single_paragraph"
    assert rejected(c.apply("one\n  \ntwo", "stop")).reason == "not_single_paragraph"
    assert accepted(c.apply("one\ntwo\n\n", "stop")).text == "one\ntwo"


# -- 6. JSON -------------------------------------------------------------------------


def test_require_json_parses_valid_json() -> None:
    a = accepted(chain(require_json=True).apply(' {"q": "Why?", "n": [1, 2]} ', "stop"))
    assert a.data == {"q": "Why?", "n": [1, 2]}
    assert a.text == '{"q": "Why?", "n": [1, 2]}'


def test_require_json_rejects_invalid_json() -> None:
    r = rejected(chain(require_json=True).apply('{"q": "Why?",}', "stop"))
    assert r.reason == "invalid_json"
    assert r.detail


@pytest.mark.parametrize(
    "text",
    ['```json\n{"q": 1}\n```', '```\n{"q": 1}\n```', '```json\n{"q": 1}```'],
)
def test_require_json_looks_inside_a_code_fence(text: str) -> None:
    assert accepted(chain(require_json=True).apply(text, "stop")).data == {"q": 1}


def test_require_json_an_unclosed_fence_without_body_is_invalid() -> None:
    assert rejected(chain(require_json=True).apply("```json", "stop")).reason == "invalid_json"


SCHEMA = {
    "type": "object",
    "required": ["question"],
    "properties": {"question": {"type": "string"}},
}


def test_json_schema_accepts_a_conforming_object() -> None:
    a = accepted(chain(SCHEMA, require_json=True).apply('{"question": "Why?"}', "stop"))
    assert a.data == {"question": "Why?"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [('{"answer": 1}', "'question' is a required property"), ('{"question": 3}', "not of type")],
)
def test_json_schema_rejects_with_the_problem(text: str, fragment: str) -> None:
    r = rejected(chain(SCHEMA, require_json=True).apply(text, "stop"))
    assert r.reason == "schema"
    assert fragment in r.detail


# -- 7. length -----------------------------------------------------------------------


def test_min_chars_and_max_chars_are_inclusive_bounds() -> None:
    c = chain(min_chars=3, max_chars=5)
    assert rejected(c.apply("ab", "stop")) == Rejection("too_short", "2 < 3 chars")
    assert accepted(c.apply("abc", "stop")).text == "abc"
    assert accepted(c.apply("abcde", "stop")).text == "abcde"
    assert rejected(c.apply("abcdef", "stop")) == Rejection("too_long", "6 > 5 chars")


def test_length_is_measured_after_filtering() -> None:
    c = chain(split="lines", keep_lines_matching=r"\?$", max_chars=10)
    a = accepted(c.apply("a very long line without a question mark\nWhy?", "stop"))
    assert a.text == "Why?"


# -- turns ---------------------------------------------------------------------------


def turns_chain(**settings: Any) -> FilterChain:
    return chain(split="turns", speakers=("User", "Assistant"), **settings)


def test_turns_alternating_are_accepted() -> None:
    text = "User: Hi there\nAssistant: Hello!\nuser:   How are you?\nASSISTANT: Fine."
    a = accepted(turns_chain().apply(text, "stop"))
    assert a.turns == [
        ("User", "Hi there"),
        ("Assistant", "Hello!"),
        ("User", "How are you?"),
        ("Assistant", "Fine."),
    ]
    assert a.text == "User: Hi there\nAssistant: Hello!\nUser: How are you?\nAssistant: Fine."


def test_turns_continuation_lines_are_joined() -> None:
    text = "User: line one\nline two\n\nAssistant: answer\n  more answer\n"
    a = accepted(turns_chain().apply(text, "stop"))
    assert a.turns == [("User", "line one\nline two"), ("Assistant", "answer\nmore answer")]


def test_turns_a_colon_inside_a_continuation_is_not_a_speaker() -> None:
    text = "User: plan?\nAssistant: here it is\nStep one: boil water"
    a = accepted(turns_chain().apply(text, "stop"))
    assert a.turns == [("User", "plan?"), ("Assistant", "here it is\nStep one: boil water")]


def test_turns_broken_alternation() -> None:
    r = rejected(turns_chain().apply("User: a\nAssistant: b\nAssistant: c", "stop"))
    assert r == Rejection("broken_alternation", "Assistant")


def test_turns_unknown_speaker_in_capitals() -> None:
    r = rejected(turns_chain().apply("User: a\nAssistant: b\nNARRATOR: c", "stop"))
    assert r == Rejection("unknown_speaker", "NARRATOR")


def test_turns_unknown_speaker_in_title_case() -> None:
    r = rejected(turns_chain().apply("User: a\nAssistant: b\nSystem: c", "stop"))
    assert r == Rejection("unknown_speaker", "System")


def test_turns_too_few() -> None:
    r = rejected(turns_chain(min_turns=3).apply("User: a\nAssistant: b", "stop"))
    assert r == Rejection("too_few_turns", "2 < 3")
    a = accepted(turns_chain(min_turns=2).apply("User: a\nAssistant: b", "stop"))
    assert a.turns == [("User", "a"), ("Assistant", "b")]


def test_turns_text_before_the_first_turn() -> None:
    r = rejected(turns_chain().apply("Sure! Here it is.\nUser: a\nAssistant: b", "stop"))
    assert r == Rejection("text_before_first_turn", "Sure! Here it is.")


def test_turns_an_empty_turn() -> None:
    assert rejected(turns_chain().apply("User:\nAssistant: b", "stop")) == Rejection("empty_turn")


def test_turns_a_label_line_may_start_the_text_after_blank_lines() -> None:
    a = accepted(turns_chain().apply("\n\nUser: a\nAssistant: b", "stop"))
    assert a.turns == [("User", "a"), ("Assistant", "b")]


def test_turns_are_checked_for_length_too() -> None:
    r = rejected(turns_chain(max_chars=10).apply("User: a\nAssistant: b", "stop"))
    assert r.reason == "too_long"


# -- property tests: arbitrary input; strategies mix random data with the tokens that
# matter to each parser, so the interesting paths are reached in a modest number of examples.

FUZZ = settings(max_examples=150, deadline=None)

# -- the filter chain --------------------------------------------------------------------

TEXT_TOKENS = [
    "\n",
    "\n\n",
    " ",
    "?",
    "User: ",
    "user:",
    "Assistant: ",
    "NARRATOR: ",
    "Note: ",
    "1. ",
    "2) ",
    "- ",
    "Q3: ",
    "(a) ",
    "```json\n",
    "```",
    "{",
    "}",
    "[",
    "]",
    '"q"',
    ":",
    ",",
    "1",
    "null",
    "As an AI language model",
    "\ufffd",
    "\ud800",
    "\u2028",
    "é",
]
text_strategy = st.one_of(
    st.none(),
    st.text(max_size=200),
    st.lists(st.sampled_from(TEXT_TOKENS) | st.text(max_size=6), max_size=40).map("".join),
)
finish_strategy = st.one_of(
    st.none(), st.sampled_from(["stop", "length", "content_filter"]), st.text(max_size=10)
)

FUZZ_SCHEMA = {"type": "object", "required": ["q"], "properties": {"q": {"type": "string"}}}
CHAINS: dict[str, tuple[FiltersConfig, dict[str, Any] | None]] = {
    "lines": (
        FiltersConfig(
            split="lines",
            strip_numbering=True,
            keep_lines_matching=r"\?\s*$",
            drop_lines_matching=r"^Note",
            drop_if_matching=r"as an ai language model",
            min_items=1,
            max_items=3,
            max_chars=120,
        ),
        None,
    ),
    "paragraphs": (FiltersConfig(split="paragraphs", min_items=2, max_chars=150), None),
    "turns": (FiltersConfig(split="turns", speakers=("User", "Assistant"), min_turns=2), None),
    "json": (FiltersConfig(require_json=True), FUZZ_SCHEMA),
    "single_paragraph": (FiltersConfig(single_paragraph=True, min_chars=3), None),
}


@FUZZ
@given(
    name=st.sampled_from(sorted(CHAINS)),
    text=text_strategy,
    finish_reason=finish_strategy,
)
def test_filters_never_raise_and_keep_their_promises(
    name: str, text: str | None, finish_reason: str | None
) -> None:
    cfg, schema = CHAINS[name]
    result = FilterChain(cfg, schema).apply(text, finish_reason)

    assert isinstance(result, Accepted | Rejection)
    if isinstance(result, Rejection):
        assert result.reason
        return
    assert text is not None
    assert finish_reason != "content_filter"
    assert len(result.text) >= cfg.min_chars
    assert cfg.max_chars is None or len(result.text) <= cfg.max_chars
    assert result.text == result.text.strip()
    if name == "lines":
        assert result.items is not None
        assert 1 <= len(result.items) <= 3
        assert result.text == "\n".join(result.items)
        for it in result.items:
            assert re.search(r"\?\s*$", it)
            assert not it.startswith("Note")
        assert not re.search(r"as an ai language model", text, re.IGNORECASE)
    elif name == "paragraphs":
        assert result.items is not None and len(result.items) >= 2
        assert result.text == "\n\n".join(result.items)
    elif name == "turns":
        assert result.turns is not None and len(result.turns) >= 2
        speakers = [s for s, _ in result.turns]
        assert set(speakers) <= {"User", "Assistant"}
        assert all(a != b for a, b in itertools.pairwise(speakers))
        assert all(said for _, said in result.turns)
    elif name == "json":
        assert isinstance(result.data, dict) and isinstance(result.data.get("q"), str)
        # The data is what the text (inside any fence) says.
        body = result.text
        if body.startswith("```"):
            body = body.split("\n", 1)[1].rsplit("```", 1)[0]
        assert orjson.loads(body) == result.data
    elif name == "single_paragraph":
        assert not re.search(r"\n\s*\n", result.text)
