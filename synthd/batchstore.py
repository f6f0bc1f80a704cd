"""Batch mode's durable state, in the checkpoint database (``synthd.db``).

Tables (beside the checkpoint's own, on its connection and lock):
  batches      one row per batch file: its state (packed -> uploaded -> submitted ->
               closed), its synthd key (put in the batch's metadata, so a batch created
               just before a crash is found again), the provider's ids and counts
  batch_items  one row per item in a batch not yet closed: its custom_id, where its
               request line is in the local file, and what its record needs

The membership of a batch is written in one transaction before its file is uploaded;
a batch is closed, and its unfinished items moved to the next batch, in one more. Every
method blocks; the daemon calls them from threads. ``synthd status`` reads it read-only.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from synthd.batchfile import Member, batch_key
from synthd.checkpoint import Checkpoint
from synthd.models import Source

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
  id INTEGER PRIMARY KEY,
  key TEXT NOT NULL UNIQUE,
  job TEXT NOT NULL,
  provider TEXT NOT NULL,
  api TEXT NOT NULL,
  state TEXT NOT NULL,              -- packed | uploaded | submitted | closed
  path TEXT NOT NULL,               -- the local input file
  fingerprint TEXT NOT NULL,
  params TEXT NOT NULL,
  requests INTEGER NOT NULL,
  bytes INTEGER NOT NULL,
  tokens INTEGER NOT NULL,
  round INTEGER NOT NULL DEFAULT 0,
  input_file_id TEXT,
  remote_id TEXT,
  remote_status TEXT,
  output_file_id TEXT,
  error_file_id TEXT,
  completed INTEGER NOT NULL DEFAULT 0,
  failed INTEGER NOT NULL DEFAULT 0,
  created_at REAL NOT NULL,
  submitted_at REAL,
  closed_at REAL,
  reason TEXT
);
CREATE INDEX IF NOT EXISTS batches_state ON batches (state, job);
CREATE TABLE IF NOT EXISTS batch_items (
  custom_id TEXT PRIMARY KEY,
  batch INTEGER NOT NULL,
  source_id INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  line INTEGER NOT NULL,
  end_offset INTEGER NOT NULL,
  offset INTEGER NOT NULL,
  length INTEGER NOT NULL,
  fields TEXT NOT NULL,
  meta TEXT,
  sent_context TEXT,
  prompt_chars INTEGER NOT NULL,
  reserved INTEGER NOT NULL,
  tries INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batch_items_batch ON batch_items (batch);
CREATE INDEX IF NOT EXISTS batch_items_source ON batch_items (source_id, seq);
"""

_COLUMNS = (
    "id, key, job, provider, api, state, path, fingerprint, params, requests, bytes, tokens,"
    " round, input_file_id, remote_id, remote_status, output_file_id, error_file_id,"
    " completed, failed, created_at, submitted_at, closed_at, reason"
)


_MARKS = ", ".join("?" * 14)


@dataclass(frozen=True, slots=True)
class BatchRow:
    id: int
    key: str
    job: str
    provider: str
    api: str
    state: str
    path: str
    fingerprint: str
    params: str
    requests: int
    bytes: int
    tokens: int
    round: int
    input_file_id: str | None
    remote_id: str | None
    remote_status: str | None
    output_file_id: str | None
    error_file_id: str | None
    completed: int
    failed: int
    created_at: float
    submitted_at: float | None
    closed_at: float | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class NewBatch:
    """A pack about to be recorded: its file is already on disk at ``path``."""

    job: str
    provider: str
    api: str
    path: str
    fingerprint: str
    params: dict[str, Any]
    nbytes: int
    tokens: int
    members: list[Member]
    round: int = 0


