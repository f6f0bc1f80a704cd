"""Cut a long text into passages of about ``chunk_tokens`` tokens, streaming. Pure.

A passage ends on the last paragraph break that keeps it between 90 % and 100 % of
its size, else on the last sentence end there, else on the last white space: never
inside a word, unless a "word" is longer than the whole window (a URL of 20 KB,
text without spaces), which is then cut where the window ends.

Each passage is decided by the text from its own start on, nothing before it: so a
reader that stopped after passage ``i`` resumes at passage ``i + 1``'s start (its
byte offset is ``Chunk.next_byte``) and cuts exactly what an uninterrupted run
would have cut. Sizes are counted in characters at ``CHARS_PER_TOKEN``, fixed
rather than the calibration the budget learns, so the same file always gives the
same passages and the same record ids.

Text comes in as blocks decoded with ``surrogateescape``: an invalid byte is one
character that encodes back to itself, so byte offsets stay exact; the passage a
model sees has U+FFFD in its place.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb, and the budget's starting estimate
MIN_FILL = 0.9  # a passage other than the last holds at least this share of its size
BLOCK_BYTES = 1 << 16  # read from the file this much at a time

_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n\s*")
# Latin-script sentences end in punctuation then white space; CJK ones need no space.
_SENTENCE = re.compile(
    r"[.!?\u2026][\"'\u201d\u2019)\]]*\s+|[\u3002\uff01\uff1f][\u300d\u300f\u201d\uff09]*\s*"
)
_WORD = re.compile(r"\s+")
_ESCAPED = re.compile("[\udc80-\udcff]")
_TEXT = re.compile(r"\S")
_BOUNDARIES = (_PARAGRAPH, _SENTENCE, _WORD)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One passage. ``start``/``end`` are character offsets in the whole text, so
    consecutive passages without overlap have ``end == next start``; ``text`` is that
    slice without its surrounding white space."""

    index: int
    text: str
    start: int
    end: int
    next_start: int  # the next passage's first character (earlier than end with overlap)
    next_byte: int  # and its byte offset: where a reader resumes after this passage
    replaced: int = 0  # invalid bytes shown as U+FFFD


@dataclass(frozen=True, slots=True)
class Resume:
    """Where chunking starts: the first passage's index, character and byte offset."""

    index: int = 0
    char: int = 0
    byte: int = 0


def chunks(
    blocks: Iterable[str], chunk_tokens: int, overlap_tokens: int = 0, at: Resume = Resume()
) -> Iterator[Chunk]:
    """The passages of the text made of ``blocks``, which starts at ``at``.

    Holds about one passage plus one block in memory, whatever the text's length.
    Passages that would be only white space are not yielded (nor counted).
    """
    size = max(1, chunk_tokens * CHARS_PER_TOKEN)
    overlap = min(max(0, overlap_tokens * CHARS_PER_TOKEN), size // 2)
    want = size + 1  # one past the window: a break right at its end is seen whole
    it = iter(blocks)
    buf, pos, eof = "", 0, False  # the passage being cut starts at buf[pos]
    index, char0, byte0 = at.index, at.char, at.byte  # buf[pos]'s offsets
    while True:
        if not eof and len(buf) - pos < want:
            parts = [buf[pos:]]
            have = len(parts[0])
            while have < want:
                block = next(it, None)
                if block is None:
                    eof = True
                    break
                parts.append(block)
                have += len(block)
            buf, pos = "".join(parts), 0
        if eof and _TEXT.search(buf, pos) is None:
            return
        left = len(buf) - pos
        if eof and left <= size:
            cut = nxt = left  # the last passage: nothing comes after it to overlap
        else:
            cut = _cut(buf, pos, size)
            nxt = _next_start(buf, pos, cut, overlap)
        piece = buf[pos : pos + cut].strip()
        replaced = 0
        if _ESCAPED.search(piece):
            replaced = len(_ESCAPED.findall(piece))
            piece = piece.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        nbytes = len(buf[pos : pos + nxt].encode("utf-8", "surrogateescape"))
        if piece:
            yield Chunk(index, piece, char0, char0 + cut, char0 + nxt, byte0 + nbytes, replaced)
            index += 1
        pos += nxt
        char0 += nxt
        byte0 += nbytes


def _cut(buf: str, pos: int, size: int) -> int:
    """Where the passage that starts at ``buf[pos]`` ends, counted from ``pos`` (``buf``
    holds more than ``size`` characters from there)."""
    lo = max(1, int(size * MIN_FILL))
    for pattern in _BOUNDARIES:
        best = -1
        for m in pattern.finditer(buf, pos + max(0, lo - 64), pos + size + 1):
            if lo <= m.end() - pos <= size:
                best = m.end() - pos
        if best > 0:
            return best
    # No break in the window: white space in its second half, else a hard cut.
    half, end = pos + size // 2, pos + size
    space = max(buf.rfind(" ", half, end), buf.rfind("\n", half, end))
    return space + 1 - pos if space >= 0 else size


def _next_start(buf: str, pos: int, cut: int, overlap: int) -> int:
    """The next passage's start, from ``pos``: the earliest paragraph, else sentence, else
    word start in the ``overlap`` characters before ``cut``, or ``cut`` if there is none."""
    if overlap <= 0:
        return cut
    lo = pos + max(1, cut - overlap)
    for pattern in _BOUNDARIES:
        m = pattern.search(buf, lo, pos + cut)
        if m is not None and m.end() - pos < cut:
            return m.end() - pos
    return cut


def blocks_of(f: BinaryIO, block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """A binary file's text from where it stands, decoded as UTF-8 a block at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    while raw := f.read(block_bytes):
        if text := decoder.decode(raw):
            yield text
    if tail := decoder.decode(b"", final=True):
        yield tail


def chars_before(f: BinaryIO, nbytes: int, block_bytes: int = BLOCK_BYTES) -> int:
    """How many characters the first ``nbytes`` bytes of ``f`` decode to (from where it
    stands), read a block at a time: a resume point's character offset."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    count, left = 0, nbytes
    while left > 0:
        raw = f.read(min(block_bytes, left))
        if not raw:
            break
        left -= len(raw)
        count += len(decoder.decode(raw))
    return count + len(decoder.decode(b"", final=True))
