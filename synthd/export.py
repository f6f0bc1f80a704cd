"""Shards -> fine-tuning files: ``synthd export JOB --format ... --out FILE``.

Three formats, one example per line:

* ``chat``: ``{"messages": [...]}``. A record with ``turns`` becomes the whole
  conversation (the job's first speaker is the user, the second the
  assistant; a leading assistant turn and a trailing user turn are dropped so
  the chat starts with the user and ends with the assistant). Any other record
  becomes user = its context (or its rendered prompt, ``export.user_from``),
  assistant = its completion. The system message is ``export.system``, else
  the job's system prompt; ``export.system = ""`` leaves it out.
  ``export.user_template`` builds the user message from the record's fields
  instead (a pipeline's passage and question: ``{{context}}`` and ``{{item}}``).
* ``prompt-completion``: ``{"prompt": context + separator, "completion":
  " " + completion + stop}``, as the legacy fine-tuning guide asks.
* ``raw``: the record lines as they are.

The pure part (``Exporter``) turns record lines into examples, drops
duplicates, checks each example (``synthd.exportcheck``) and routes it to the
training or validation file by a hash of (seed, record id): the split does not
depend on order, and a record keeps its side when more records arrive. The
shell (``ShardReader``, ``export_job``) reads the shards and writes the files.

Reading is safe while the daemon writes: closed shards are complete, and of
the open ``.part`` shard only the lines that end in a newline are read. A shard
renamed from ``.part`` to its final name meanwhile is read under its new name.
One caveat: after a crash, and until the daemon restarts, a ``.part`` shard may
end in lines that recovery will cut (their item was not complete); an export
taken in that window includes them.
"""

from __future__ import annotations

import hashlib
import os
import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, get_args

import orjson

from synthd import exportcheck
from synthd.errors import ConfigError, ExportError, TemplateError, Unusable
from synthd.prompts import Template
from synthd.shards import closed_name, job_shard_paths

if TYPE_CHECKING:
    from synthd.config import Config, Job

Format = Literal["chat", "prompt-completion", "raw"]
FORMATS: tuple[str, ...] = get_args(Format)
Split = Literal["train", "val"]


@dataclass(frozen=True, slots=True)
class Spec:
    """What the conversion and the check need from a job's config."""

    system: str | None
    user_from: Literal["prompt", "context"]
    separator: str
    completion_stop: str
    roles: dict[str, str]  # speaker label -> chat role
    context_tokens: int
    epochs: int
    price_per_mtok: float
    user_template: Template | None = None  # export.user_template: wins over user_from

    @classmethod
    def of(cls, job: Job) -> Spec:
        cfg = job.config
        ex = cfg.export
        system = (job.system if ex.system is None else ex.system) or ""
        speakers = cfg.filters.speakers
        roles = dict(zip(speakers, ("user", "assistant"), strict=False))
        return cls(
            system=system.strip() or None,
            user_from=ex.user_from,
            user_template=None if ex.user_template is None else Template(ex.user_template),
            separator=ex.separator,
            completion_stop=ex.completion_stop,
            roles=roles,
            context_tokens=ex.context_tokens,
            epochs=ex.epochs,
            price_per_mtok=ex.price_per_mtok,
        )


# -- pure: one record -> one example ------------------------------------------


def to_example(fmt: Format, spec: Spec, record: Any) -> dict[str, Any]:
    """The training example of a record. Raises ``Unusable``."""
    if not isinstance(record, dict):
        raise Unusable("invalid_record")
    if fmt == "raw":
        return record
    if fmt == "prompt-completion":
        return {
            "prompt": _context(record) + spec.separator,
            "completion": " " + _completion(record) + spec.completion_stop,
        }
    turns = record.get("turns")
    if turns is not None:
        messages = turn_messages(turns, spec.roles)
    else:
        if spec.user_template is not None:
            user = _user_from_template(spec.user_template, record)
        elif spec.user_from == "context":
            user = _context(record)
        else:
            user = _prompt(record)
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": _completion(record)},
        ]
    if spec.system is not None:
        messages.insert(0, {"role": "system", "content": spec.system})
    return {"messages": messages}


def turn_messages(turns: Any, roles: dict[str, str]) -> list[dict[str, str]]:
    """Speaker turns as chat messages, from the user's first turn to the assistant's last."""
    if not isinstance(turns, list):
        raise Unusable("invalid_record")
    messages = []
    for turn in turns:
        speaker = turn.get("speaker") if isinstance(turn, dict) else None
        role = roles.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise Unusable("unknown_speaker")
        messages.append({"role": role, "content": turn.get("text")})
    while messages and messages[0]["role"] == "assistant":
        del messages[0]
    while messages and messages[-1]["role"] == "user":
        del messages[-1]
    return messages


