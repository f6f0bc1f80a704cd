"""Pipeline hand-off's durable state, in the checkpoint database (``synthd.db``).

Tables (beside the checkpoint's own, on its connection, made when it is opened):
  parents  upstream records a pipeline stage makes items from (``synthd.stages``)
  handoff  one row per stage item, written in the commit of its parent record; the
           stage's one ``sources`` row (status 'stage') and ``items`` say which are done

A stage item is inserted in the same transaction as its parent record (``hand_over``),
so it exists iff that record is committed; ``synthd.handoff`` feeds the rows to the stage
in order. The functions take the connection: the writer's transaction
(``Transaction.db``) for ``hand_over``, ``Checkpoint.read`` and ``Checkpoint.write`` for
the rest. Every one blocks.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import orjson

from synthd import crashpoints, stages
from synthd.config import Config
from synthd.models import Source

SCHEMA = """
CREATE TABLE IF NOT EXISTS parents (
  id TEXT PRIMARY KEY,              -- an upstream record's id
  job TEXT NOT NULL,                -- the job that wrote it
  fingerprint TEXT NOT NULL,        -- that job's fingerprint when it wrote it
  fields BLOB NOT NULL              -- JSON: what its stages fill placeholders with
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS handoff (
  job TEXT NOT NULL,                -- the stage (a job with from = ...)
  seq INTEGER NOT NULL,             -- 0, 1, 2 ... per stage: the item's seq in its stage source
  parent TEXT NOT NULL,
  idx INTEGER NOT NULL,             -- the element of the parent's items (per = "item"), or 0
  PRIMARY KEY (job, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS handoff_child ON handoff (job, parent, idx);
"""

StageLinks = dict[str, list[tuple[str, "stages.Per"]]]  # upstream job -> [(stage, per)]


@dataclass(frozen=True, slots=True)
class StageRow:
    """One stage item as the hand-off table holds it."""

    seq: int
    parent: str
    idx: int
    upstream: str  # the parent's job
    parent_fingerprint: str
    fields: bytes  # JSON of stages.parent_fields(parent record)


def stage_links(config: Config) -> StageLinks:
    """Each job's pipeline stages and how they take its records (``from``, ``per``)."""
    links: StageLinks = {}
    for name, job in config.jobs.items():
        if job.config.from_ is not None:
            links.setdefault(job.config.from_, []).append((name, job.config.per))
    return links


def stage_source(db: sqlite3.Connection, job: str, fingerprint: str) -> Source:
    """The one source row a stage's items belong to, made on first use (in a transaction).

    Its resume point and ``items`` rows track the stage's items as a spool
    file's do; its status ``stage`` keeps it out of the spool's active sources.
    """
    row = db.execute(
        "SELECT id, job, claim, name, path, fingerprint, resume_seq, resume_line,"
        " resume_offset FROM sources WHERE job = ? AND status = 'stage'",
        (job,),
    ).fetchone()
    if row is not None:
        return Source(*row)
    claim = f"stage:{job}"
    cur = db.execute(
        "INSERT INTO sources (job, claim, name, path, fingerprint, status, claimed_at)"
        " VALUES (?, ?, ?, '', ?, 'stage', ?)",
        (job, claim, f"<{job}>", fingerprint, time.time()),
    )
    assert cur.lastrowid is not None
    return Source(cur.lastrowid, job, claim, f"<{job}>", "", fingerprint)


def stage_rows(db: sqlite3.Connection, job: str, from_seq: int, limit: int) -> list[StageRow]:
    """A stage's items from ``from_seq`` on, in order, with their parents' fields."""
    rows = db.execute(
        "SELECT h.seq, h.parent, h.idx, p.job, p.fingerprint, p.fields FROM handoff h"
        " JOIN parents p ON p.id = h.parent WHERE h.job = ? AND h.seq >= ?"
        " ORDER BY h.seq LIMIT ?",
        (job, from_seq, limit),
    ).fetchall()
    return [StageRow(*r) for r in rows]


def stage_pending(db: sqlite3.Connection, job: str) -> list[StageRow]:
    """A stage's items not done yet, in order (for dry-run; reads the whole backlog)."""
    rows = db.execute(
        "SELECT h.seq, h.parent, h.idx, p.job, p.fingerprint, p.fields FROM handoff h"
        " JOIN parents p ON p.id = h.parent"
        " LEFT JOIN sources s ON s.job = h.job AND s.status = 'stage'"
        " WHERE h.job = ? AND NOT EXISTS"
        " (SELECT 1 FROM items i WHERE i.source_id = s.id AND i.seq = h.seq)"
        " ORDER BY h.seq",
        (job,),
    ).fetchall()
    return [StageRow(*r) for r in rows]


def stage_totals(db: sqlite3.Connection) -> dict[str, int]:
    """Items handed to each stage so far (its backlog is this less its done items)."""
    return dict(db.execute("SELECT job, count(*) FROM handoff GROUP BY job"))


def hand_over(
    db: sqlite3.Connection, records: list[tuple[str, dict[str, Any]]], links: StageLinks
) -> int:
    """In the commit of upstream ``records`` (job, record line): their stage items.

    So a stage item exists iff its parent record is committed. Idempotent per
    (stage, parent, index); seqs are contiguous per stage. Returns the rows added.
    """
    added = 0
    next_seq: dict[str, int] = {}
    for job, rec in records:
        kids = [(st, per, n) for st, per in links.get(job, ()) if (n := stages.children(rec, per))]
        if not kids:
            continue
        parent = str(rec["id"])
        db.execute(
            "INSERT OR IGNORE INTO parents (id, job, fingerprint, fields) VALUES (?, ?, ?, ?)",
            (
                parent,
                job,
                str(rec.get("fingerprint", "")),
                orjson.dumps(stages.parent_fields(rec)),
            ),
        )
        for stage, _, n in kids:
            if stage not in next_seq:
                row = db.execute(
                    "SELECT coalesce(max(seq) + 1, 0) FROM handoff WHERE job = ?", (stage,)
                ).fetchone()
                next_seq[stage] = int(row[0])
            for idx in range(n):
                cur = db.execute(
                    "INSERT OR IGNORE INTO handoff (job, seq, parent, idx) VALUES (?, ?, ?, ?)",
                    (stage, next_seq[stage], parent, idx),
                )
                if cur.rowcount == 1:
                    next_seq[stage] += 1
                    added += 1
    return added


class Handover:
    """The records of one commit that feed a stage, handed over in that commit."""

    __slots__ = ("links", "records")

    def __init__(self, links: StageLinks) -> None:
        self.links = links
        self.records: list[tuple[str, dict[str, Any]]] = []

    def offer(self, job: str, record: dict[str, Any]) -> None:
        """A record the commit writes; kept if its job has stages."""
        if job in self.links:
            self.records.append((job, record))

    def commit(self, db: sqlite3.Connection) -> None:
        """Insert the kept records' stage items, in the caller's transaction."""
        if self.records:
            hand_over(db, self.records, self.links)
            crashpoints.hit("stage_handed_over")
