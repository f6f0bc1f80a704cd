"""The durable record of done work: SQLite in WAL mode.

Why SQLite: a crash-safe embedded store with atomic multi-row transactions,
concurrent readers (``synthd status`` reads while the daemon writes) and
indexes, so restart time does not grow with the number of done items. We run it
with ``synchronous=NORMAL``: a power cut may lose the last transactions but
never corrupts the file, and losing them is safe here because the writer
fsyncs shard lines *before* it commits, and recovery adopts lines found past
the last committed offset (see ``synthd.writer``).

Tables:
  sources  one row per claimed spool file: where its unfinished work starts
  items    one row per finished item (record, rejected, dead, bad_input)
  shards   per shard (job, stream, number), the byte offset the checkpoint vouches
           for; the highest number is the stream's counter, so none is reused
  streams  the same keyed by path, as earlier versions kept it: read only to
           recover a ``.part`` left by them
  seen     de-duplication digests per job
  meta     this state's claim-id prefix and the count of claims made

Made here too, when the file is opened, on the same connection: the tables of pipeline
hand-off (``synthd.stagestore``) and of the near-duplicate index (``synthd.nearindex``),
whose schema and queries live in those modules. Batch mode's (``synthd.batchstore``)
are made on its first use.

Every method blocks; the daemon calls them from a thread. A lock serializes
callers so one connection can be shared by the writer thread and others.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from synthd import nearindex, stagestore
from synthd.models import Outcome, Source

STATE_FILE = "synthd.db"  # in [paths] state: the daemon's, status's and dry-run's one database

ShardKey = tuple[str, str, int]  # (job, stream, number): a shard, wherever it lives now
_P = ParamSpec("_P")
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
  id INTEGER PRIMARY KEY,
  job TEXT NOT NULL,
  claim TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  path TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  status TEXT NOT NULL,             -- active | done | failed
  resume_seq INTEGER NOT NULL DEFAULT 0,
  resume_line INTEGER NOT NULL DEFAULT 0,
  resume_offset INTEGER NOT NULL DEFAULT 0,
  items_total INTEGER,
  reason TEXT,
  claimed_at REAL NOT NULL,
  finished_at REAL
);
CREATE INDEX IF NOT EXISTS sources_status ON sources (status, job);
CREATE TABLE IF NOT EXISTS items (
  source_id INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  line INTEGER NOT NULL,
  end_offset INTEGER NOT NULL,      -- just past the item in its file: a resume point
  state TEXT NOT NULL,              -- record | rejected | dead | bad_input
  records INTEGER NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  PRIMARY KEY (source_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams (path TEXT PRIMARY KEY, committed INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS shards (
  job TEXT NOT NULL,
  stream TEXT NOT NULL,             -- records | rejects | dead
  number INTEGER NOT NULL,
  committed INTEGER NOT NULL,
  PRIMARY KEY (job, stream, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (
  job TEXT NOT NULL, digest INTEGER NOT NULL, PRIMARY KEY (job, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class JobCounts:
    """What ``synthd status`` shows for one job."""

    job: str
    files_active: int
    files_done: int
    files_failed: int
    items: dict[str, int]
    records: int
    prompt_tokens: int
    completion_tokens: int


class Checkpoint:
    """The state database (``synthd.db``): owns the one SQLite connection and its lock.

    Every method blocks, so the daemon calls them from threads: the writer's commit
    thread (``transaction``, ``sync``), the feeder's claims and resumes (via
    ``asyncio.to_thread``) and recovery at start-up. ``readonly=True`` opens it for
    ``synthd status`` and dry-run beside a running daemon, creating nothing. The modules
    that keep their own tables here (``stagestore``, ``nearindex``, ``batchstore``) reach
    the connection only through ``read``, ``write`` and ``Transaction.db``, so the lock
    and the transactions stay this class's.
    """

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            uri = path.resolve().as_uri() + "?mode=ro"  # escapes '#', '?' and '%'
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA + stagestore.SCHEMA + nearindex.SCHEMA)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def sync(self) -> None:
        """Make every committed transaction survive a power cut (fsync the WAL).

        ``synchronous=NORMAL`` lets a power cut lose the last commits, which is
        safe while their lines sit in a ``.part`` file that recovery reads. Call
        this before a shard leaves that state (its rename): a consumer may take
        a closed shard away, and lines there can no longer be adopted.
        """
        with self._lock:
            try:
                fd = os.open(f"{self.path}-wal", os.O_RDONLY)
            except FileNotFoundError:
                return  # no WAL: everything is in the database file already
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One atomic unit: committed on normal exit, rolled back on error.

        A failed COMMIT is rolled back too: SQLite undoes some failures itself
        (a full disk) but not all (a busy lock), and a connection left inside a
        transaction would refuse every later BEGIN, long after the disk recovered.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with suppress(sqlite3.Error):  # the first error is the one to report
                        self._db.execute("ROLLBACK")
                raise

    def read(
        self,
        query: Callable[Concatenate[sqlite3.Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """``query(connection, ...)`` under the lock, outside any transaction: for the
        modules that keep their tables here."""
        with self._lock:
            return query(self._db, *args, **kwargs)

    def write(
        self,
        update: Callable[Concatenate[sqlite3.Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """``update(connection, ...)`` in a transaction of its own (see ``transaction``)."""
        with self.transaction() as tx:
            return update(tx.db, *args, **kwargs)

    # -- sources ---------------------------------------------------------

    def add_source(self, job: str, claim: str, name: str, path: str, fingerprint: str) -> Source:
        with self.transaction() as tx:
            cur = tx.db.execute(
                "INSERT INTO sources (job, claim, name, path, fingerprint, status, claimed_at)"
                " VALUES (?, ?, ?, ?, ?, 'active', ?)",
                (job, claim, name, path, fingerprint, time.time()),
            )
            assert cur.lastrowid is not None
            return Source(cur.lastrowid, job, claim, name, path, fingerprint)

    def add_sources(
        self, job: str, work_dir: Path, names: list[str], fingerprint: str
    ) -> list[Source]:
        """Record the claims of ``names`` (to be renamed into ``work_dir``) in one transaction.

        A claim id is this state's random prefix (drawn once, so two daemons with
        their own state never share one) and a counter kept in the same
        transaction: unique by construction, never reused even after a forget.
        Older states' ids are 8 hex digits; these are longer, so never equal.
        """
        now = time.time()
        base = str(work_dir) + os.sep
        with self.transaction() as tx:
            prefix, count = _claim_counter(tx.db)
            sources = []
            for name in names:
                count += 1
                claim = f"{prefix}{count:04x}"
                path = f"{base}{claim}-{name}"
                cur = tx.db.execute(
                    "INSERT INTO sources (job, claim, name, path, fingerprint, status, claimed_at)"
                    " VALUES (?, ?, ?, ?, ?, 'active', ?)",
                    (job, claim, name, path, fingerprint, now),
                )
                assert cur.lastrowid is not None
                sources.append(Source(cur.lastrowid, job, claim, name, path, fingerprint))
            tx.db.execute("UPDATE meta SET value = ? WHERE key = 'claims'", (count,))
        return sources

    def forget_sources(self, source_ids: list[int]) -> None:
        """Drop claims that never happened (their rename lost a race)."""
        with self.transaction() as tx:
            tx.db.executemany("DELETE FROM sources WHERE id = ?", [(i,) for i in source_ids])

    def has_items(self, source_id: int) -> bool:
        """Whether any item of a source is done: its claim then surely happened."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM items WHERE source_id = ? LIMIT 1", (source_id,)
            ).fetchone()
        return row is not None

    def forget_source(self, source_id: int) -> None:
        """Drop a claim that never happened (the rename lost a race)."""
        with self.transaction() as tx:
            tx.db.execute("DELETE FROM sources WHERE id = ?", (source_id,))

    def active_sources(self, job: str) -> list[Source]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, job, claim, name, path, fingerprint, resume_seq, resume_line,"
                " resume_offset FROM sources WHERE status = 'active' AND job = ? ORDER BY id",
                (job,),
            ).fetchall()
        return [Source(*row) for row in rows]

    def done_after(self, source_id: int, seq: int) -> dict[int, tuple[int, int]]:
        """Items of a source finished past its resume point: seq -> (line, end)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, line, end_offset FROM items WHERE source_id = ? AND seq >= ?",
                (source_id, seq),
            ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def set_fingerprint(self, source_id: int, fingerprint: str) -> None:
        with self.transaction() as tx:
            tx.db.execute(
                "UPDATE sources SET fingerprint = ? WHERE id = ?", (fingerprint, source_id)
            )

    def end_source(self, source_id: int, status: str, path: str, reason: str | None) -> None:
        with self.transaction() as tx:
            tx.db.execute(
                "UPDATE sources SET status = ?, path = ?, reason = ?, finished_at = ? WHERE id = ?",
                (status, path, reason, time.time(), source_id),
            )

    def ended_paths(self, claims: Iterable[str]) -> dict[str, str]:
        """For claims of finished sources, where their file belongs now."""
        return self._by_claim("SELECT claim, path FROM sources WHERE status != 'active'", claims)

    def claim_ids(self, claims: Iterable[str]) -> dict[str, int]:
        """Map claim ids (as found in output lines) to source ids."""
        return self._by_claim("SELECT claim, id FROM sources WHERE 1", claims)

    def _by_claim(self, select: str, claims: Iterable[str]) -> dict[str, Any]:
        wanted = list(set(claims))
        found: dict[str, Any] = {}
        with self._lock:
            for i in range(0, len(wanted), 500):  # SQLite caps the number of parameters
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                found.update(self._db.execute(f"{select} AND claim IN ({marks})", chunk))
        return found

    # -- streams ---------------------------------------------------------

    def shard_offset(self, key: ShardKey, legacy_path: str | None = None) -> int:
        """The offset the checkpoint vouches for in shard ``key``; 0 if none.

        ``legacy_path``: where an older version would have kept it, used only
        while this stream has no shard rows yet (the first start after upgrading).
        """
        job, stream, _ = key
        with self._lock:
            row = self._db.execute(
                "SELECT committed FROM shards WHERE job = ? AND stream = ? AND number = ?", key
            ).fetchone()
            if row is None and legacy_path is not None and not self._last_shard(job, stream):
                row = self._db.execute(
                    "SELECT committed FROM streams WHERE path = ?", (legacy_path,)
                ).fetchone()
        return int(row[0]) if row else 0

    def last_shard(self, job: str, stream: str) -> int:
        """The highest shard number this stream has committed to: the next is above."""
        with self._lock:
            return self._last_shard(job, stream)

    def _last_shard(self, job: str, stream: str) -> int:
        row = self._db.execute(
            "SELECT max(number) FROM shards WHERE job = ? AND stream = ?", (job, stream)
        ).fetchone()
        return int(row[0] or 0)

    # -- reading for status ---------------------------------------------

    def counts(self) -> list[JobCounts]:
        with self._lock:
            files = self._db.execute(
                "SELECT job, status, count(*) FROM sources GROUP BY job, status"
            ).fetchall()
            items = self._db.execute(
                "SELECT s.job, i.state, count(*), sum(i.records), sum(i.prompt_tokens),"
                " sum(i.completion_tokens) FROM items i JOIN sources s ON s.id = i.source_id"
                " GROUP BY s.job, i.state"
            ).fetchall()
        jobs: dict[str, dict[str, object]] = {}
        for job, status, n in files:
            jobs.setdefault(job, {})[f"files_{status}"] = n
        per_item: dict[str, dict[str, int]] = {}
        totals: dict[str, list[int]] = {}
        for job, state, n, recs, pt, ct in items:
            per_item.setdefault(job, {})[state] = n
            t = totals.setdefault(job, [0, 0, 0])
            t[0] += recs or 0
            t[1] += pt or 0
            t[2] += ct or 0
        out = []
        for job in sorted(set(jobs) | set(per_item)):
            f = jobs.get(job, {})
            t = totals.get(job, [0, 0, 0])
            out.append(
                JobCounts(
                    job,
                    int(f.get("files_active", 0)),  # type: ignore[call-overload]
                    int(f.get("files_done", 0)),  # type: ignore[call-overload]
                    int(f.get("files_failed", 0)),  # type: ignore[call-overload]
                    per_item.get(job, {}),
                    t[0],
                    t[1],
                    t[2],
                )
            )
        return out


def _claim_counter(db: sqlite3.Connection) -> tuple[str, int]:
    """This state's claim prefix and claim count, made on first use (inside a transaction)."""
    rows = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('claim_prefix', 'claims')"))
    if "claim_prefix" not in rows:
        rows = {"claim_prefix": secrets.token_hex(4), "claims": 0}
        db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", list(rows.items()))
    return str(rows["claim_prefix"]), int(rows["claims"])