class BatchStore:
    """The batch tables, on the checkpoint's connection (made on first use)."""

    def __init__(self, cp: Checkpoint, readonly: bool = False) -> None:
        self.cp = cp
        if not readonly:
            with cp.transaction() as tx:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        tx.db.execute(stmt)

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self.cp.read(lambda db: db.execute(sql, args).fetchall())
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):  # a state from before batch mode
                return []
            raise

    # -- writes --

    def add(self, new: NewBatch, closing: int | None = None) -> BatchRow:
        """Record a batch and its members in one transaction; with ``closing``, close that
        batch in the same one (its unfinished members are the new one's)."""
        now = time.time()
        with self.cp.transaction() as tx:
            prefix = _prefix(tx.db)
            cur = tx.db.execute(
                "INSERT INTO batches (key, job, provider, api, state, path, fingerprint, params,"
                " requests, bytes, tokens, round, created_at)"
                " VALUES ('', ?, ?, ?, 'packed', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new.job,
                    new.provider,
                    new.api,
                    new.path,
                    new.fingerprint,
                    orjson.dumps(new.params).decode(),
                    len(new.members),
                    new.nbytes,
                    new.tokens,
                    new.round,
                    now,
                ),
            )
            assert cur.lastrowid is not None
            local = cur.lastrowid
            tx.db.execute(
                "UPDATE batches SET key = ? WHERE id = ?", (batch_key(prefix, local), local)
            )
            tx.db.executemany(
                f"INSERT OR REPLACE INTO batch_items VALUES ({_MARKS})",
                [
                    (
                        m.custom_id,
                        local,
                        m.source_id,
                        m.seq,
                        m.line,
                        m.end,
                        m.offset,
                        m.length,
                        orjson.dumps(m.fields).decode(),
                        None if m.meta is None else orjson.dumps(m.meta).decode(),
                        m.sent_context,
                        m.prompt_chars,
                        m.reserved,
                        m.tries,
                    )
                    for m in new.members
                ],
            )
            if closing is not None:
                _close(tx.db, closing, now)
            row = tx.db.execute(f"SELECT {_COLUMNS} FROM batches WHERE id = ?", (local,)).fetchone()
        return BatchRow(*row)

    def uploaded(self, local: int, file_id: str) -> None:
        self._update(local, "state = 'uploaded', input_file_id = ?", (file_id,))

    def submitted(self, local: int, obj: dict[str, Any]) -> None:
        self._update(
            local,
            "state = 'submitted', remote_id = ?, remote_status = ?, submitted_at = ?",
            (obj["id"], obj.get("status"), time.time()),
        )

    def observed(self, local: int, obj: dict[str, Any]) -> None:
        counts = obj.get("request_counts") or {}
        self._update(
            local,
            "remote_status = ?, output_file_id = ?, error_file_id = ?, completed = ?, failed = ?",
            (
                obj.get("status"),
                obj.get("output_file_id"),
                obj.get("error_file_id"),
                int(counts.get("completed") or 0),
                int(counts.get("failed") or 0),
            ),
        )

    def close(self, local: int, reason: str | None = None) -> None:
        with self.cp.transaction() as tx:
            _close(tx.db, local, time.time(), reason)

    def _update(self, local: int, sets: str, args: tuple[Any, ...]) -> None:
        with self.cp.transaction() as tx:
            tx.db.execute(f"UPDATE batches SET {sets} WHERE id = ?", (*args, local))

    # -- reads --

    def open_batches(self, job: str | None = None) -> list[BatchRow]:
        where = "state != 'closed'" + (" AND job = ?" if job is not None else "")
        rows = self._read(
            f"SELECT {_COLUMNS} FROM batches WHERE {where} ORDER BY id", (job,) if job else ()
        )
        return [BatchRow(*r) for r in rows]

    def recent(self, limit: int = 50) -> list[BatchRow]:
        """Open batches, then the latest closed ones: for ``synthd status`` and /metrics."""
        rows = self._read(
            f"SELECT {_COLUMNS} FROM batches ORDER BY state = 'closed', id DESC LIMIT ?", (limit,)
        )
        return [BatchRow(*r) for r in rows]

    def members(self, local: int) -> list[Member]:
        rows = self._read(
            "SELECT custom_id, source_id, seq, line, end_offset, offset, length, fields, meta,"
            " sent_context, prompt_chars, reserved, tries FROM batch_items WHERE batch = ?",
            (local,),
        )
        return [
            Member(
                r[0], r[1], r[2], r[3], r[4], r[5], r[6], orjson.loads(r[7]),
                None if r[8] is None else orjson.loads(r[8]), r[9], r[10], r[11], r[12],
            )
            for r in rows
        ]  # fmt: skip

    def done(self, local: int) -> set[str]:
        """custom_ids of this batch's items that are already done (a result committed)."""
        rows = self._read(
            "SELECT b.custom_id FROM batch_items b JOIN items i"
            " ON i.source_id = b.source_id AND i.seq = b.seq WHERE b.batch = ?",
            (local,),
        )
        return {r[0] for r in rows}

    def batched_seqs(self, source_id: int) -> frozenset[int]:
        """Items of a source waiting in an open batch: a resumed file skips them."""
        rows = self._read(
            "SELECT i.seq FROM batch_items i JOIN batches b ON b.id = i.batch"
            " WHERE i.source_id = ? AND b.state != 'closed'",
            (source_id,),
        )
        return frozenset(r[0] for r in rows)

    def sources(self, ids: set[int]) -> dict[int, Source]:
        wanted = sorted(ids)
        out: dict[int, Source] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._read(
                "SELECT id, job, claim, name, path, fingerprint, resume_seq, resume_line,"
                f" resume_offset FROM sources WHERE id IN ({marks})",
                tuple(chunk),
            ):
                out[row[0]] = Source(*row)
        return out


