"""Dry-run's chunk preview, from plain passages: sizes at the chunker's characters per
token, the first two passages kept whole, cut only in the text report."""

from __future__ import annotations

from synthd.chunking import CHARS_PER_TOKEN
from synthd.chunkpreview import SHOWN_CHARS, ChunkedFile, render
from synthd.models import Source, WorkItem

SOURCE = Source(0, "c", "dry-run", "book.txt", "", "fp")


def passages(*texts: str) -> list[WorkItem]:
    out, start = [], 0
    for seq, text in enumerate(texts):
        span = (start, start + len(text))
        out.append(WorkItem(SOURCE, seq, 1, 0, {"context": text}, span=span, chunk=seq))
        start = span[1]
    return out


def test_sizes_round_up_and_only_the_first_two_passages_are_kept() -> None:
    texts = ("a" * (3 * CHARS_PER_TOKEN + 1), "b" * CHARS_PER_TOKEN, "c" * 10 * CHARS_PER_TOKEN)
    shown = ChunkedFile("book.txt")
    for item in passages(*texts):
        shown.add(item)
    # A passage one character over 3 tokens counts 4: the chunker's own measure, rounded up.
    assert (shown.passages, shown.tokens_min, shown.tokens_max, shown.tokens_total) == (
        3,
        1,
        10,
        15,
    )
    assert [text for _, text in shown.first] == list(texts[:2])
    assert shown.to_json()["tokens_mean"] == 5.0
    assert shown.to_json()["first"][1]["span"] == [len(texts[0]), len(texts[0]) + len(texts[1])]


def test_the_report_cuts_a_long_passage_and_keeps_its_lines_indented() -> None:
    long = "x" * (SHOWN_CHARS + 50)
    shown = ChunkedFile("book.txt")
    for item in passages("first line\nsecond line", long):
        shown.add(item)
    lines = "\n".join(render([shown])).splitlines()
    assert lines[0].startswith("-- chunks of book.txt: 2 passages of ~")
    assert "   | first line" in lines and "   | second line" in lines
    assert "   | " + "x" * SHOWN_CHARS + " [...]" in lines
    assert not any(len(line) > SHOWN_CHARS + 20 for line in lines), "the long passage is cut"
    assert shown.to_json()["first"][1]["text"] == long, "--json keeps the passage whole"


def test_a_file_with_no_passages_renders_nothing_but_its_header() -> None:
    assert render([]) == []
    (line,) = render([ChunkedFile("empty.txt")])
    assert line.startswith("-- chunks of empty.txt: 0 passages")
