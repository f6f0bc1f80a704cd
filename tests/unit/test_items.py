"""synthd.items: real input files -> WorkItems and BadLines, with exact resume offsets."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthd.errors import InputError
from synthd.items import SNIFF_BYTES, Reader, kind_of
from synthd.models import BadLine, Source, WorkItem

MAX = 4_000_000


def source(path: Path, seq: int = 0, line: int = 0, offset: int = 0) -> Source:
    return Source(7, "job", "c1", path.name, str(path), "fp", seq, line, offset)


def read(
    path: Path,
    kind: str,
    max_line_bytes: int = MAX,
    src: Source | None = None,
    text_field: str = "text",
) -> tuple[list[WorkItem | BadLine], Reader]:
    """Read a file the way the daemon does: open, seek to the resume offset, iterate."""
    src = src or source(path)
    with open(path, "rb") as f:
        f.seek(src.resume_offset)
        reader = Reader(src, f, kind, text_field, max_line_bytes)
        return list(reader), reader


def items_only(things: list[WorkItem | BadLine]) -> list[WorkItem]:
    assert all(isinstance(t, WorkItem) for t in things), things
    return [t for t in things if isinstance(t, WorkItem)]


def write(tmp_path: Path, data: bytes, name: str = "in.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- file mode ---------------------------------------------------------------------


def test_file_mode_gives_one_stripped_item(tmp_path: Path) -> None:
    data = b"\n  A long passage\n\nwith two paragraphs.  \n\n"
    path = write(tmp_path, data)
    (item,) = items_only(read(path, "file")[0])
    assert item.seq == 0
    assert item.line == 1
    assert item.end == len(data)
    assert item.source == source(path)
    assert item.fields == {
        "context": "A long passage\n\nwith two paragraphs.",
        "source": "in.txt",
        "line": "1",
    }
    assert item.meta is None


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n  ", "\ufeff\n ".encode()])
def test_file_mode_empty_is_refused(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(InputError) as exc:
        read(write(tmp_path, data), "file")
    assert exc.value.reason == "empty"


def test_file_mode_binary_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, b"PK\x03\x04\x00\x00binary stuff")
    with pytest.raises(InputError) as exc:
        read(path, "file")
    assert exc.value.reason == "binary"
    assert "NUL" in exc.value.detail


def test_file_mode_too_large_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, b"x" * 11)
    with pytest.raises(InputError) as exc:
        read(path, "file", max_line_bytes=10)
    assert exc.value.reason == "too_large"
    assert "10 bytes" in exc.value.detail


def test_file_mode_at_the_size_limit_is_read(tmp_path: Path) -> None:
    (item,) = items_only(read(write(tmp_path, b"x" * 10), "file", max_line_bytes=10)[0])
    assert item.fields["context"] == "x" * 10
    assert item.end == 10


def test_file_mode_utf8_bom_is_stripped(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffHéllo wörld".encode())
    (item,) = items_only(read(path, "file")[0])
    assert item.fields["context"] == "Héllo wörld"


def test_file_mode_white_space_after_a_bom_is_stripped(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeff\nHello\n".encode())
    (item,) = items_only(read(path, "file")[0])
    assert item.fields["context"] == "Hello"


def test_file_mode_is_done_once_resumed_past_its_item(tmp_path: Path) -> None:
    path = write(tmp_path, b"hello")
    assert read(path, "file", src=source(path, seq=1, line=1, offset=5))[0] == []


# -- lines mode --------------------------------------------------------------------


LINES = b"alpha\n\n   \nbeta  \r\n\t\ngamma delta\nlast without newline"


def test_lines_mode_skips_blank_lines_and_keeps_physical_line_numbers(tmp_path: Path) -> None:
    items = items_only(read(write(tmp_path, LINES), "lines")[0])
    assert [i.seq for i in items] == [0, 1, 2, 3]
    assert [i.line for i in items] == [1, 4, 6, 7]
    assert [i.fields["topic"] for i in items] == [
        "alpha",
        "beta",
        "gamma delta",
        "last without newline",
    ]
    for i in items:
        assert i.fields["context"] == i.fields["topic"]
        assert i.fields["source"] == "in.txt"
        assert i.fields["line"] == str(i.line)


def test_lines_mode_end_offsets_are_exact(tmp_path: Path) -> None:
    items = items_only(read(write(tmp_path, LINES), "lines")[0])
    ends = [i.end for i in items]
    assert ends == [
        LINES.index(b"\n") + 1,
        LINES.index(b"\r\n") + 2,
        LINES.index(b"delta\n") + 6,
        len(LINES),
    ]
    # The byte just before each end (but the last) is the newline ending the item's line.
    for i in items[:-1]:
        assert LINES[i.end - 1 : i.end] == b"\n"


def test_seeking_to_an_end_and_reading_again_gives_exactly_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, LINES)
    everything = read(path, "lines")[0]
    for k, item in enumerate(everything):
        resumed = source(path, seq=item.seq + 1, line=item.line, offset=item.end)
        assert read(path, "lines", src=resumed)[0] == [
            WorkItem(resumed, t.seq, t.line, t.end, t.fields, t.meta)
            for t in items_only(everything[k + 1 :])
        ]


def test_lines_mode_binary_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, b"one\ntwo\x00\nthree\n")
    with pytest.raises(InputError) as exc:
        read(path, "lines")
    assert exc.value.reason == "binary"


def test_lines_mode_only_sniffs_the_head(tmp_path: Path) -> None:
    # A NUL past the first 8 KiB is not a sign of a binary file; the line is read.
    head = b"a\n" * (SNIFF_BYTES // 2)
    path = write(tmp_path, head + b"b\x00c\n")
    items = items_only(read(path, "lines")[0])
    assert len(items) == SNIFF_BYTES // 2 + 1
    assert items[-1].fields["topic"] == "b\x00c"


def test_lines_mode_utf8_bom_is_stripped(tmp_path: Path) -> None:
    items = items_only(read(write(tmp_path, "\ufeffone\ntwo\n".encode()), "lines")[0])
    assert [i.fields["topic"] for i in items] == ["one", "two"]
    assert items[0].end == 3 + 4  # the BOM's bytes count towards the offset


def test_a_line_of_only_a_bom_is_blank(tmp_path: Path) -> None:
    items = items_only(read(write(tmp_path, "\ufeff\nonly\n".encode()), "lines")[0])
    assert [(i.seq, i.line, i.fields["topic"]) for i in items] == [(0, 2, "only")]


def test_a_line_of_unicode_white_space_is_blank(tmp_path: Path) -> None:
    items = items_only(read(write(tmp_path, "a\n\u00a0\u3000\nb\n".encode()), "lines")[0])
    assert [i.fields["topic"] for i in items] == ["a", "b"]


def test_invalid_utf8_is_replaced_and_counted(tmp_path: Path) -> None:
    # One real invalid byte; the U+FFFD already in the input is not a replacement.
    data = b"caf\xe9 \xef\xbf\xbd\nclean\n\xff\xfe twice\n"
    items, reader = read(write(tmp_path, data), "lines")
    assert [i.fields["topic"] for i in items_only(items)] == [
        "caf\ufffd \ufffd",
        "clean",
        "\ufffd\ufffd twice",
    ]
    assert reader.replaced == 3


def test_valid_utf8_counts_no_replacement(tmp_path: Path) -> None:
    _, reader = read(write(tmp_path, "naïve ☃ \ufffd\n".encode()), "lines")
    assert reader.replaced == 0


def test_a_line_too_long_is_set_aside_and_the_next_line_still_read(tmp_path: Path) -> None:
    data = b"short\n" + b"x" * 100 + b"\nafter\n" + b"y" * 50
    things, _ = read(write(tmp_path, data), "lines", max_line_bytes=16)
    assert [t.seq for t in things] == [0, 1, 2, 3]
    assert [t.line for t in things] == [1, 2, 3, 4]
    first, long1, after, long2 = things
    assert isinstance(first, WorkItem) and first.fields["topic"] == "short"
    assert isinstance(long1, BadLine)
    assert long1.reason == "line_too_long"
    assert "line 2" in long1.detail
    assert long1.end == 6 + 101  # past the long line's newline
    assert isinstance(after, WorkItem) and after.fields["topic"] == "after"
    assert after.end == 6 + 101 + 6
    assert isinstance(long2, BadLine) and long2.end == len(data)


def test_a_line_exactly_at_the_limit_is_read(tmp_path: Path) -> None:
    # The limit is on the line's content; its newline does not count.
    data = b"x" * 16 + b"\n" + b"y" * 17 + b"\n"
    things, _ = read(write(tmp_path, data), "lines", max_line_bytes=16)
    first, second = things
    assert isinstance(first, WorkItem) and first.fields["topic"] == "x" * 16
    assert isinstance(second, BadLine) and second.reason == "line_too_long"
    assert second.end == len(data)


def test_kind_of_prefers_the_jsonl_suffix() -> None:
    assert kind_of("a.jsonl", "lines") == "jsonl"
    assert kind_of("a.ndjson", "file") == "jsonl"
    assert kind_of("a.txt", "lines") == "lines"
    assert kind_of("a.json", "file") == "file"


# -- jsonl mode --------------------------------------------------------------------


JSONL = (
    b"\n".join(
        [
            b'{"text": "first", "lang": "en", "n": 3, "tags": ["a", "b"], "ok": true}',
            b'{"text": "broken",',
            b"[1, 2, 3]",
            b'{"body": "no text field"}',
            b"",
            b'{"text": "   "}',
            b'{"text": 42}',
            b'{"text": "plain"}',
        ]
    )
    + b"\n"
)


def test_jsonl_good_and_bad_lines(tmp_path: Path) -> None:
    things, _ = read(write(tmp_path, JSONL, "in.jsonl"), "jsonl")
    assert [t.seq for t in things] == [0, 1, 2, 3, 4, 5, 6]
    assert [t.line for t in things] == [1, 2, 3, 4, 6, 7, 8]
    kinds = [t.reason if isinstance(t, BadLine) else "item" for t in things]
    assert kinds == [
        "item",
        "invalid_json",
        "not_an_object",
        "missing_text",
        "missing_text",
        "missing_text",
        "item",
    ]
    assert things[1].detail.startswith("line 2: ")  # type: ignore[union-attr]
    assert "'text'" in things[3].detail  # type: ignore[union-attr]
    # Every value carries its end offset, bad lines included: a resume skips them too.
    assert [t.end for t in things] == [
        JSONL.index(b"\n", JSONL.index(marker)) + 1
        for marker in (b"first", b"broken", b"[1,", b"body", b'"   "', b"42", b"plain")
    ]


def test_jsonl_fields_and_meta(tmp_path: Path) -> None:
    things, _ = read(write(tmp_path, JSONL, "in.jsonl"), "jsonl")
    first, last = things[0], things[-1]
    assert isinstance(first, WorkItem) and isinstance(last, WorkItem)
    assert first.fields == {
        "text": "first",
        "lang": "en",
        "n": "3",
        "tags": '["a","b"]',
        "ok": "true",
        "context": "first",
        "source": "in.jsonl",
        "line": "1",
    }
    assert first.meta == {"lang": "en", "n": 3, "tags": ["a", "b"], "ok": True}
    assert last.fields["context"] == "plain"
    assert last.meta is None


def test_jsonl_text_field_is_configurable(tmp_path: Path) -> None:
    path = write(tmp_path, b'{"body": "b", "text": "t"}\n', "in.jsonl")
    (item,) = items_only(read(path, "jsonl", text_field="body")[0])
    assert item.fields["context"] == "b"
    assert item.meta == {"text": "t"}


def test_jsonl_file_fields_win_over_source_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, b'{"text": "t", "source": "elsewhere", "line": 99}\n', "in.jsonl")
    (item,) = items_only(read(path, "jsonl")[0])
    assert item.fields["source"] == "in.jsonl"
    assert item.fields["line"] == "1"
    assert item.meta == {"source": "elsewhere", "line": 99}


def test_jsonl_bom_and_too_long_lines(tmp_path: Path) -> None:
    data = '\ufeff{"text": "a"}\n'.encode() + b'{"text": "' + b"z" * 64 + b'"}\n{"text": "c"}\n'
    things, _ = read(write(tmp_path, data, "in.jsonl"), "jsonl", max_line_bytes=32)
    assert [t.reason if isinstance(t, BadLine) else t.fields["context"] for t in things] == [
        "a",
        "line_too_long",
        "c",
    ]


def test_jsonl_resume_reads_exactly_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, JSONL, "in.jsonl")
    everything, _ = read(path, "jsonl")
    third = everything[2]
    resumed = source(path, seq=third.seq + 1, line=third.line, offset=third.end)
    rest, _ = read(path, "jsonl", src=resumed)
    assert [(t.seq, t.line, t.end) for t in rest] == [
        (t.seq, t.line, t.end) for t in everything[3:]
    ]
    assert all(t.source == resumed for t in rest)


# -- property tests: arbitrary input; strategies mix random data with the tokens that
# matter to each parser, so the interesting paths are reached in a modest number of examples.

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


# -- input = "chunks" --------------------------------------------------------------------


class _Chunks:
    input = "chunks"
    text_field = "text"
    chunk_overlap = 5


def read_chunks(path: Path, src: Source | None = None) -> list[WorkItem | BadLine]:
    """A chunks job's reading, from ``src``'s resume point, as the feeder would see it."""
    from synthd.items import reader_for

    src = src or source(path)
    with open(path, "rb") as f:
        f.seek(src.resume_offset)
        return [t for t in reader_for(src, f, _Chunks(), MAX, 30) if t.seq >= src.resume_seq]


def test_jsonl_records_are_cut_field_by_field_and_resume_inside_a_record(
    tmp_path: Path,
) -> None:
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "near",
        "the",
        "river",
        "bank",
    ]
    rows = []
    for i in range(12):
        text = " ".join(words[(i + j) % len(words)] for j in range(20 + 37 * i))
        rows.append(orjson_line({"text": text, "id": i}))
    rows.insert(3, b"\n")  # a blank line, skipped
    rows.insert(5, b"not json\n")  # a bad line: one BadLine, one seq
    rows.append(orjson_line({"text": "  "}))  # white space alone: a BadLine too
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(rows))
    whole = read_chunks(path)
    assert [t.seq for t in whole] == list(range(len(whole)))
    items = [t for t in whole if isinstance(t, WorkItem)]
    assert len({t.line for t in items}) == 12 and len(items) > 40
    assert [t.reason for t in whole if isinstance(t, BadLine)] == ["invalid_json", "missing_text"]
    ends = [t.end for t in whole]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    for t in items:
        assert t.fields["context"] and t.span is not None and t.meta is not None
        assert t.fields["id"] == str(t.meta["id"])
    # Resuming after any item gives exactly the rest, whatever line it falls in.
    for k in range(1, len(whole)):
        done = whole[k - 1]
        src = source(path, k, done.line, done.end)
        assert read_chunks(path, src) == [replace_src(t, src) for t in whole[k:]], k


def orjson_line(obj: object) -> bytes:
    import orjson

    return orjson.dumps(obj) + b"\n"


def replace_src(t: WorkItem | BadLine, src: Source) -> WorkItem | BadLine:
    from dataclasses import replace

    return replace(t, source=src)