def _user_from_template(template: Template, record: dict[str, Any]) -> str:
    """``export.user_template`` filled from the record's top-level string fields."""
    values = {k: v for k, v in record.items() if isinstance(v, str)}
    try:
        return template.render(values)
    except TemplateError as e:
        raise Unusable("missing_field") from e


def _context(record: dict[str, Any]) -> str:
    context = record.get("context")
    if not isinstance(context, str):
        raise Unusable("missing_context")  # a record written before synthd kept it
    return context


def _completion(record: dict[str, Any]) -> str:
    completion = record.get("completion")
    if not isinstance(completion, str):
        raise Unusable("missing_completion")
    return completion


def _prompt(record: dict[str, Any]) -> str:
    """The rendered prompt: the last user message (chat) or the prompt text."""
    messages = record.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                content = m.get("content")
                if isinstance(content, str):
                    return content
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        return prompt
    raise Unusable("missing_prompt")


def check(fmt: Format, spec: Spec, example: Any) -> exportcheck.Verdict:
    if fmt == "chat":
        return exportcheck.check_chat(example, spec.context_tokens)
    if fmt == "prompt-completion":
        return exportcheck.check_prompt_completion(
            example, spec.context_tokens, spec.separator, spec.completion_stop
        )
    return exportcheck.check_raw(example, spec.context_tokens)


def in_validation(seed: int, key: str, fraction: float) -> bool:
    """Whether ``key`` goes to the validation file: a fixed bucket per (seed, key)."""
    h = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") < fraction * 2**64


def val_path(out: Path) -> Path:
    """``train.jsonl`` -> ``train.val.jsonl``; ``data`` -> ``data.val``."""
    return out.with_name(f"{out.stem}.val{out.suffix}")


# -- pure: the whole export's accounting ----------------------------------------


@dataclass(slots=True)
class Summary:
    """What an export did; ``ok`` is False when any record was left out for a problem."""

    job: str
    fmt: str
    epochs: int
    price_per_mtok: float
    read: int = 0
    torn: int = 0
    train: int = 0
    val: int = 0
    duplicates: int = 0
    failed: int = 0
    problems: Counter[str] = field(default_factory=Counter)
    tokens: list[int] = field(default_factory=list)
    train_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def cost(self) -> float:
        return exportcheck.training_cost(self.train_tokens, self.epochs, self.price_per_mtok)


class Exporter:
    """Turns record lines into examples, one at a time. Pure; keeps the counts.

    ``add`` returns where the example goes and its line (without newline), or
    None for a duplicate or an example that failed the check.
    """

    def __init__(self, job: str, fmt: Format, spec: Spec, val_fraction: float, seed: int) -> None:
        self.fmt = fmt
        self.spec = spec
        self.val_fraction = val_fraction
        self.seed = seed
        self.summary = Summary(job, fmt, spec.epochs, spec.price_per_mtok)
        self._seen: set[bytes] = set()

    def add(self, line: bytes) -> tuple[Split, bytes] | None:
        s = self.summary
        s.read += 1
        try:
            record = orjson.loads(line)
            example = to_example(self.fmt, self.spec, record)
        except orjson.JSONDecodeError:
            self._fail(frozenset({"unreadable_line"}))
            return None
        except Unusable as e:
            self._fail(frozenset({e.kind}))
            return None
        data = line if self.fmt == "raw" else orjson.dumps(example)
        key = hashlib.blake2b(data, digest_size=16).digest()
        if key in self._seen:
            s.duplicates += 1
            return None
        self._seen.add(key)
        verdict = check(self.fmt, self.spec, example)
        if verdict.problems:
            self._fail(verdict.problems)
            return None
        s.tokens.append(verdict.tokens)
        record_id = record.get("id")
        split_key = record_id if isinstance(record_id, str) else key.hex()
        if in_validation(self.seed, split_key, self.val_fraction):
            s.val += 1
            return "val", data
        s.train += 1
        s.train_tokens += verdict.tokens
        return "train", data

    def _fail(self, problems: frozenset[str]) -> None:
        self.summary.failed += 1
        self.summary.problems.update(problems)


