"""Append-only JSONL shards: one open ``.part`` file, renamed when full.

A stream lives in one folder as ``PREFIX-000001.jsonl``, ``PREFIX-000002.jsonl``
... The newest is ``PREFIX-00000N.jsonl.part`` while it is written; at
``max_records`` or ``max_bytes`` it is fsynced and renamed to its final name,
then the folder is fsynced. So any file with a final name is complete, and
only the ``.part`` file can have a torn tail.

Blocking I/O; only the writer's thread calls it. Durability across a crash is
the writer's business: it fsyncs, then checkpoints the offset it reached, and
at start-up hands each ``.part`` file's uncheckpointed tail to recovery.

A shard's identity is its stream and its number, never its path: a number is
never reused (the writer persists the highest one in the checkpoint; closed
shards may be moved or deleted by their consumers), and the folder may be
spelled differently from one start to the next.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from synthd.dirsync import fsync_dir

_PART = ".part"


@dataclass(frozen=True, slots=True)
class Tail:
    """The complete lines of a ``.part`` file after its checkpointed offset."""

    path: str
    number: int
    start: int
    lines: list[bytes]


def shard_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:06d}.jsonl"


def closed_name(path: Path) -> Path:
    """The name an open ``.part`` shard takes when it is closed (a closed one keeps its own)."""
    return path.with_name(path.name.removesuffix(_PART))


def shard_pattern(prefix: str) -> re.Pattern[str]:
    """Matches a stream's shard names: group 1 is the number, group 2 ``.part`` if open."""
    return re.compile(re.escape(prefix) + r"-(\d{6})\.jsonl(\.part)?$")


def shard_paths(folder: Path, prefix: str) -> list[Path]:
    """A stream's shards, oldest first: ``PREFIX-000001.jsonl`` ... and the ``.part``.

    Reads only the listing: export calls it while the daemon writes.
    """
    pattern = shard_pattern(prefix)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), name) for name in names if (m := pattern.match(name))]
    return [folder / name for _, name in sorted(found)]


def job_shard_paths(folder: Path, prefix: str) -> list[Path]:
    """``shard_paths``, plus every node's (``PREFIX-NODE-000001.jsonl``: several daemons
    sharing ``out/``, see ``synthd.coordination``): one node's after another, oldest first."""
    node_part = re.compile(re.escape(prefix) + r"-(?:(.+)-)?(\d{6})\.jsonl(\.part)?$")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [
        (m.group(1) or "", int(m.group(2)), name) for name in names if (m := node_part.match(name))
    ]
    return [folder / name for _, _, name in sorted(found)]


class ShardStream:
    """One stream of shards in ``folder``. Not thread-safe: one writer only."""

    def __init__(self, folder: Path, prefix: str, max_records: int, max_bytes: int) -> None:
        self._given = folder  # as the config spells it
        self.folder = folder.resolve()
        self.prefix = prefix
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._pattern = shard_pattern(prefix)
        self._fd: int | None = None
        self._path: Path | None = None
        self.number: int | None = None  # of the open shard
        self.last_number = 0  # the highest number ever used: the next is above it
        self.offset = 0
        self.records = 0
        self._dirty = False

    @property
    def part_path(self) -> str | None:
        return None if self._path is None else str(self._path)

    def parts(self) -> list[Path]:
        """Every ``.part`` file of this stream (normally at most one)."""
        if not self.folder.is_dir():
            return []
        return sorted(
            p for p in self.folder.iterdir() if (m := self._pattern.match(p.name)) and m.group(2)
        )

    def parts_with_legacy_paths(self) -> list[tuple[Path, str]]:
        """``parts()``, each with the path an earlier version keyed its offset by."""
        return [(p, str(self._given / p.name)) for p in self.parts()]

    def number_of(self, path: Path) -> int:
        m = self._pattern.match(path.name)
        assert m is not None, path
        return int(m.group(1))

    def recover(self, path: Path, committed: int) -> Tail:
        """Return the complete lines past ``committed``; a torn last line is left
        for ``cut`` (a line is complete when it ends in a newline)."""
        size = path.stat().st_size
        start = min(committed, size)
        with open(path, "rb") as f:
            f.seek(start)
            tail = f.read()
        end = tail.rfind(b"\n") + 1
        return Tail(str(path), self.number_of(path), start, tail[:end].splitlines())

    @staticmethod
    def cut(path: str, size: int) -> None:
        """Truncate a ``.part`` file to ``size`` and make that durable.

        Recovery only ever truncates, never rewrites: a crash during the cut
        leaves the file either as it was or cut, and the next recovery decides
        the same way again.
        """
        with open(path, "r+b") as f:
            if os.fstat(f.fileno()).st_size > size:
                f.truncate(size)
                os.fsync(f.fileno())

    def resume(self, path: Path) -> None:
        """Continue appending to an existing ``.part`` file (after recovery)."""
        self._open(path)
        with open(path, "rb") as f:
            self.records = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))

    def append(self, data: bytes | bytearray, count: int) -> None:
        """Write ``count`` newline-terminated lines. On error nothing is left behind."""
        if self._fd is None:
            self._open(self.folder / (shard_name(self.prefix, self._next_number()) + _PART))
        assert self._fd is not None
        before = self.offset
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            # Leave no partial line behind: a later retry appends the batch again.
            os.ftruncate(self._fd, before)
            raise
        self.offset += len(data)
        self.records += count
        self._dirty = True

    def mark(self) -> tuple[int, int]:
        """Where the stream is now, for ``truncate_to``."""
        return self.offset, self.records

    def truncate_to(self, mark: tuple[int, int]) -> None:
        """Undo appends made since ``mark`` (a batch whose commit failed)."""
        offset, records = mark
        if self._fd is not None and offset < self.offset:
            os.ftruncate(self._fd, offset)
        self.offset, self.records = offset, records

    def sync(self) -> None:
        if self._fd is not None and self._dirty:
            os.fsync(self._fd)
            self._dirty = False

    @property
    def full(self) -> bool:
        return self.records >= self.max_records or self.offset >= self.max_bytes

    def close_shard(self) -> Path | None:
        """Fsync and rename the open shard to its final name. Returns that name."""
        if self._fd is None or self._path is None:
            return None
        os.fsync(self._fd)
        final = closed_name(self._path)
        # Rename before closing: if the rename fails, the shard stays open and whole.
        os.rename(self._path, final)
        os.close(self._fd)
        self._fd, self._path, self.number, self.offset, self.records = None, None, None, 0, 0
        with contextlib.suppress(OSError):  # the rename is done; the dir fsync is a bonus
            fsync_dir(self.folder)
        return final

    def _open(self, path: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._path = path
        self.number = self.number_of(path)
        self.last_number = max(self.last_number, self.number)
        self.offset = os.fstat(self._fd).st_size
        self.records = 0
        fsync_dir(self.folder)

    def _next_number(self) -> int:
        self.folder.mkdir(parents=True, exist_ok=True)
        numbers = [
            int(m.group(1)) for p in self.folder.iterdir() if (m := self._pattern.match(p.name))
        ]
        return max([self.last_number, *numbers]) + 1
