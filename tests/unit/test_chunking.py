"""The chunker: passages that cover the text in order, sized, cut on boundaries, resumable."""

from __future__ import annotations

import io
import re
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthd.chunking import CHARS_PER_TOKEN, Chunk, Resume, blocks_of, chars_before, chunks

BOOK = Path(__file__).resolve().parents[2] / "examples" / "long" / "kjv-genesis-to-ruth.txt"


def cut(text: str, tokens: int, overlap: int = 0, block: int = 1 << 16) -> list[Chunk]:
    return list(chunks(blocks_of(io.BytesIO(text.encode()), block), tokens, overlap))


def assert_covers(text: str, got: list[Chunk], tokens: int, overlap: int) -> None:
    """In order, no gap, no overlap beyond ``overlap``, sizes within 10 % but the last."""
    size, most = tokens * CHARS_PER_TOKEN, overlap * CHARS_PER_TOKEN
    assert got[0].start == 0 or not text[: got[0].start].strip()
    assert not text[got[-1].end :].strip()
    for i, c in enumerate(got):
        assert c.index == i
        assert c.text == text[c.start : c.end].strip()
        if i + 1 < len(got):
            assert 0.9 * size <= c.end - c.start <= size, (i, c.end - c.start)
            nxt = got[i + 1]
            assert nxt.start == c.next_start
            assert c.end - most <= nxt.start <= c.end, "a gap, or more overlap than asked"
            assert nxt.start > c.start
        else:
            assert c.end - c.start <= size
    byte_of = {c.next_start: c.next_byte for c in got}
    for char, byte in byte_of.items():
        assert len(text[:char].encode()) == byte


@pytest.mark.parametrize("overlap", [0, 50])
def test_a_1mb_book_is_covered_in_order(overlap: int) -> None:
    text = BOOK.read_text()
    assert len(text) > 1_000_000
    got = cut(text, 1000, overlap)
    assert len(got) > 200
    assert_covers(text, got, 1000, overlap)
    if overlap == 0:
        assert "".join(text[c.start : c.end] for c in got) == text
    else:
        assert any(c.next_start < c.end for c in got)


def test_passages_end_on_paragraphs_when_they_can() -> None:
    text = BOOK.read_text()[:200_000]
    got = cut(text, 500)
    ends = [text[: c.end].endswith("\n\n") for c in got[:-1]]
    assert sum(ends) / len(ends) > 0.9


def test_sentences_then_words_when_there_is_no_paragraph() -> None:
    sentences = "The cat sat on the mat and looked at the door. " * 400  # one paragraph
    got = cut(sentences, 100)
    assert all(sentences[: c.end].endswith(". ") for c in got[:-1])
    words = "alpha beta gamma delta epsilon " * 400  # no sentence end at all
    got = cut(words, 100)
    for c in got[:-1]:
        assert words[c.end - 1] == " " and words[c.end] != " ", "cut inside a word"
    assert_covers(words, got, 100, 0)


def test_never_inside_a_word_with_long_words() -> None:
    text = " ".join(f"word{i:05d}" * 9 for i in range(2000))  # 90-character words
    for c in cut(text, 100)[:-1]:
        assert text[c.end - 1] == " ", "cut inside a word"


def test_a_word_longer_than_a_passage_is_cut_where_the_window_ends() -> None:
    text = "x" * 5000
    got = cut(text, 100)
    assert [c.end - c.start for c in got] == [400] * 12 + [200]


def test_resuming_after_any_passage_gives_the_same_rest() -> None:
    text = BOOK.read_text()[:300_000]
    raw = text.encode()
    whole = cut(text, 300, 40)
    for k in (1, 7, len(whole) - 1):
        c = whole[k - 1]
        assert chars_before(io.BytesIO(raw), c.next_byte) == c.next_start
        f = io.BytesIO(raw)
        f.seek(c.next_byte)
        rest = list(chunks(blocks_of(f, 4096), 300, 40, Resume(k, c.next_start, c.next_byte)))
        assert rest == whole[k:]


