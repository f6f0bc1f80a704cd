"""synthd.scanner: settling and handing out files of a real tmp spool."""

from __future__ import annotations

import os
import time
from pathlib import Path

from synthd import spool
from synthd.scanner import Scanner, Settler
from tests.helpers import drop


def test_a_file_is_ready_once_unchanged_for_settle_s(job_dir: Path) -> None:
    drop(job_dir, "a.txt", mtime_s=1_000)
    settler = Settler(settle_s=1.0)
    entries = spool.scan(job_dir)
    assert settler.settled(entries, 50.0) == []  # first sight
    assert settler.settled(spool.scan(job_dir), 50.5) == []  # unchanged, not for long enough
    assert settler.settled(spool.scan(job_dir), 51.0) == entries


def test_a_growing_file_is_not_ready(job_dir: Path) -> None:
    settler = Settler(settle_s=1.0)
    drop(job_dir, "a.txt", b"part", mtime_s=1_000)
    assert settler.settled(spool.scan(job_dir), 0.0) == []
    drop(job_dir, "a.txt", b"part and more", mtime_s=1_000)  # same mtime, new size
    assert settler.settled(spool.scan(job_dir), 1.0) == []
    drop(job_dir, "a.txt", b"part and more", mtime_s=1_001)  # same size, new mtime
    assert settler.settled(spool.scan(job_dir), 2.0) == []
    ready = settler.settled(spool.scan(job_dir), 3.0)
    assert [e.name for e in ready] == ["a.txt"]


def test_mtime_in_the_future_or_past_does_not_matter(job_dir: Path) -> None:
    """Only the caller's clock counts: a file from a clock set ahead is not held forever."""
    ahead = int(time.time()) + 3600
    drop(job_dir, "future.txt", mtime_s=ahead)
    drop(job_dir, "past.txt", mtime_s=1)
    settler = Settler(settle_s=2.0)
    assert settler.settled(spool.scan(job_dir), 10.0) == []
    assert settler.settled(spool.scan(job_dir), 11.9) == []
    ready = settler.settled(spool.scan(job_dir), 12.0)
    assert {e.name for e in ready} == {"future.txt", "past.txt"}


def test_a_vanished_file_is_forgotten(job_dir: Path) -> None:
    settler = Settler(settle_s=1.0)
    path = drop(job_dir, "a.txt", mtime_s=1_000)
    settler.settled(spool.scan(job_dir), 5.0)
    path.unlink()
    assert settler.settled(spool.scan(job_dir), 6.0) == []
    drop(job_dir, "a.txt", mtime_s=1_000)  # back, identical: seen afresh
    assert settler.settled(spool.scan(job_dir), 7.0) == []
    assert len(settler.settled(spool.scan(job_dir), 8.0)) == 1


def test_refused_entries_are_ready_at_once(job_dir: Path) -> None:
    os.mkfifo(job_dir / "pipe")
    settler = Settler(settle_s=60.0)
    ready = settler.settled(spool.scan(job_dir), 0.0)
    assert [e.name for e in ready] == ["pipe"]


def test_settle_zero_takes_files_at_first_sight(job_dir: Path) -> None:
    drop(job_dir, "a.txt", mtime_s=1_000)
    assert len(Settler(settle_s=0.0).settled(spool.scan(job_dir), 0.0)) == 1


def test_the_scanner_hands_out_each_settled_file_once_oldest_first(job_dir: Path) -> None:
    for i in range(5):
        drop(job_dir, f"f{i}.txt", mtime_s=2_000 - i)
    drop(job_dir, "ignored.tmp")
    scanner = Scanner(job_dir, settle_s=0.0)

    def take(now: float) -> list[str]:
        names = [e.name for e in scanner.take(now, 3)]
        for name in names:
            (job_dir / name).unlink()  # claimed
        return names

    assert take(0.0) == ["f4.txt", "f3.txt", "f2.txt"]
    assert take(0.1) == ["f1.txt", "f0.txt"]
    assert take(0.2) == []


def test_the_scanner_lists_the_folder_only_when_it_changed(job_dir: Path) -> None:
    for i in range(3):
        drop(job_dir, f"f{i}.tmp")  # a busy folder where nothing is ready
    scanner = Scanner(job_dir, settle_s=0.0)
    for t in range(10):
        assert scanner.take(float(t), 10) == []
    assert scanner.listings == 2  # the first look, and the one that confirmed it
    assert scanner.idle
    drop(job_dir, "new.txt")
    assert [e.name for e in scanner.take(11.0, 10)] == ["new.txt"]
    assert not scanner.idle


def test_the_scanner_forgets_a_settling_file_that_vanished(job_dir: Path) -> None:
    path = drop(job_dir, "a.txt")
    scanner = Scanner(job_dir, settle_s=1.0)
    assert scanner.take(0.0, 10) == []
    assert scanner.bytes_waiting == path.stat().st_size
    path.unlink()
    assert scanner.take(2.0, 10) == []
    assert scanner.bytes_waiting == 0
