"""synthd.spool: scanning, claiming, transcoding and failing real files in a tmp spool."""

from __future__ import annotations

import codecs
import os
from pathlib import Path

import orjson
import pytest

from synthd import spool
from synthd.checkpoint import Checkpoint
from synthd.errors import InputError
from synthd.spool import Entry
from tests.helpers import SECOND, drop


def test_ensure_layout_makes_the_folders(job_dir: Path) -> None:
    assert sorted(p.name for p in job_dir.iterdir()) == [".work", "done", "failed"]
    spool.ensure_layout(job_dir)  # again: nothing to do, no error


def test_scan_ignores_what_is_not_input(job_dir: Path) -> None:
    drop(job_dir, "a.txt")
    for name in (".hidden", "b.tmp", "c.part", "d.txt.error.json", ".e.jsonl"):
        drop(job_dir, name)
    drop(job_dir / spool.DONE, "old.txt")
    drop(job_dir / spool.FAILED, "bad.txt")
    drop(job_dir / spool.WORK, "abcd-claimed.txt")
    assert [e.name for e in spool.scan(job_dir)] == ["a.txt"]


def test_scan_lists_oldest_first_with_size_and_mtime(job_dir: Path) -> None:
    drop(job_dir, "new.txt", b"123", mtime_s=2_000)
    drop(job_dir, "old.txt", b"12345", mtime_s=1_000)
    drop(job_dir, "same-b.txt", b"1", mtime_s=1_500)
    drop(job_dir, "same-a.txt", b"1", mtime_s=1_500)
    assert spool.scan(job_dir) == [
        Entry("old.txt", 5, 1_000 * SECOND),
        Entry("same-a.txt", 1, 1_500 * SECOND),
        Entry("same-b.txt", 1, 1_500 * SECOND),
        Entry("new.txt", 3, 2_000 * SECOND),
    ]


