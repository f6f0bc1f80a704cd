"""synthd.writer: commits, progress, finished sources and crash recovery, on real files.

The thread side (``_commit``, ``recover``) is called directly: no network, no daemon.
A crash is simulated by appending to the ``.part`` files what a dead process left
there between its fsync and its checkpoint commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
from structlog.testing import capture_logs

from synthd import config as config_mod
from synthd.checkpoint import Checkpoint
from synthd.config import Config, Job
from synthd.errors import OutputBlocked
from synthd.fingerprint import sampling_params
from synthd.jsonbytes import dumps as encode
from synthd.models import Accepted, BadLine, Choice, Outcome, Rejection, Reply, Source, WorkItem
from synthd.records import bad_input, completed, dead_letter
from synthd.writer import Progress, SourceEnd, Writer

NOW = 1_700_000_000.0

CONFIG = """
[paths]
spool = "spool"
out = "out"
state = "state"

[jobs.one]
prompt = "p.txt"
model = "m"
input = "lines"

[jobs.one.output]
shard_max_records = 3

[jobs.two]
prompt = "p.txt"
model = "m"
input = "lines"
samples = 2
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("Questions about {{topic}}:\n", encoding="utf-8")
    (tmp_path / "synthd.toml").write_text(CONFIG, encoding="utf-8")
    return config_mod.load(Path("synthd.toml"))


@pytest.fixture
def checkpoints(tmp_path: Path) -> Iterator[list[Checkpoint]]:
    """Checkpoints a test opens on tmp_path/state; all are closed afterwards."""
    opened: list[Checkpoint] = []
    yield opened
    for cp in opened:
        cp.close()


def open_checkpoint(opened: list[Checkpoint]) -> Checkpoint:
    cp = Checkpoint(Path("state") / "checkpoint.db")
    opened.append(cp)
    return cp


def new_writer(config: Config, cp: Checkpoint) -> Writer:
    return Writer(config, cp, lambda outcomes: None, lambda src, path: None)


def claim(config: Config, cp: Checkpoint, job: str, claim_id: str = "c0ffee01") -> Source:
    """A claimed input file, as the daemon leaves it: in .work/ with a sources row."""
    work = config.paths.spool / job / ".work"
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{claim_id}-in.txt"
    path.write_text("alpha\nbeta\ngamma\ndelta\n", encoding="utf-8")
    return cp.add_source(job, claim_id, "in.txt", str(path), config.jobs[job].fingerprint)


class One(NamedTuple):
    """Job "one" with a claimed file, its checkpoint and a writer."""

    cp: Checkpoint
    writer: Writer
    job: Job
    src: Source


@pytest.fixture
def one(config: Config, checkpoints: list[Checkpoint]) -> One:
    cp = open_checkpoint(checkpoints)
    return One(cp, new_writer(config, cp), config.jobs["one"], claim(config, cp, "one"))


def item(src: Source, seq: int) -> WorkItem:
    topic = f"topic {seq}"
    return WorkItem(
        src, seq, seq + 1, (seq + 1) * 10, {"context": topic, "topic": topic, "source": "in.txt"}
    )


def answered(job: Job, wi: WorkItem, *results: Accepted | Rejection) -> Outcome:
    """The outcome of a request that came back with one choice per result."""
    texts = [r.text if isinstance(r, Accepted) else "rejected text" for r in results]
    reply = Reply([Choice(t, "stop") for t in texts], "m-2024", 11, 7 * len(texts), True)
    prompt = [{"role": "user", "content": job.template.render(wi.fields)}]
    return completed(job, wi, prompt, sampling_params(job.config), reply, list(results), NOW)


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in path.read_bytes().splitlines()]


def parts(config: Config, job: str) -> dict[str, Path]:
    out = config.paths.out / job
    return {
        "records": out / f"{job}-000001.jsonl.part",
        "rejects": out / "rejects" / "rejects-000001.jsonl.part",
        "dead": out / "dead-letter" / "dead-000001.jsonl.part",
    }


# -- committing ------------------------------------------------------------------------