def test_invalid_bytes_keep_offsets_exact_and_show_as_replacement() -> None:
    raw = ("héllo wörld. " * 100).encode() + b"\xff\xfe bad " + ("more text. " * 200).encode()
    got = list(chunks(blocks_of(io.BytesIO(raw), 7), 50))
    assert sum(c.replaced for c in got) == 2
    assert any("\ufffd" in c.text for c in got)
    assert got[-1].next_byte == len(raw)
    for c in got:
        assert "\udcff" not in c.text


def test_white_space_alone_makes_no_passage() -> None:
    assert cut("", 10) == []
    assert cut(" \n\n \t\n", 10) == []
    got = cut("\n\n   one short passage   \n\n", 10)
    assert [c.text for c in got] == ["one short passage"]


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30),
        min_size=1,
        max_size=400,
    ),
    seps=st.sampled_from([" ", "\n", "\n\n", ". ", "? "]),
    tokens=st.integers(5, 60),
    overlap=st.integers(0, 20),
    block=st.integers(1, 300),
)
def test_any_text_is_covered(
    words: list[str], seps: str, tokens: int, overlap: int, block: int
) -> None:
    text = seps.join(words)
    got = cut(text, tokens, overlap, block)
    size = tokens * CHARS_PER_TOKEN
    assert "".join(c.text for c in got).split() == [] or got
    pos = 0
    for c in got:
        assert c.start >= pos or c.start >= c.end - size
        assert c.end - c.start <= size
        assert not text[pos : c.start].strip() or c.start < pos, "text left out"
        pos = max(pos, c.end)
        assert len(text[: c.next_start].encode("utf-8", "surrogatepass")) == c.next_byte
    assert not text[pos:].strip()
    assert all(not re.fullmatch(r"\s*", c.text) for c in got)


class _Endless(io.RawIOBase):
    """``size`` bytes of text made as they are read: the test never holds them either."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.line = b"A sentence about the harbour, the tide and the boats. " * 7 + b"\n\n"

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.left)
        reps = self.line * (n // len(self.line) + 1)
        b[:n] = reps[:n]
        self.left -= n
        return n


def test_a_long_text_is_never_held_whole() -> None:
    size = 12_000_000
    tracemalloc.start()
    try:
        count = last = 0
        for c in chunks(blocks_of(io.BufferedReader(_Endless(size))), 1000, 50):
            count, last = count + 1, c.next_byte
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert last == size and count > 2800
    assert peak < 2_000_000, f"{peak / 1e6:.1f} MB held for a {size / 1e6:.0f} MB text"


def test_text_without_spaces_is_cut_after_its_sentences() -> None:
    text = (
        "\u4eca\u65e5\u306f\u96e8\u304c\u964d\u3063\u305f\u3002" * 300
    )  # "It rained today." in Japanese
    got = cut(text, 20)
    assert all(text[: c.end].endswith("\u3002") for c in got)
    assert "".join(text[c.start : c.end] for c in got) == text


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
        min_size=1,
        max_size=300,
    ),
    seps=st.lists(st.sampled_from([" ", "\n", "\n\n", ". ", "\u3002"]), min_size=1, max_size=4),
    tokens=st.integers(3, 40),
    overlap=st.integers(0, 20),
    block=st.integers(1, 200),
    where=st.floats(0, 1),
)
def test_resuming_anywhere_cuts_what_one_run_cut(
    words: list[str], seps: list[str], tokens: int, overlap: int, block: int, where: float
) -> None:
    text = "".join(w + seps[i % len(seps)] for i, w in enumerate(words))
    raw = text.encode()
    whole = list(chunks(blocks_of(io.BytesIO(raw), block), tokens, overlap))
    if not whole:
        return
    k = int(where * len(whole))
    at = Resume() if k == 0 else Resume(k, whole[k - 1].next_start, whole[k - 1].next_byte)
    f = io.BytesIO(raw)
    assert chars_before(f, at.byte, block) == at.char
    rest = list(chunks(blocks_of(f, block), tokens, overlap, at))
    assert rest == whole[k:]