def test_scan_refuses_links_fifos_and_directories(job_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the spool")
    (job_dir / "link.txt").symlink_to(outside)
    os.mkfifo(job_dir / "pipe.txt")
    (job_dir / "folder.txt").mkdir()
    drop(job_dir, "plain.txt")
    refused = {e.name: e.refused for e in spool.scan(job_dir)}
    assert refused["plain.txt"] is None
    assert refused["link.txt"] is not None and refused["link.txt"].startswith("symlink")
    assert refused["pipe.txt"] is not None and refused["pipe.txt"].startswith("FIFO")
    assert refused["folder.txt"] is not None and refused["folder.txt"].startswith("directory")


def test_a_regular_file_named_like_a_reserved_folder_is_input(tmp_path: Path) -> None:
    d = tmp_path / "bare"
    d.mkdir()
    drop(d, "done")
    assert [e.name for e in spool.scan(d)] == ["done"]


# -- settling ----------------------------------------------------------------------


# -- the scanner -------------------------------------------------------------------


# -- claiming ----------------------------------------------------------------------


def test_claim_is_a_rename_into_work(job_dir: Path) -> None:
    drop(job_dir, "a.txt", b"content\n")
    target = spool.claim(job_dir, "a.txt", "c0ffee01")
    assert target == job_dir / spool.WORK / "c0ffee01-a.txt"
    assert target.read_bytes() == b"content\n"
    assert not (job_dir / "a.txt").exists()
    assert spool.scan(job_dir) == []


def test_the_losing_claim_gets_none(job_dir: Path) -> None:
    drop(job_dir, "a.txt", b"content\n")
    first = spool.claim(job_dir, "a.txt", "c1")
    second = spool.claim(job_dir, "a.txt", "c2")
    assert first is not None and first.read_bytes() == b"content\n"
    assert second is None
    assert list((job_dir / spool.WORK).iterdir()) == [first]


def test_claim_ids_are_distinct_by_construction(job_dir: Path, tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "state.db")
    names = [f"f{i}.txt" for i in range(300)]
    first = cp.add_sources("q", job_dir / spool.WORK, names, "fp")
    cp.forget_sources([s.id for s in first[:10]])  # forgotten ids are never given again
    second = cp.add_sources("q", job_dir / spool.WORK, names, "fp")
    claims = [s.claim for s in first + second]
    assert len(set(claims)) == 600
    assert all("-" not in c and len(c) > 8 for c in claims)  # never an old 8-digit id
    assert len({c[:8] for c in claims}) == 1  # one prefix per state
    cp.close()


def test_claim_batch_claims_and_forgets_the_races_it_lost(job_dir: Path, tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "state.db")
    for name in ("a.txt", "b.txt", "c.txt"):
        drop(job_dir, name)
    (job_dir / "b.txt").unlink()  # taken by someone else after the scan
    won, refused = spool.claim_batch(cp, "q", job_dir, ["a.txt", "b.txt", "c.txt"], "fp")
    assert [s.name for s in won] == ["a.txt", "c.txt"] and refused == []
    assert sorted(p.name for p in (job_dir / spool.WORK).iterdir()) == sorted(
        Path(s.path).name for s in won
    )
    assert [s.name for s in cp.active_sources("q")] == ["a.txt", "c.txt"]
    cp.close()


# -- transcoding -------------------------------------------------------------------


TEXT = "Héllo wörld ✓\r\nsecond line 😀\n"


@pytest.mark.parametrize(
    ("bom", "codec_name"),
    [
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
    ],
)
def test_transcode_utf16_and_utf32_with_bom(tmp_path: Path, bom: bytes, codec_name: str) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(bom + TEXT.encode(codec_name))
    codec = spool.transcode_if_bom(path)
    assert codec is not None and codec_name.startswith(codec)
    assert path.read_bytes() == TEXT.encode("utf-8")  # no BOM, line ends untouched
    assert [p.name for p in tmp_path.iterdir()] == ["in.txt"]


@pytest.mark.parametrize("data", [TEXT.encode(), codecs.BOM_UTF8 + TEXT.encode(), b"", b"\xff"])
def test_transcode_leaves_other_files_alone(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    assert spool.transcode_if_bom(path) is None
    assert path.read_bytes() == data


@pytest.mark.parametrize("data", [b"\xff\xfeh\x00i", b"\xff\xfe\x00\xd8a\x00"])
def test_transcode_refuses_malformed_utf16_cleanly(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    with pytest.raises(InputError):
        spool.transcode_if_bom(path)
    assert [p.name for p in tmp_path.iterdir()] == ["in.txt"]


# -- failing and unique names ------------------------------------------------------------


def test_fail_moves_the_file_and_writes_the_reason(job_dir: Path) -> None:
    drop(job_dir, "a.txt", b"\x00\x01")
    claimed = spool.claim(job_dir, "a.txt", "feedbeef")
    assert claimed is not None
    target = spool.fail(job_dir, claimed, "a.txt", "binary", "NUL bytes")
    assert target == job_dir / spool.FAILED / "a.txt"
    assert target.read_bytes() == b"\x00\x01"
    assert not claimed.exists()
    report = orjson.loads((job_dir / spool.FAILED / "a.txt.error.json").read_bytes())
    assert report["file"] == "a.txt"
    assert report["reason"] == "binary"
    assert report["detail"] == "NUL bytes"
    assert isinstance(report["failed_at"], float)
    assert sorted(p.name for p in (job_dir / spool.FAILED).iterdir()) == [
        "a.txt",
        "a.txt.error.json",
    ]


def test_fail_twice_with_one_name_keeps_both(job_dir: Path) -> None:
    first = spool.fail(job_dir, drop(job_dir, "a.txt", b"one"), "a.txt", "empty", "1")
    second = spool.fail(job_dir, drop(job_dir, "a.txt", b"two"), "a.txt", "empty", "2")
    assert first.read_bytes() == b"one"
    assert second == job_dir / spool.FAILED / "a.txt.2"
    assert second.read_bytes() == b"two"
    report = orjson.loads((job_dir / spool.FAILED / "a.txt.2.error.json").read_bytes())
    assert report["detail"] == "2"


def test_unique_target_never_overwrites(tmp_path: Path) -> None:
    folder = tmp_path / "done"
    first = spool.unique_target(folder, "a.txt")  # creates the folder
    assert first == folder / "a.txt"
    first.write_text("1")
    second = spool.unique_target(folder, "a.txt")
    assert second == folder / "a.txt.2"
    second.write_text("2")
    (folder / "a.txt.3").symlink_to(tmp_path / "nowhere")  # a dangling link is taken too
    assert spool.unique_target(folder, "a.txt") == folder / "a.txt.4"
    assert first.read_text() == "1"
    assert second.read_text() == "2"