def test_outcomes_land_in_their_streams(config: Config, one: One) -> None:
    cp, writer, job, src = one
    writer.track(src, {})
    batch: list[Outcome | SourceEnd] = [
        answered(job, item(src, 0), Accepted("What happened?")),
        answered(job, item(src, 1), Rejection("too_short", "1 < 5 chars")),
        dead_letter(job, item(src, 2), "retryable: HTTP 503", "attempts_exhausted", 6, NOW),
        bad_input(job, BadLine(src, 3, 4, 40, "invalid_json", "line 4: oops"), NOW),
    ]
    assert writer._commit(batch) == []

    files = parts(config, "one")
    (record,) = lines(files["records"])
    assert record["completion"] == "What happened?"
    assert record["source"] == {"file": "in.txt", "line": 1, "seq": 0, "claim": "c0ffee01",
                                "end": 10}  # fmt: skip
    assert record["fingerprint"] == job.fingerprint
    assert record["messages"] == [{"role": "user", "content": "Questions about topic 0:\n"}]
    filtered, bad = lines(files["rejects"])
    assert (filtered["source"]["seq"], filtered["stage"], filtered["reason"]) == (
        1,
        "filter",
        "too_short",
    )
    assert (bad["source"]["seq"], bad["stage"], bad["reason"]) == (3, "input", "invalid_json")
    (dead,) = lines(files["dead"])
    assert (dead["source"]["seq"], dead["kind"], dead["attempts"]) == (2, "attempts_exhausted", 6)

    for kind, path in files.items():
        assert cp.shard_offset(("one", kind, 1)) == path.stat().st_size
    (counts,) = cp.counts()
    assert counts.items == {"record": 1, "rejected": 1, "dead": 1, "bad_input": 1}
    assert counts.records == 1
    assert writer.records_written == 1
    (active,) = cp.active_sources("one")
    assert (active.resume_seq, active.resume_line, active.resume_offset) == (4, 4, 40)


def test_a_duplicate_completion_goes_to_rejects(config: Config, one: One) -> None:
    cp, writer, job, src = one
    writer.track(src, {})
    writer._commit([answered(job, item(src, 0), Accepted("Same question?"))])
    # Again in a later batch, and twice within one batch.
    writer._commit(
        [
            answered(job, item(src, 1), Accepted("Same question?")),
            answered(job, item(src, 2), Accepted("Other question?")),
            answered(job, item(src, 3), Accepted("Other question?")),
        ]
    )
    files = parts(config, "one")
    assert [r["completion"] for r in lines(files["records"])] == [
        "Same question?",
        "Other question?",
    ]
    dups = lines(files["rejects"])
    assert [(d["source"]["seq"], d["reason"], d["completion"]) for d in dups] == [
        (1, "duplicate", "Same question?"),
        (3, "duplicate", "Other question?"),
    ]
    assert writer.records_written == 2
    # Every item is done, duplicates included: none is sent again.
    assert set(cp.done_after(src.id, 0)) == {0, 1, 2, 3}


def test_status_counts_only_records_written(one: One) -> None:
    cp, writer, job, src = one
    writer._commit([answered(job, item(src, s), Accepted("Same question?")) for s in (0, 1)])
    assert writer.records_written == 1
    assert cp.counts()[0].records == 1


def test_the_resume_point_moves_only_over_contiguous_items(one: One) -> None:
    cp, writer, job, src = one
    progress = writer.track(src, {})

    def resume_point() -> tuple[int, int, int]:
        (s,) = cp.active_sources("one")
        return s.resume_seq, s.resume_line, s.resume_offset

    writer._commit([answered(job, item(src, s), Accepted(f"Q{s}?")) for s in (1, 2)])
    assert resume_point() == (0, 0, 0)
    assert progress.seq == 0
    assert cp.done_after(src.id, 0) == {1: (2, 20), 2: (3, 30)}
    writer._commit([answered(job, item(src, 0), Accepted("Q0?"))])
    assert resume_point() == (3, 3, 30)
    writer._commit([answered(job, item(src, 4), Accepted("Q4?"))])
    assert resume_point() == (3, 3, 30)
    writer._commit([answered(job, item(src, 3), Accepted("Q3?"))])
    assert resume_point() == (5, 5, 50)


