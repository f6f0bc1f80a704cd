"""Pipelines: jobs that take their input from another job's records. Pure.

A job with ``from = "questions"`` is a *stage*: its items are made from the records
``questions`` commits, one per record (``per = "record"``) or one per element of a
record's ``items`` (``per = "item"``). This module holds what needs no I/O: the graph
checks (a missing upstream job, a cycle), the placeholders a stage can fill, what of
an upstream record is kept for its stages (``parent_fields``), which children a record
has (``children``) and the fields of one child item (``item_fields``). The hand-off
itself (rows written in the writer's commit) is in ``synthd.checkpoint``; feeding a
stage from those rows is in ``synthd.handoff``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from synthd.errors import ConfigError

Per = Literal["record", "item"]

# What a stage's template may name: the upstream record's context (its passage), its
# completion, the element it was made from (or the one its parent carried), its id.
STAGE_FIELDS = frozenset({"context", "completion", "item", "parent", "source", "line"})


def check_graph(file: str, upstream: Mapping[str, str | None]) -> None:
    """Every ``from`` names a job, and no job feeds itself through a chain.

    ``upstream`` maps each job to its ``from`` (None: the spool). Raises ``ConfigError``
    naming ``jobs.NAME.from``.
    """
    for name, up in upstream.items():
        if up is not None and up not in upstream:
            raise ConfigError(file, f"jobs.{name}.from", f"no job named {up!r}")
    for name in upstream:
        path = [name]
        up = upstream[name]
        while up is not None:
            if up == name:
                chain = " -> ".join([name, *reversed(path[1:]), name])  # the data's flow
                raise ConfigError(file, f"jobs.{name}.from", f"a cycle: {chain}")
            if up in path:
                break  # a cycle not through this job: reported when its own job is checked
            path.append(up)
            up = upstream[up]


def downstream(upstream: Mapping[str, str | None]) -> dict[str, list[str]]:
    """Each job's stages, in config order (only jobs that have some)."""
    out: dict[str, list[str]] = {}
    for name, up in upstream.items():
        if up is not None:
            out.setdefault(up, []).append(name)
    return out


def chain_of(upstream: Mapping[str, str | None], job: str) -> list[str]:
    """The jobs ``job`` depends on, from the first stage (fed by the spool) to ``job``."""
    chain = [job]
    while (up := upstream[chain[0]]) is not None:
        chain.insert(0, up)
    return chain


def carries_item(upstream: Mapping[str, str | None], per: Mapping[str, Per], job: str) -> bool:
    """Whether ``job``'s items have an ``item`` field: made per item, or inherited."""
    while (up := upstream.get(job)) is not None:
        if per[job] == "item":
            return True
        job = up
    return False


def parent_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """What of an upstream record its stages need, kept with the hand-off rows."""
    kept: dict[str, Any] = {
        "context": record.get("context", ""),
        "completion": record.get("completion", ""),
    }
    for key in ("items", "item"):
        if key in record:
            kept[key] = record[key]
    return kept


def children(record: Mapping[str, Any], per: Per) -> int:
    """How many items a committed upstream record gives a stage."""
    if per == "record":
        return 1
    items = record.get("items")
    return len(items) if isinstance(items, list) else 0


def item_fields(kept: Mapping[str, Any], parent: str, index: int, per: Per) -> dict[str, str]:
    """The placeholders of child ``index`` of a record (``kept`` as ``parent_fields`` made)."""
    fields = {
        "context": str(kept.get("context", "")),
        "completion": str(kept.get("completion", "")),
        "parent": parent,
        "line": str(index + 1),
    }
    if per == "item":
        items = kept.get("items") or []
        fields["item"] = str(items[index]) if index < len(items) else ""
    elif "item" in kept:
        fields["item"] = str(kept["item"])
    return fields


def child_name(upstream_job: str, parent: str, index: int) -> str:
    """A child item's name, in place of a spool file's: where it came from, readable."""
    return f"{upstream_job}/{parent}/{index}"


# -- dry-run's projection of a chain from its first stage's backlog -----------------------

DEFAULT_ITEMS_PER_RECORD = 5.0  # per item, with nothing seen yet and no max_items to go by


def fan_out(per: Per, observed: float | None, max_items: int | None, min_items: int) -> float:
    """Items a stage gets per upstream record: one per record; per item, the ratio the
    checkpoint has seen, else the upstream's ``max_items`` (an upper bound), else a guess."""
    if per == "record":
        return 1.0
    if observed is not None:
        return observed
    if max_items is not None:
        return float(max_items)
    return max(float(min_items), DEFAULT_ITEMS_PER_RECORD)


def stage_prompt_chars(
    frame_chars: int, fields: frozenset[str], context: float, completion: float, fan: float
) -> float:
    """A projected stage item's prompt size: its template's own text, the passage, the
    upstream completion (at most its ``max_tokens``) and one element of it."""
    chars = float(frame_chars)
    if "context" in fields:
        chars += context
    if "completion" in fields:
        chars += completion
    if "item" in fields:
        chars += completion / max(fan, 1.0)
    return chars
