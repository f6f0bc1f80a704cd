"""The near-duplicate index, in the checkpoint database (``synthd.db``).

Tables (beside the checkpoint's own, on its connection, made when it is opened):
  near_kept   one row per kept text: its record id and MinHash signature
  near_bands  one row per LSH band key: the first kept text that had it

Written in the same transaction as the records (so it survives any crash exactly as
they do and costs no memory in the daemon); the keys come from ``synthd.neardup``. The
writer computes a batch's keys before its transaction opens (``batch_keys``), then asks
``near_reject`` of each new record inside it. The functions that touch the index take the
transaction's connection (``Transaction.db``) and block.
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
from collections.abc import Mapping
from typing import Any

from synthd import neardup
from synthd.config import Config
from synthd.models import Outcome
from synthd.neardup import Key, Params, similarity

SCHEMA = """
CREATE TABLE IF NOT EXISTS near_kept (
  id INTEGER PRIMARY KEY, job TEXT NOT NULL, record TEXT NOT NULL, sig BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS near_bands (band INTEGER PRIMARY KEY, kept INTEGER NOT NULL);
"""

BatchKeys = dict[tuple[int, int], list[Key]]  # (outcome, record) in a batch -> its texts' keys


def params_by_job(config: Config) -> dict[str, Params]:
    """The jobs that drop near-duplicates, with their settings."""
    return {
        name: p
        for name, job in config.jobs.items()
        if (p := neardup.params_of(job.config.filters)) is not None
    }


def batch_keys(near: Mapping[str, Params], outcomes: list[Outcome]) -> BatchKeys:
    """(outcome, record) -> the near-duplicate keys of that record's texts."""
    keys: BatchKeys = {}
    for i, o in enumerate(outcomes):
        if (params := near.get(o.source.job)) is not None:
            for j, rec in enumerate(o.lines.get("records", ())):
                keys[i, j] = params.keys(rec)
    return keys


def near_reject(
    db: sqlite3.Connection,
    near: Mapping[str, Params],
    job: str,
    rec: dict[str, Any],
    keys: list[Key] | None,
) -> dict[str, Any] | None:
    """The reject line if ``rec`` is a near-duplicate; else None, and it joins the index."""
    if not keys:
        return None
    params = near[job]
    match = near_match(db, job, keys, params.threshold)
    if match is None:
        near_keep(db, job, rec["id"], keys)
        return None
    kept, sim = match
    return {
        **rec,
        "reason": "near_duplicate",
        "detail": f"{params.field} {sim:.2f} similar to {kept}",
        "kept": kept,
        "similarity": round(sim, 4),
    }


@functools.cache
def _job_salt(job: str) -> int:
    """Mixed into a job's band keys (all below 2**61), so that jobs share one table
    (an integer primary key: the fastest SQLite has) but never each other's texts."""
    return int.from_bytes(hashlib.blake2b(job.encode(), digest_size=8).digest()) >> 3


def near_match(
    db: sqlite3.Connection, job: str, keys: list[Key], threshold: float
) -> tuple[str, float] | None:
    """The kept text most like any of ``keys`` at ``threshold`` or above, as
    (its record id, the estimated similarity); None if there is none.

    A band key is a candidate only; the stored signatures decide. A band key holds
    the first kept text that had it: a later kept text with the same band is still
    found through its other bands (two kept texts share a band only when they are
    alike, though less than the threshold).
    """
    best: tuple[str, float] | None = None
    salt = _job_salt(job)
    for k in keys:
        marks = ",".join("?" * len(k.bands))
        rows = db.execute(
            "SELECT record, sig FROM near_kept WHERE id IN"
            f" (SELECT kept FROM near_bands WHERE band IN ({marks}))",
            [b ^ salt for b in k.bands],
        ).fetchall()
        for record, sig in rows:
            sim = similarity(k.sig, sig)
            if sim >= threshold and (best is None or sim > best[1]):
                best = (record, sim)
    return best


def near_keep(db: sqlite3.Connection, job: str, record_id: str, keys: list[Key]) -> None:
    """Add a kept record's texts to the job's near-duplicate index."""
    salt = _job_salt(job)
    for k in keys:
        cur = db.execute(
            "INSERT INTO near_kept (job, record, sig) VALUES (?, ?, ?)", (job, record_id, k.sig)
        )
        db.executemany(
            "INSERT OR IGNORE INTO near_bands (band, kept) VALUES (?, ?)",
            [(b ^ salt, cur.lastrowid) for b in k.bands],
        )