def test_progress_mark() -> None:
    src = Source(1, "j", "c", "n", "p", "f", 2, 2, 20)
    p = Progress(src, 2, 2, 20)
    assert not p.mark(4, 5, 50)
    assert not p.mark(3, 4, 40)
    assert (p.seq, p.line, p.offset) == (2, 2, 20)
    assert p.mark(2, 3, 30)
    assert (p.seq, p.line, p.offset, p.done) == (5, 5, 50, {})
    assert not p.complete
    p.total = 6
    assert not p.complete
    assert p.mark(5, 6, 60)
    assert p.complete


def test_source_end_completes_a_source(config: Config, one: One) -> None:
    cp, writer, job, src = one
    writer.track(src, {})
    work_file = Path(src.path)
    content = work_file.read_bytes()

    # The reader may reach the end before the last outcome is in.
    assert writer._commit([SourceEnd(src.id, 2), answered(job, item(src, 1), Accepted("B?"))]) == []
    assert work_file.exists()
    assert cp.active_sources("one") != []

    finished = writer._commit([answered(job, item(src, 0), Accepted("A?"))])
    done = config.paths.spool / "one" / "done" / "in.txt"
    assert finished == [(src, str(done))]
    assert not work_file.exists()
    assert done.read_bytes() == content
    assert cp.active_sources("one") == []
    assert cp.counts()[0].files_done == 1
    assert src.id not in writer.progress


def test_a_finished_source_never_overwrites_one_done_before(config: Config, one: One) -> None:
    _, writer, job, src = one
    done = config.paths.spool / "one" / "done"
    done.mkdir(parents=True)
    (done / "in.txt").write_text("an earlier file of the same name")
    writer.track(src, {})
    finished = writer._commit([answered(job, item(src, 0), Accepted("A?")), SourceEnd(src.id, 1)])
    assert finished == [(src, str(done / "in.txt.2"))]
    assert (done / "in.txt").read_text() == "an earlier file of the same name"


def test_a_full_shard_gets_its_final_name(config: Config, one: One) -> None:
    cp, writer, job, src = one  # shard_max_records = 3
    writer._commit([answered(job, item(src, s), Accepted(f"Q{s}?")) for s in range(4)])
    out = config.paths.out / "one"
    # All four went into the open shard; it is full now and renamed whole.
    assert [r["completion"] for r in lines(out / "one-000001.jsonl")] == [
        "Q0?",
        "Q1?",
        "Q2?",
        "Q3?",
    ]
    writer._commit([answered(job, item(src, 4), Accepted("Q4?"))])
    part = out / "one-000002.jsonl.part"
    assert [r["completion"] for r in lines(part)] == ["Q4?"]
    assert cp.shard_offset(("one", "records", 2)) == part.stat().st_size


async def test_run_commits_submitted_outcomes_and_reports_them(
    config: Config, checkpoints: list[Checkpoint]
) -> None:
    cp = open_checkpoint(checkpoints)
    committed: list[Outcome] = []
    done: list[tuple[Source, str]] = []
    writer = Writer(config, cp, committed.extend, lambda s, p: done.append((s, p)))
    job = config.jobs["one"]
    src = claim(config, cp, "one")
    writer.track(src, {})
    task = asyncio.create_task(writer.run())
    outcomes = [answered(job, item(src, s), Accepted(f"Q{s}?")) for s in range(2)]
    for o in outcomes:
        writer.submit(o)
    writer.submit(SourceEnd(src.id, 2))
    await asyncio.wait_for(writer.wait_idle(), 5)
    assert committed == outcomes
    assert done == [(src, str(config.paths.spool / "one" / "done" / "in.txt"))]
    await asyncio.wait_for(writer.close(), 5)
    await asyncio.wait_for(task, 5)
    writer.close_files()
    assert (config.paths.out / "one" / "one-000001.jsonl").exists()


# -- failed commits --------------------------------------------------------------------