def render(summary: Summary, train: Path, val: Path) -> str:
    """The report printed at the end of an export."""
    s = summary
    lines = [f"synthd export: job {s.job}, format {s.fmt}"]
    torn = f" (skipped {s.torn} incomplete last line: shard still being written)" if s.torn else ""
    lines.append(f"  records read   {s.read}{torn}")
    lines.append(f"  written        {s.train} train -> {train}, {s.val} validation -> {val}")
    lines.append(f"  duplicates     {s.duplicates} removed")
    if s.problems:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(s.problems.items()))
        examples = "example" if s.failed == 1 else "examples"
        lines.append(f"  problems       {s.failed} {examples} left out: {kinds}")
    else:
        lines.append("  problems       none")
    if s.tokens:
        t = s.tokens
        rule = "ceil(chars/4)"
        if s.fmt != "prompt-completion":
            rule += f" + {exportcheck.TOKENS_PER_MESSAGE} per message"
        lines.append(
            f"  tokens         min {min(t)}, median {statistics.median(t):g}, max {max(t)} "
            f"per example (estimate: {rule})"
        )
    billed = s.train_tokens * s.epochs
    if s.price_per_mtok:
        price = f"about ${s.cost:.2f}" if s.cost >= 0.01 else "under $0.01"
        lines.append(
            f"  cost           {price}: {s.train_tokens} training tokens x "
            f"{s.epochs} epochs at ${s.price_per_mtok:g} per 1M tokens"
        )
    else:
        lines.append(
            f"  cost           {billed} billed tokens ({s.train_tokens} x {s.epochs} epochs); "
            f"set [jobs.{s.job}.export] price_per_mtok for a price"
        )
    if s.train < exportcheck.MIN_TRAIN_EXAMPLES:
        lines.append(
            f"  note           OpenAI needs at least {exportcheck.MIN_TRAIN_EXAMPLES} "
            "training examples"
        )
    return "\n".join(lines)


# -- the shell: read shards, write files ----------------------------------------


class ShardReader:
    """The complete lines of a job's record shards, oldest first.

    ``torn`` counts last lines without a newline: a write in progress (or cut
    by a crash, which the daemon's recovery removes), never read.
    """

    def __init__(self, folder: Path, prefix: str) -> None:
        self.folder = folder
        self.prefix = prefix
        self.torn = 0

    def __iter__(self) -> Iterator[bytes]:
        for path in job_shard_paths(self.folder, self.prefix):
            f = _open_shard(path)
            if f is None:
                continue
            with f:
                try:
                    for raw in f:
                        if not raw.endswith(b"\n"):
                            self.torn += 1
                        elif raw.strip():
                            yield raw.rstrip(b"\n")
                except OSError as e:
                    raise ExportError(str(path), f"cannot read: {e}") from e


def _open_shard(path: Path) -> BinaryIO | None:
    """Open a shard; a ``.part`` closed since it was listed is read under its final name."""
    candidates = [path]
    if (final := closed_name(path)) != path:
        candidates.append(final)
    for p in candidates:
        try:
            return open(p, "rb")  # the caller closes it
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ExportError(str(p), f"cannot read: {e}") from e
    return None


def export_job(
    config: Config,
    job_name: str,
    fmt: Format,
    out: Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 7,
) -> Summary:
    """Write ``out`` and its ``.val`` sibling (``val_path``); return what was done.

    Blocking. Each file is written to a temporary name and renamed into place,
    so a reader never sees half an export. Raises ``ConfigError`` for an
    unknown job and ``ExportError`` when a shard or an output cannot be used.
    """
    job = config.jobs.get(job_name)
    if job is None:
        known = ", ".join(sorted(config.jobs))
        raise ConfigError(str(config.source), f"jobs.{job_name}", f"no such job (have: {known})")
    spec = Spec.of(job)
    exporter = Exporter(job_name, fmt, spec, val_fraction, seed)
    reader = ShardReader(config.paths.out / job_name, job_name)
    val = val_path(out)
    with _AtomicFile(out) as train_file, _AtomicFile(val) as val_file:
        files = {"train": train_file, "val": val_file}
        for line in reader:
            routed = exporter.add(line)
            if routed is not None:
                files[routed[0]].write(routed[1] + b"\n")
    exporter.summary.torn = reader.torn
    return exporter.summary


class _AtomicFile:
    """Written under a temporary name, renamed into place on a clean exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self._f: BinaryIO | None = None

    def __enter__(self) -> _AtomicFile:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.tmp, "wb")  # closed in __exit__
        except OSError as e:
            raise ExportError(str(self.path), f"cannot write: {e}") from e
        return self

    def write(self, data: bytes) -> None:
        assert self._f is not None
        try:
            self._f.write(data)
        except OSError as e:
            raise ExportError(str(self.path), f"cannot write: {e}") from e

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._f is not None
        try:
            self._f.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
                return
        except OSError as e:
            raise ExportError(str(self.path), f"cannot write: {e}") from e
        finally:
            if self.tmp.exists():
                self.tmp.unlink()
