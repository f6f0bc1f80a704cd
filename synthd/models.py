"""The values that flow through the pipeline, from input line to output line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Source:
    """One claimed spool file and where its unfinished work starts."""

    id: int
    job: str
    claim: str  # short random id, unique per claim; ties output lines to this row
    name: str  # the file's name as dropped in the spool
    path: str  # where the claimed file lives now (spool/<job>/.work/...)
    fingerprint: str
    resume_seq: int = 0
    resume_line: int = 0
    resume_offset: int = 0
    # A pipeline stage's item (``synthd.stages``): the upstream record it was made from.
    parent: str | None = None
    parent_fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One unit of work: a context (or topic, or JSONL object) from a source."""

    source: Source
    seq: int  # the item's ordinal within its source: the checkpoint key
    line: int  # 1-based line in the file, for people
    end: int  # byte offset just past the item: where a resume would start
    fields: dict[str, str]
    meta: dict[str, Any] | None = None
    span: tuple[int, int] | None = None  # a passage's characters in its text (chunks)
    chunk: int = 0  # and its index in that text


@dataclass(frozen=True, slots=True)
class BadLine:
    """An input line that cannot become a work item; it is set aside, not retried."""

    source: Source
    seq: int
    line: int
    end: int
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Choice:
    """One sample of a completion as the provider returned it."""

    text: str | None
    finish_reason: str | None


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful provider response, parsed."""

    choices: list[Choice]
    model: str
    prompt_tokens: int
    completion_tokens: int
    usage_reported: bool  # False when the provider left usage out and we estimated


@dataclass(frozen=True, slots=True)
class Accepted:
    """A completion that passed the job's filters."""

    text: str
    items: list[str] | None = None
    turns: list[tuple[str, str]] | None = None
    data: Any = None  # the parsed JSON, with require_json


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a completion was not kept: ``reason`` is a stable code for counting."""

    reason: str
    detail: str = ""
    score: float | None = None  # a judge's score, when the judge rejected it


@dataclass(slots=True)
class Outcome:
    """Everything one item adds to the output, committed as one unit.

    ``lines`` maps a stream ("records", "rejects", "dead") to the JSON objects
    to append; ``digests`` are the de-duplication keys of the records.
    """

    source: Source
    seq: int
    line: int
    end: int
    state: str  # "record" | "rejected" | "dead" | "bad_input"
    lines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    digests: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    records_written: int = 0  # set by the writer, after de-duplication
    duplicates: int = 0
    near_duplicates: int = 0  # set by the writer too