@contextmanager
def disk_full_past(nbytes: int) -> Iterator[None]:
    """This process's writes past ``nbytes`` into any file fail with EFBIG, as on a full
    disk (Python ignores SIGXFSZ). Only the soft limit moves, so it can be raised back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def fail_commit(writer: Writer, batch: list[Outcome | SourceEnd]) -> None:
    """Commit a batch while the checkpoint's WAL cannot grow: the COMMIT itself fails.

    The shard lines (a few hundred bytes) still fit below the limit.
    """
    wal = Path("state") / "checkpoint.db-wal"
    with disk_full_past(wal.stat().st_size), pytest.raises(OutputBlocked):
        writer._commit(batch)


def test_a_failed_commit_is_rolled_back_and_the_writer_goes_on(config: Config, one: One) -> None:
    cp, writer, job, src = one
    writer.track(src, {})
    first = answered(job, item(src, 0), Accepted("A?"))
    fail_commit(writer, [first])
    part = parts(config, "one")["records"]
    assert part.read_bytes() == b"", "the failed batch is cut back out of the shard"
    # The disk has room again: the same batch commits, and claims work too.
    writer._commit([first])
    assert [r["completion"] for r in lines(part)] == ["A?"]
    assert cp.shard_offset(("one", "records", 1)) == part.stat().st_size
    claim(config, cp, "two", "c0ffee02")
    assert [s.claim for s in cp.active_sources("two")] == ["c0ffee02"]


def test_a_retried_commit_saves_the_resume_point(one: One) -> None:
    cp, writer, job, src = one
    writer.track(src, {})
    batch: list[Outcome | SourceEnd] = [answered(job, item(src, 0), Accepted("A?"))]
    fail_commit(writer, batch)
    writer._commit(batch)
    (active,) = cp.active_sources("one")
    assert (active.resume_seq, active.resume_line, active.resume_offset) == (1, 1, 10)


# -- crash recovery --------------------------------------------------------------------


@dataclass
class Crashed:
    """What a test needs after a simulated crash and a fresh writer's recovery."""

    src: Source
    writer: Writer
    cp: Checkpoint
    adopted: int
    logs: list[MutableMapping[str, Any]]
    files: dict[str, Path]


def die(writer: Writer) -> None:
    """The process is gone: its descriptors close, nothing is renamed or committed."""
    for stream in writer.streams.values():
        for s in stream.values():
            if s._fd is not None:
                os.close(s._fd)
                s._fd = None


def crash_and_recover(config: Config, checkpoints: list[Checkpoint]) -> Crashed:
    cp = open_checkpoint(checkpoints)
    writer = new_writer(config, cp)
    job = config.jobs["two"]  # two samples per item
    src = claim(config, cp, "two")
    writer.track(src, {})
    writer._commit([answered(job, item(src, 0), Accepted("A0?"), Accepted("B0?"))])
    files = parts(config, "two")
    committed_records = files["records"].stat().st_size

    # The batch after it was written and fsynced; the commit never happened.
    one = answered(job, item(src, 1), Accepted("A1?"), Rejection("too_short"))
    two = answered(job, item(src, 2), Accepted("A2?"), Accepted("B2?"))
    dead = dead_letter(job, item(src, 3), "rejected: HTTP 400", "rejected", 1, NOW)
    stranger = {**two.lines["records"][1], "source": {**two.lines["records"][1]["source"],
                                                      "claim": "not-a-claim"}}  # fmt: skip
    with open(files["records"], "ab") as f:
        f.write(encode(one.lines["records"][0]) + b"\n")
        f.write(encode(two.lines["records"][0]) + b"\n")  # its sample 1 never made it
        f.write(encode(stranger) + b"\n")
        f.write(b"not json at all\n")
        f.write(encode(two.lines["records"][1])[:25])  # torn mid-line
    files["rejects"].parent.mkdir(parents=True, exist_ok=True)
    files["rejects"].write_bytes(encode(one.lines["rejects"][0]) + b"\n")
    files["dead"].parent.mkdir(parents=True, exist_ok=True)
    files["dead"].write_bytes(encode(dead.lines["dead"][0]) + b"\n")
    assert cp.shard_offset(("two", "records", 1)) == committed_records
    die(writer)

    fresh_cp = open_checkpoint(checkpoints)
    fresh = new_writer(config, fresh_cp)
    with capture_logs() as logs:
        adopted = fresh.recover()
    return Crashed(src, fresh, fresh_cp, adopted, logs, files)


