"""synthd.shards: append-only JSONL shards on real files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from synthd.shards import ShardStream, Tail, shard_name


@pytest.fixture
def streams() -> Iterator[list[ShardStream]]:
    """Streams a test opens; their descriptors are closed afterwards."""
    opened: list[ShardStream] = []
    yield opened
    for s in opened:
        s.close_shard()


def stream(
    opened: list[ShardStream], folder: Path, max_records: int = 100, max_bytes: int = 1 << 20
) -> ShardStream:
    s = ShardStream(folder, "q", max_records, max_bytes)
    opened.append(s)
    return s


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_shard_name() -> None:
    assert shard_name("q", 1) == "q-000001.jsonl"
    assert shard_name("rejects", 123456) == "rejects-123456.jsonl"


def test_append_opens_a_part_file_and_counts(tmp_path: Path, streams: list[ShardStream]) -> None:
    s = stream(streams, tmp_path / "out")
    assert s.part_path is None
    s.append(b'{"a":1}\n{"a":2}\n', 2)
    s.sync()
    part = tmp_path / "out" / "q-000001.jsonl.part"
    assert s.part_path == str(part)
    assert part.read_bytes() == b'{"a":1}\n{"a":2}\n'
    assert (s.offset, s.records, s.full) == (16, 2, False)
    s.append(b'{"a":3}\n', 1)
    s.sync()
    assert part.read_bytes() == b'{"a":1}\n{"a":2}\n{"a":3}\n'
    assert (s.offset, s.records) == (24, 3)


@pytest.mark.parametrize(
    ("limit", "lines"),
    [({"max_records": 2}, [b"1\n", b"2\n"]), ({"max_bytes": 10}, [b"12345678\n", b"9\n"])],
)
def test_a_shard_is_full_at_its_limit(
    tmp_path: Path, streams: list[ShardStream], limit: dict[str, int], lines: list[bytes]
) -> None:
    s = stream(streams, tmp_path / "out", **limit)
    s.append(lines[0], 1)
    assert not s.full
    s.append(lines[1], 1)
    assert s.full


def test_rotation_at_max_records(tmp_path: Path, streams: list[ShardStream]) -> None:
    folder = tmp_path / "out"
    s = stream(streams, folder, max_records=2)
    s.append(b"1\n2\n", 2)
    final = s.close_shard()
    assert final == folder / "q-000001.jsonl"
    assert final.read_bytes() == b"1\n2\n"
    assert (s.part_path, s.offset, s.records) == (None, 0, 0)
    s.append(b"3\n", 1)
    assert names(folder) == ["q-000001.jsonl", "q-000002.jsonl.part"]
    assert (folder / "q-000002.jsonl.part").read_bytes() == b"3\n"


def test_rotation_at_max_bytes(tmp_path: Path, streams: list[ShardStream]) -> None:
    folder = tmp_path / "out"
    s = stream(streams, folder, max_bytes=10)
    s.append(b"12345678\n9\n", 2)
    s.close_shard()
    s.append(b"x\n", 1)
    s.close_shard()
    assert names(folder) == ["q-000001.jsonl", "q-000002.jsonl"]


def test_close_without_a_shard_is_none(tmp_path: Path, streams: list[ShardStream]) -> None:
    assert stream(streams, tmp_path).close_shard() is None


def test_numbering_continues_after_existing_shards(
    tmp_path: Path, streams: list[ShardStream]
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "q-000007.jsonl").write_bytes(b"old\n")
    (folder / "other-000099.jsonl").write_bytes(b"not ours\n")
    s = stream(streams, folder)
    s.append(b"new\n", 1)
    assert s.part_path == str(folder / "q-000008.jsonl.part")
    assert (folder / "q-000007.jsonl").read_bytes() == b"old\n"


def test_parts_lists_only_this_streams_part_files(
    tmp_path: Path, streams: list[ShardStream]
) -> None:
    folder = tmp_path / "out"
    assert stream(streams, folder).parts() == []  # no folder yet
    folder.mkdir()
    for name in (
        "q-000001.jsonl",
        "q-000002.jsonl.part",
        "q-000003.jsonl.part",
        "x-000004.jsonl.part",
        "q-5.jsonl.part",
        "q-000006.jsonl.part.tmp",
    ):
        (folder / name).write_bytes(b"")  # fmt: skip
    assert stream(streams, folder).parts() == [
        folder / "q-000002.jsonl.part",
        folder / "q-000003.jsonl.part",
    ]


# -- recovery ------------------------------------------------------------------------


def part_with(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "q-000001.jsonl.part"
    path.write_bytes(data)
    return path


def test_recover_returns_the_complete_lines_past_the_commit(
    tmp_path: Path, streams: list[ShardStream]
) -> None:
    path = part_with(tmp_path, b'l1\nl2\nl3\n{"torn')
    tail = stream(streams, tmp_path).recover(path, committed=3)
    assert tail == Tail(str(path), 1, 3, [b"l2", b"l3"])
    assert path.read_bytes() == b'l1\nl2\nl3\n{"torn', "cutting is the writer's decision"


def test_recover_with_nothing_past_the_commit(tmp_path: Path, streams: list[ShardStream]) -> None:
    path = part_with(tmp_path, b"l1\nl2\n")
    assert stream(streams, tmp_path).recover(path, committed=6) == Tail(str(path), 1, 6, [])


def test_recover_a_torn_first_line_past_the_commit(
    tmp_path: Path, streams: list[ShardStream]
) -> None:
    path = part_with(tmp_path, b"l1\nhalf a li")
    assert stream(streams, tmp_path).recover(path, committed=3).lines == []


def test_recover_when_the_file_is_shorter_than_the_commit(
    tmp_path: Path, streams: list[ShardStream]
) -> None:
    path = part_with(tmp_path, b"l1\n")
    assert stream(streams, tmp_path).recover(path, committed=50) == Tail(str(path), 1, 3, [])


def test_recover_from_the_start(tmp_path: Path, streams: list[ShardStream]) -> None:
    path = part_with(tmp_path, b"a\nb\nc")
    assert stream(streams, tmp_path).recover(path, committed=0).lines == [b"a", b"b"]


def test_cut_only_truncates(tmp_path: Path) -> None:
    path = part_with(tmp_path, b"l1\nl2\nl3")
    ShardStream.cut(str(path), 6)
    assert path.read_bytes() == b"l1\nl2\n"
    ShardStream.cut(str(path), 50)
    assert path.read_bytes() == b"l1\nl2\n"


def test_a_shard_number_is_never_reused(tmp_path: Path, streams: list[ShardStream]) -> None:
    """Closed shards may be moved away; the next number is above every one used."""
    s = stream(streams, tmp_path, max_records=1)
    s.append(b"a\n", 1)
    first = s.close_shard()
    assert first is not None
    first.unlink()
    s.append(b"b\n", 1)
    assert s.part_path == str(tmp_path.resolve() / "q-000002.jsonl.part")
    fresh = stream(streams, tmp_path)
    fresh.last_number = 7  # as the checkpoint remembers it
    assert fresh.close_shard() is None
    fresh.append(b"c\n", 1)
    assert fresh.number == 8


def test_resume_continues_the_part_file(tmp_path: Path, streams: list[ShardStream]) -> None:
    path = part_with(tmp_path, b"l1\nl2\nl3\n")
    s = stream(streams, tmp_path, max_records=4)
    s.resume(path)
    assert (s.part_path, s.offset, s.records, s.full) == (str(path), 9, 3, False)
    s.append(b"l4\n", 1)
    assert s.full
    assert s.close_shard() == tmp_path / "q-000001.jsonl"
    assert (tmp_path / "q-000001.jsonl").read_bytes() == b"l1\nl2\nl3\nl4\n"


# -- undoing a batch -------------------------------------------------------------------


def test_truncate_to_undoes_appends(tmp_path: Path, streams: list[ShardStream]) -> None:
    s = stream(streams, tmp_path)
    s.append(b"keep\n", 1)
    before = s.mark()
    s.append(b"undo1\nundo2\n", 2)
    s.truncate_to(before)
    assert s.mark() == before == (5, 1)
    assert Path(s.part_path or "").read_bytes() == b"keep\n"
    s.append(b"next\n", 1)
    assert Path(s.part_path or "").read_bytes() == b"keep\nnext\n"


def test_truncate_to_never_grows(tmp_path: Path, streams: list[ShardStream]) -> None:
    s = stream(streams, tmp_path)
    s.append(b"abc\n", 1)
    s.truncate_to((100, 1))
    assert Path(s.part_path or "").read_bytes() == b"abc\n"
    ShardStream(tmp_path, "z", 1, 1).truncate_to((0, 0))  # nothing open: nothing to do


def test_truncate_to_also_forgets_the_undone_records(
    tmp_path: Path, streams: list[ShardStream]
) -> None:
    s = stream(streams, tmp_path, max_records=3)
    s.append(b"keep\n", 1)
    before = s.mark()
    s.append(b"undo1\nundo2\n", 2)
    s.truncate_to(before)
    assert s.records == 1
    assert not s.full


def test_a_jobs_shards_include_every_nodes(tmp_path: Path) -> None:
    """A consumer reading a job finds the shards of every node that wrote to ``out/``."""
    from synthd.shards import job_shard_paths, shard_paths

    for name in (
        "q-000002.jsonl",
        "q-000001.jsonl",
        "q-b-000001.jsonl.part",
        "q-a-000002.jsonl",
        "q-a-000001.jsonl",
        "q-web-1-000001.jsonl",
        "other-000001.jsonl",
        "q-000001.jsonl.tmp",
    ):
        (tmp_path / name).write_text("")
    got = [p.name for p in job_shard_paths(tmp_path, "q")]
    assert got == [
        "q-000001.jsonl",
        "q-000002.jsonl",
        "q-a-000001.jsonl",
        "q-a-000002.jsonl",
        "q-b-000001.jsonl.part",
        "q-web-1-000001.jsonl",
    ]
    # A single daemon's stream is still only its own.
    assert [p.name for p in shard_paths(tmp_path, "q")] == ["q-000001.jsonl", "q-000002.jsonl"]