def _close(db: sqlite3.Connection, local: int, now: float, reason: str | None = None) -> None:
    db.execute(
        "UPDATE batches SET state = 'closed', closed_at = ?, reason = coalesce(?, reason)"
        " WHERE id = ?",
        (now, reason, local),
    )
    db.execute("DELETE FROM batch_items WHERE batch = ?", (local,))


def _prefix(db: sqlite3.Connection) -> str:
    """The state's claim prefix (drawn once): two states never share a batch key."""
    row = db.execute("SELECT value FROM meta WHERE key = 'claim_prefix'").fetchone()
    if row is None:
        value = secrets.token_hex(4)
        db.execute("INSERT INTO meta (key, value) VALUES ('claim_prefix', ?)", (value,))
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('claims', 0)")
        return value
    return str(row[0])


COMPLETION_WINDOW_S = 24 * 3600


def describe(row: BatchRow, now: float) -> dict[str, Any]:
    """A batch as ``synthd status`` shows it: state, counts, age, expected finish (unix s).

    The expected finish extrapolates the provider's counts; before any line is done it is
    the end of the completion window, the latest the provider promises.
    """
    state = row.remote_status or row.state
    expected: float | None = None
    if row.state == "submitted" and row.submitted_at is not None:
        expected = row.submitted_at + COMPLETION_WINDOW_S
        finished = row.completed + row.failed
        if 0 < finished < row.requests:
            expected = min(expected, now + (now - row.submitted_at) * (row.requests / finished - 1))
    return {
        "job": row.job,
        "batch": row.key,
        "id": row.remote_id,
        "state": "closed" if row.state == "closed" else state,
        "requests": row.requests,
        "completed": row.completed,
        "failed": row.failed,
        "round": row.round,
        "age_s": round(now - row.created_at, 1),
        "expected_finish": None if expected is None else round(expected, 1),
        "reason": row.reason,
    }


def read_batches(state: Path, limit: int = 20) -> list[BatchRow]:
    """Open batches and the latest closed ones, read-only; none when there is no state."""
    if not state.exists():
        return []
    cp = Checkpoint(state, readonly=True)
    try:
        return BatchStore(cp, readonly=True).recent(limit)
    finally:
        cp.close()