def recover_and_track(config: Config, checkpoints: list[Checkpoint]) -> tuple[Crashed, Source]:
    """``crash_and_recover``, then the writer follows the source again from its resume point."""
    c = crash_and_recover(config, checkpoints)
    (src,) = c.cp.active_sources("two")
    c.writer.track(src, c.cp.done_after(src.id, src.resume_seq))
    return c, src


def test_recovery_adopts_complete_items_and_cuts_the_rest(
    config: Config, checkpoints: list[Checkpoint]
) -> None:
    c = crash_and_recover(config, checkpoints)
    assert c.adopted == 2  # item 1 (a record and a reject) and item 3 (a dead letter)
    assert sorted(e["seq"] for e in c.logs if e["event"] == "record_adopted") == [1, 3]

    records = c.files["records"].read_bytes()
    assert records.endswith(b"\n")  # the torn line is cut
    assert [(r["source"]["seq"], r["sample"]) for r in lines(c.files["records"])] == [
        (0, 0),
        (0, 1),
        (1, 0),
    ]  # item 2 had one of its two samples: removed; strangers and garbage: removed
    assert [(r["source"]["seq"], r["sample"]) for r in lines(c.files["rejects"])] == [(1, 1)]
    assert [r["source"]["seq"] for r in lines(c.files["dead"])] == [3]
    for kind, path in c.files.items():
        assert c.cp.shard_offset(("two", kind, 1)) == path.stat().st_size

    assert set(c.cp.done_after(c.src.id, 0)) == {0, 1, 3}
    (counts,) = c.cp.counts()
    assert counts.items == {"record": 2, "dead": 1}


def test_after_recovery_the_writer_appends_to_the_same_shard(
    config: Config, checkpoints: list[Checkpoint]
) -> None:
    c, src = recover_and_track(config, checkpoints)
    job = config.jobs["two"]
    # Item 2 is sent again; one of its answers equals an adopted record: a duplicate.
    c.writer._commit([answered(job, item(src, 2), Accepted("A1?"), Accepted("B2?"))])
    assert [(r["source"]["seq"], r["completion"]) for r in lines(c.files["records"])] == [
        (0, "A0?"),
        (0, "B0?"),
        (1, "A1?"),
        (2, "B2?"),
    ]
    assert [(r["source"]["seq"], r["reason"]) for r in lines(c.files["rejects"])] == [
        (1, "too_short"),
        (2, "duplicate"),
    ]
    assert c.cp.shard_offset(("two", "records", 1)) == c.files["records"].stat().st_size


def test_after_recovery_the_source_can_still_complete(
    config: Config, checkpoints: list[Checkpoint]
) -> None:
    c, src = recover_and_track(config, checkpoints)
    job = config.jobs["two"]
    assert src.resume_seq == 1  # item 1 was adopted, the resume point did not move
    finished = c.writer._commit(
        [answered(job, item(src, 2), Accepted("A2?"), Accepted("B2?")), SourceEnd(src.id, 4)]
    )
    assert finished == [(src, str(config.paths.spool / "two" / "done" / "in.txt"))]


def test_adopted_items_count_their_records(config: Config, checkpoints: list[Checkpoint]) -> None:
    c = crash_and_recover(config, checkpoints)
    assert c.cp.counts()[0].records == len(lines(c.files["records"]))


def test_recovery_with_nothing_to_adopt_resumes_the_open_shard(
    config: Config, checkpoints: list[Checkpoint], one: One
) -> None:
    _, writer, job, src = one
    writer._commit([answered(job, item(src, 0), Accepted("A?"))])
    die(writer)
    fresh = new_writer(config, open_checkpoint(checkpoints))
    assert fresh.recover() == 0
    fresh._commit([answered(job, item(src, 1), Accepted("B?"))])
    part = parts(config, "one")["records"]
    assert [r["completion"] for r in lines(part)] == ["A?", "B?"]


def test_recovery_gives_older_part_files_their_final_names(
    config: Config, checkpoints: list[Checkpoint]
) -> None:
    out = config.paths.out / "one"
    out.mkdir(parents=True)
    (out / "one-000001.jsonl.part").write_bytes(b"")
    (out / "one-000002.jsonl.part").write_bytes(b"")
    writer = new_writer(config, open_checkpoint(checkpoints))
    assert writer.recover() == 0
    assert sorted(p.name for p in out.iterdir()) == ["one-000001.jsonl", "one-000002.jsonl.part"]
    writer.close_files()
    assert sorted(p.name for p in out.iterdir()) == ["one-000001.jsonl", "one-000002.jsonl"]