class Transaction:
    """Writes that must land together with the shard offsets they describe."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def end_sources(self, ends: list[tuple[int, str, str, str | None]]) -> None:
        """Finish sources in this transaction: (id, status, path, reason) each."""
        now = time.time()
        self.db.executemany(
            "UPDATE sources SET status = ?, path = ?, reason = ?, finished_at = ? WHERE id = ?",
            [(status, path, reason, now, sid) for sid, status, path, reason in ends],
        )

    def dedupe(self, job: str, digests: list[int]) -> list[bool]:
        """For each digest, True if it is new to the job (and now remembered)."""
        fresh = []
        for d in digests:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO seen (job, digest) VALUES (?, ?)", (job, d)
            )
            fresh.append(cur.rowcount == 1)
        return fresh

    def record(self, outcomes: list[Outcome]) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    o.source.id,
                    o.seq,
                    o.line,
                    o.end,
                    o.state,
                    o.records_written,
                    o.prompt_tokens,
                    o.completion_tokens,
                )
                for o in outcomes
            ],
        )

    def resume_points(self, points: dict[int, tuple[int, int, int]]) -> None:
        self.db.executemany(
            "UPDATE sources SET resume_seq = ?, resume_line = ?, resume_offset = ? WHERE id = ?",
            [(seq, line, off, sid) for sid, (seq, line, off) in points.items()],
        )

    def shard_offsets(self, offsets: dict[ShardKey, int]) -> None:
        self.db.executemany(
            "INSERT INTO shards (job, stream, number, committed) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (job, stream, number) DO UPDATE SET committed = excluded.committed",
            [(*key, committed) for key, committed in offsets.items()],
        )
