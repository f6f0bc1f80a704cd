"""Turn an input file into work items, streaming.

A reader takes an open binary file positioned where work resumes and yields
``WorkItem`` or ``BadLine`` values one at a time, so memory does not depend on
the file's size. Each value carries the byte offset just past it, which is what
the checkpoint stores to resume a file without re-reading its done part.

Decoding policy: input is UTF-8; invalid bytes become U+FFFD (counted, so the
daemon can log how many); a file with NUL bytes in its first 8 KiB is binary
and refused. UTF-16/32 files with a BOM are transcoded by ``synthd.spool`` at
claim time, so readers only ever see UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import BinaryIO, Protocol

import orjson

from synthd import chunking, extract
from synthd.errors import InputError
from synthd.models import BadLine, Source, WorkItem

SNIFF_BYTES = 8192
_CHUNK = 1 << 16
# orjson refuses to encode past 255 levels; a field sits a few levels down in
# the record that carries it, so it must leave that much room (or the writer's
# encode, not this line, would fail).
_ROOM = 4
_MAX_FIELD_DEPTH = 255 - _ROOM


def sniff(head: bytes) -> None:
    """Refuse content that is not text. Raises ``InputError``."""
    if b"\x00" in head[:SNIFF_BYTES]:
        raise InputError("binary", "NUL bytes in the first 8 KiB: not a text file")


def decode(raw: bytes) -> tuple[str, int]:
    """UTF-8 text, invalid bytes replaced by U+FFFD; and how many were replaced."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        # U+FFFD already present in the input was not a replacement.
        return text, text.count("\ufffd") - raw.count(b"\xef\xbf\xbd")


def whole_file_item(src: Source, raw: bytes, max_bytes: int) -> tuple[WorkItem, int]:
    """A whole file's one item from its bytes (at most ``max_bytes`` + 1 of them), and
    how many invalid bytes were replaced. Raises ``InputError``."""
    if len(raw) > max_bytes:
        raise InputError("too_large", f"more than {max_bytes} bytes in one context")
    sniff(raw)
    text, replaced = decode(raw)
    text = text.lstrip("\ufeff").strip()
    if not text:
        raise InputError("empty", "the file is empty or holds only white space")
    fields = {"context": text, "source": src.name, "line": "1"}
    return WorkItem(src, 0, 1, len(raw), fields), replaced


def kind_of(name: str, configured: str) -> str:
    """The reader for a file: the suffix ``.jsonl`` wins over the job's setting."""
    return "jsonl" if name.endswith((".jsonl", ".ndjson")) else configured


class InputSettings(Protocol):
    """What reading needs of a job's config (``synthd.config_jobs.JobConfig`` has it)."""

    @property
    def input(self) -> str: ...

    @property
    def text_field(self) -> str: ...

    @property
    def chunk_overlap(self) -> int: ...


def reader_for(
    src: Source, f: BinaryIO, job: InputSettings, max_line_bytes: int, chunk_tokens: int = 0
) -> Reader | ChunkReader:
    """The reader the daemon uses for ``src`` in a job configured as ``job``;
    ``chunk_tokens`` is the job's resolved passage size (``Job.chunk_tokens``)."""
    if job.input == "chunks":
        reader = ChunkReader(src, f, chunk_tokens, job.chunk_overlap)
        if kind_of(src.name, "chunks") == "jsonl":
            reader.lines = Reader(src, f, "jsonl", job.text_field, max_line_bytes)
        return reader
    return Reader(src, f, kind_of(src.name, job.input), job.text_field, max_line_bytes)


class ChunkReader:
    """Iterates the passages of one document from its resume point (``input = "chunks"``).

    A passage is an item like a line: its ordinal is its index, its ``end`` the byte
    where the next passage starts, so the checkpoint's resume point works unchanged;
    its ``line`` is its index + 1, which keeps record ids stable when the same file is
    dropped again. A page or a PDF is extracted first (``synthd.extract``), and the
    offsets are then those of its text. Raises ``InputError`` while iterating.
    """

    def __init__(self, src: Source, f: BinaryIO, chunk_tokens: int, overlap_tokens: int) -> None:
        self.src = src
        self.f = f
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens
        self.lines: Reader | None = None  # a JSONL file: its records' text fields are cut
        self._replaced = 0

    @property
    def replaced(self) -> int:
        return self._replaced + (self.lines.replaced if self.lines is not None else 0)

    def __iter__(self) -> Iterator[WorkItem | BadLine]:
        if self.lines is not None:
            yield from self._records(self.lines)
            return
        src = self.src
        f = extract.text_stream(src.name, self.f, src.resume_offset)
        offset = src.resume_offset
        f.seek(0)
        head = f.read(SNIFF_BYTES)
        sniff(head)
        base = 3 if head.startswith(b"\xef\xbb\xbf") else 0
        f.seek(base)
        # Spans count characters from the text's start: a resume counts its done part.
        char = chunking.chars_before(f, offset - base) if offset > base else 0
        f.seek(max(offset, base))
        at = chunking.Resume(src.resume_seq, char, max(offset, base))
        blocks = chunking.blocks_of(f)
        for c in chunking.chunks(blocks, self.chunk_tokens, self.overlap_tokens, at):
            self._replaced += c.replaced
            fields = {"context": c.text, "source": src.name, "line": str(c.index + 1)}
            span = (c.start, c.end)
            yield WorkItem(src, c.index, c.index + 1, c.next_byte, fields, None, span, c.index)

    def _records(self, lines: Reader) -> Iterator[WorkItem | BadLine]:
        """Each JSONL record's text field cut into passages, a record's passages in a row.

        A passage other than its record's last has for ``end`` a byte inside its line,
        ``line_end - (passages after it)``, which no line boundary can be: a resume
        point there says which line to read again and how many of its passages are done.
        """
        src, f = self.src, self.f
        seq, line, offset = src.resume_seq, src.resume_line, src.resume_offset
        start = _line_start(f, offset)
        inside = start < offset  # some of that line's passages are done, not all
        if inside:
            line -= 1
        f.seek(start)
        lines.src = replace(src, resume_seq=0, resume_line=line, resume_offset=start)
        for thing in lines:
            if isinstance(thing, BadLine):
                yield replace(thing, source=src, seq=seq)
                seq += 1
                continue
            text = thing.fields["context"]
            cut = list(chunking.chunks([text], self.chunk_tokens, self.overlap_tokens))
            if not cut:  # a field of white space alone: as a line reader would say
                yield BadLine(src, seq, thing.line, thing.end, "missing_text", "only white space")
                seq += 1
                continue
            n = len(cut)
            if inside:  # the resume point names how many of this line's passages are done
                seq -= n - (thing.end - offset)
                inside = False
            for c in cut:
                end = thing.end - (n - 1 - c.index)
                fields = {**thing.fields, "context": c.text}
                span = (c.start, c.end)
                yield WorkItem(src, seq, thing.line, end, fields, thing.meta, span, c.index)
                seq += 1


