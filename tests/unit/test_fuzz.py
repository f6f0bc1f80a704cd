"""Property tests: the reader and the filter chain on arbitrary input.

Strategies mix raw random data with the tokens that matter to each parser
(newlines, BOMs, NULs, JSON punctuation, speaker labels, fences), so the
interesting paths are reached within a modest number of examples.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthd.config import FiltersConfig
from synthd.errors import InputError
from synthd.filters import FilterChain
from synthd.items import Reader
from synthd.models import Accepted, BadLine, Rejection, Source, WorkItem

FUZZ = settings(max_examples=150, deadline=None)

# -- the reader ------------------------------------------------------------------------

BYTE_TOKENS = [
    b"\n",
    b"\r\n",
    b"\r",
    b" ",
    b"\t",
    b"\x00",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xc3",
    b"\xef\xbf\xbd",
    b"{",
    b"}",
    b"[1]",
    b'"text"',
    b'"x"',
    b":",
    b",",
    b'{"text": "hi"}',
    b'{"text": "hi", "n": 1}',
    b'{"body": 1}',
    b'{"text": 5}',
    b"null",
    b"word",
    b"\xc2\xa0",
]
token_run = st.lists(st.sampled_from(BYTE_TOKENS) | st.binary(max_size=8), max_size=12).map(
    b"".join
)
data_strategy = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(BYTE_TOKENS) | st.binary(max_size=8), max_size=60).map(b"".join),
    # Several lines, each a run of tokens: what the line readers are about.
    st.lists(token_run, min_size=2, max_size=10).map(b"\n".join),
)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def read_all(path: Path, kind: str, max_line_bytes: int, src: Source) -> list[WorkItem | BadLine]:
    with open(path, "rb") as f:
        f.seek(src.resume_offset)
        return list(Reader(src, f, kind, "text", max_line_bytes))


@FUZZ
@given(
    data=data_strategy,
    kind=st.sampled_from(["lines", "jsonl", "file"]),
    max_line_bytes=st.integers(min_value=1, max_value=64),
)
def test_reader_never_fails_but_with_input_error(
    fuzz_dir: Path, data: bytes, kind: str, max_line_bytes: int
) -> None:
    path = fuzz_dir / f"in.{kind}"
    path.write_bytes(data)
    src = Source(1, "j", "c", path.name, str(path), "fp")
    try:
        things = read_all(path, kind, max_line_bytes, src)
    except InputError as e:
        assert e.reason in {"binary", "empty", "too_large"}
        return

    assert [t.seq for t in things] == list(range(len(things)))
    ends = [t.end for t in things]
    assert all(a < b for a, b in itertools.pairwise([0, *ends]))
    assert all(end <= len(data) for end in ends)
    lines = [t.line for t in things]
    assert all(a < b for a, b in itertools.pairwise([0, *lines]))
    for t in things:
        assert t.source == src
        if isinstance(t, WorkItem):
            assert t.fields["source"] == path.name
            assert t.fields["line"] == str(t.line)
            assert isinstance(t.fields["context"], str)
        else:
            assert t.reason in {"line_too_long", "invalid_json", "not_an_object", "missing_text"}
    if kind == "file":
        assert len(things) == 1
        return

    # Resuming after any value reads exactly what followed it.
    for k, t in enumerate(things):
        resumed = Source(1, "j", "c", path.name, str(path), "fp", t.seq + 1, t.line, t.end)
        rest = read_all(path, kind, max_line_bytes, resumed)
        assert [(r.seq, r.line, r.end) for r in rest] == [
            (u.seq, u.line, u.end) for u in things[k + 1 :]
        ]


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

SCHEMA = {"type": "object", "required": ["q"], "properties": {"q": {"type": "string"}}}
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
    "json": (FiltersConfig(require_json=True), SCHEMA),
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