# -- shard identity --------------------------------------------------------------------


class Died(Exception):
    """Stands for the SIGKILL that ends a writer between its fsync and its commit."""


def die_before_commit(writer: Writer, outcomes: list[Outcome]) -> None:
    """Append and fsync a batch's lines, then die: the checkpoint never hears of them."""
    with pytest.raises(Died), writer.cp.transaction() as tx:
        for (job, kind), (chunk, count) in writer._encode(tx, outcomes).items():
            stream = writer.streams[job][kind]
            stream.append(chunk, count)
            stream.sync()
        raise Died
    die(writer)


def restart(config: Config, checkpoints: list[Checkpoint]) -> tuple[Writer, int]:
    writer = new_writer(config, open_checkpoint(checkpoints))
    adopted = writer.recover()
    for src in writer.cp.active_sources("one"):
        writer.track(src, writer.cp.done_after(src.id, src.resume_seq))
    return writer, adopted


def test_a_new_shard_after_closed_ones_were_moved_away_is_recovered(
    config: Config, checkpoints: list[Checkpoint], one: One
) -> None:
    _, writer, job, src = one
    writer.track(src, {})
    writer._commit([answered(job, item(src, s), Accepted(f"Q{s}?")) for s in range(2)])
    writer.close_files()  # a clean stop: the shard gets its final name
    out = config.paths.out / "one"
    archive = config.paths.out / "archive"
    archive.mkdir()
    for shard in out.glob("one-*.jsonl"):  # a consumer takes the finished data away
        shard.rename(archive / shard.name)

    writer, adopted = restart(config, checkpoints)
    assert adopted == 0
    die_before_commit(writer, [answered(job, item(src, 2), Accepted("Q2?"))])
    (new_part,) = out.glob("*.part")
    assert new_part.name not in {p.name.removesuffix(".part") for p in out.iterdir()} | {
        p.name for p in archive.iterdir()
    }

    writer, adopted = restart(config, checkpoints)
    assert adopted == 1, "the lines of the new shard are seen and adopted, not redone"
    assert set(writer.cp.done_after(src.id, 0)) == {0, 1, 2}


def test_the_same_folder_spelled_another_way_keeps_its_offsets(
    config: Config, checkpoints: list[Checkpoint], one: One, tmp_path: Path
) -> None:
    _, writer, job, src = one
    writer.track(src, {})
    writer._commit([answered(job, item(src, 0), Accepted("Q0?"))])
    die_before_commit(writer, [answered(job, item(src, 1), Accepted("Q1?"))])
    assert not config.paths.out.is_absolute()
    absolute = dataclasses.replace(
        config, paths=config.paths.model_copy(update={"out": tmp_path / "out"})
    )
    with capture_logs() as logs:
        _, adopted = restart(absolute, checkpoints)
    assert [e["seq"] for e in logs if e["event"] == "record_adopted"] == [1]
    assert adopted == 1


def test_recovery_only_truncates_what_it_cuts(
    config: Config, checkpoints: list[Checkpoint], one: One
) -> None:
    """A rewrite of the tail could be torn by a crash; a truncation cannot. So an item
    found after one that must be cut is cut too (and redone), never moved."""
    _, writer, job, src = one
    writer.track(src, {})
    writer._commit([answered(job, item(src, 0), Accepted("Q0?"))])
    part = parts(config, "one")["records"]
    bad = {**answered(job, item(src, 1), Accepted("Q1?")).lines["records"][0]}
    bad["source"] = {**bad["source"], "claim": "not-a-claim"}
    good = answered(job, item(src, 2), Accepted("Q2?")).lines["records"][0]
    before = part.read_bytes()
    with open(part, "ab") as f:
        f.write(encode(bad) + b"\n" + encode(good) + b"\n")
    die(writer)
    writer, adopted = restart(config, checkpoints)
    assert part.read_bytes() == before
    assert adopted == 0
    assert set(writer.cp.done_after(src.id, 0)) == {0}