def _line_start(f: BinaryIO, offset: int) -> int:
    """Where the line holding byte ``offset - 1`` starts; ``offset`` itself if that byte
    ends a line (or ``offset`` is 0). Reads backwards a block at a time."""
    pos = offset
    while pos > 0:
        step = min(_CHUNK, pos)
        f.seek(pos - step)
        block = f.read(step)
        if pos == offset and block.endswith(b"\n"):
            return offset
        i = block.rfind(b"\n")
        if i >= 0:
            return pos - step + i + 1
        pos -= step
    return 0


class Reader:
    """Iterates the items of one source from its resume point.

    ``replaced`` counts the invalid UTF-8 sequences that were replaced.
    """

    def __init__(
        self, src: Source, f: BinaryIO, kind: str, text_field: str, max_line_bytes: int
    ) -> None:
        self.src = src
        self.f = f
        self.kind = kind
        self.text_field = text_field
        self.max_line_bytes = max_line_bytes
        self.replaced = 0

    def __iter__(self) -> Iterator[WorkItem | BadLine]:
        if self.kind == "file":
            yield from self._whole_file()
        else:
            yield from self._lines()

    def _decode(self, raw: bytes) -> str:
        text, replaced = decode(raw)
        self.replaced += replaced
        return text

    def _whole_file(self) -> Iterator[WorkItem | BadLine]:
        if self.src.resume_seq > 0:
            return  # the one item is done already
        item, replaced = whole_file_item(
            self.src, self.f.read(self.max_line_bytes + 1), self.max_line_bytes
        )
        self.replaced += replaced
        yield item

    def _lines(self) -> Iterator[WorkItem | BadLine]:
        src, f = self.src, self.f
        seq, line, offset = src.resume_seq, src.resume_line, src.resume_offset
        if offset == 0:
            sniff(f.read(SNIFF_BYTES))
            f.seek(0)
        while True:
            raw = f.readline(self.max_line_bytes + 1)
            if not raw:
                return
            line += 1
            start = offset
            offset += len(raw)
            if len(raw) > self.max_line_bytes and not raw.endswith(b"\n"):
                offset += self._skip_rest_of_line()
                yield BadLine(
                    src,
                    seq,
                    line,
                    offset,
                    "line_too_long",
                    f"line {line} is longer than {self.max_line_bytes} bytes",
                )
                seq += 1
                continue
            if start == 0 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            item = self._item(seq, line, offset, raw)
            if item is None:
                continue  # a blank line, in any script's white space
            yield item
            seq += 1

    def _skip_rest_of_line(self) -> int:
        skipped = 0
        while True:
            chunk = self.f.readline(_CHUNK)
            skipped += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                return skipped

    def _item(self, seq: int, line: int, end: int, raw: bytes) -> WorkItem | BadLine | None:
        src = self.src
        text = self._decode(raw).strip()
        if not text:
            return None
        base = {"source": src.name, "line": str(line)}
        if self.kind == "lines":
            return WorkItem(src, seq, line, end, {"context": text, "topic": text, **base})
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            return BadLine(src, seq, line, end, "invalid_json", f"line {line}: {e}")
        if not isinstance(obj, dict):
            return BadLine(src, seq, line, end, "not_an_object", f"line {line} is not an object")
        value = obj.get(self.text_field)
        if not isinstance(value, str) or not value.strip():
            return BadLine(
                src,
                seq,
                line,
                end,
                "missing_text",
                f"line {line} has no non-empty string field {self.text_field!r}",
            )
        try:
            fields = {k: v if isinstance(v, str) else _dumps_with_room(v) for k, v in obj.items()}
        except orjson.JSONEncodeError:
            return BadLine(
                src,
                seq,
                line,
                end,
                "too_deep",
                f"line {line} nests deeper than a record can hold ({_MAX_FIELD_DEPTH} levels)",
            )
        fields.update(base)
        fields["context"] = value
        meta = {k: v for k, v in obj.items() if k != self.text_field}
        return WorkItem(src, seq, line, end, fields, meta or None)


def _dumps_with_room(value: object) -> str:
    """``value`` as JSON; raises ``JSONEncodeError`` if a record could not hold it."""
    wrapped = orjson.dumps([[[[value]]]])  # _ROOM levels, checked in the same pass
    return wrapped[_ROOM:-_ROOM].decode()
