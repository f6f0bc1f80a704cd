"""The ``[jobs.NAME]`` tables: a job's keys and the sections it nests (filters, output,
export, judge), the checks across jobs that make a pipeline (``check_stages``) and the
passage size of an ``input = "chunks"`` job (``chunk_tokens``). Pure: ``synthd.config``
reads the files a job names and calls these while it resolves a job; every failure is a
``ConfigError`` naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from synthd import stages
from synthd.config_base import Frozen, PositiveFloat, PositiveInt
from synthd.errors import ConfigError
from synthd.prompts import Template

Api = Literal["chat", "completions"]
InputKind = Literal["file", "lines", "jsonl", "chunks"]
LongPrompt = Literal["truncate", "reject"]
Mode = Literal["online", "batch"]
BatchFallback = Literal["none", "online"]


class FiltersConfig(Frozen):
    """The validation chain; see ``synthd.filters`` for the order it runs in."""

    strip: bool = True
    split: Literal["none", "lines", "paragraphs", "turns"] = "none"
    strip_numbering: bool = False
    keep_lines_matching: str | None = None
    drop_lines_matching: str | None = None
    min_items: Annotated[int, Field(ge=0)] = 0
    max_items: PositiveInt | None = None
    min_chars: Annotated[int, Field(ge=0)] = 1
    max_chars: PositiveInt | None = None
    drop_if_matching: str | None = None
    single_paragraph: bool = False
    require_json: bool = False
    json_schema: Path | None = None
    speakers: tuple[str, ...] = ()
    min_turns: Annotated[int, Field(ge=0)] = 0
    reject_finish_reasons: tuple[str, ...] = ("content_filter",)
    dedupe: bool = True
    # Near-duplicates (synthd.neardup): estimated Jaccard similarity over word shingles at or
    # above which a text is rejected as a near-duplicate of one kept before. None: off.
    near_dedupe: Annotated[float, Field(gt=0, le=1)] | None = None
    near_dedupe_field: Literal["completion", "items", "turns"] = "completion"
    near_dedupe_shingle_words: Annotated[int, Field(ge=1, le=8)] = 1


class OutputConfig(Frozen):
    shard_max_records: PositiveInt = 10_000
    shard_max_bytes: PositiveInt = 64_000_000


class ExportConfig(Frozen):
    """How ``synthd export`` turns this job's records into fine-tuning pairs."""

    separator: str = "\n\n###\n\n"  # ends every prompt of a prompt-completion export
    completion_stop: str = " END"  # ends every completion of a prompt-completion export
    system: str | None = None  # system message for chat exports; default: the job's; "": none
    user_from: Literal["prompt", "context"] = "context"
    # The chat user message made from the record's fields ({{context}}, {{item}}): wins over
    # user_from; a pipeline's last stage puts its passage and question together this way.
    user_template: str | None = None
    context_tokens: PositiveInt = 16_385  # longer examples fail the check
    price_per_mtok: Annotated[float, Field(ge=0)] = 0.0  # training price, for the estimate
    epochs: PositiveInt = 3  # training epochs, for the cost estimate


class JudgeConfig(Frozen):
    """A judge job: its prompt is the rubric; its answer a JSON ``score`` and ``reason``."""

    min_score: float  # a verdict below this sends the judged record to rejects
    max_score: PositiveFloat = 10.0  # a score above this is an invalid verdict


class JobConfig(Frozen):
    prompt: Path
    system_prompt: Path | None = None
    provider: str = "default"
    api: Api = "chat"
    model: str
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: PositiveInt = 256
    stop: tuple[str, ...] = ()
    samples: PositiveInt = 1
    input: InputKind = "file"
    text_field: str = "text"
    chunk_tokens: PositiveInt | None = None  # input = "chunks": default fits max_prompt_tokens
    chunk_overlap: Annotated[int, Field(ge=0)] = 0  # tokens a passage repeats of the one before
    max_prompt_tokens: PositiveInt | None = None
    on_long_prompt: LongPrompt = "reject"
    extra: dict[str, Any] = Field(default_factory=dict)
    mode: Mode = "online"
    batch_max_requests: Annotated[int, Field(gt=0, le=50_000)] = 10_000
    batch_max_bytes: Annotated[int, Field(gt=0, le=200 * 1024 * 1024)] = 100_000_000
    batch_max_wait_s: PositiveFloat = 300.0
    batch_max_resubmits: Annotated[int, Field(ge=0)] = 3
    batch_fallback: BatchFallback = "none"
    batch_poll_s: PositiveFloat = 30.0
    batch_poll_max_s: PositiveFloat = 600.0
    batch_delete_files: bool = True
    filters: FiltersConfig = FiltersConfig()
    output: OutputConfig = OutputConfig()
    export: ExportConfig = ExportConfig()
    # A pipeline stage: items come from this job's committed records, not the spool.
    from_: str | None = Field(default=None, alias="from")
    per: stages.Per = "record"
    judge: JudgeConfig | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v


DEFAULT_CHUNK_TOKENS = 1000  # input = "chunks" without max_prompt_tokens to fit
_CHUNK_ROOM = 0.9  # of what the prompt leaves: the estimate learns, and may count more


def chunk_tokens(
    file: str, key: str, cfg: JobConfig, template: Template, system: str | None
) -> int:
    """A passage's size for ``input = "chunks"``: as given, or what fits the prompt limit
    once the template, the system prompt and the other fields are in."""
    if cfg.input != "chunks":
        return 0
    size = cfg.chunk_tokens
    if size is None:
        if cfg.max_prompt_tokens is None:
            size = DEFAULT_CHUNK_TOKENS
        else:
            frame = len(template.render(dict.fromkeys(template.fields, "x" * 40)))
            taken = -(-(frame + len(system or "")) // 4)
            size = int((cfg.max_prompt_tokens - taken) * _CHUNK_ROOM)
            if size < 16:
                raise ConfigError(
                    file,
                    f"{key}.max_prompt_tokens",
                    f"leaves {size} tokens for a passage once the prompt is in; "
                    "raise it or set chunk_tokens",
                )
    if cfg.chunk_overlap * 2 > size:
        raise ConfigError(
            file, f"{key}.chunk_overlap", f"must be at most half of chunk_tokens ({size})"
        )
    return size


def check_stages(file: str, jobs: dict[str, JobConfig]) -> frozenset[str]:
    """Pipelines: ``from`` names a job, no cycle, ``per = "item"`` has items, a judge
    has something to judge. Returns the stages whose items carry an ``item``."""
    stages.check_graph(file, {name: cfg.from_ for name, cfg in jobs.items()})
    for name, cfg in jobs.items():
        key = f"jobs.{name}"
        if cfg.from_ is not None and cfg.per == "item" and jobs[cfg.from_].filters.split == "none":
            raise ConfigError(
                file,
                f"{key}.per",
                f"per = 'item' needs job {cfg.from_!r} to split its completions into items "
                "(its filters.split)",
            )
        if cfg.judge is not None and cfg.from_ is None:
            raise ConfigError(file, f"{key}.judge", "a judge scores other records: set from")
        if cfg.judge is not None and cfg.samples != 1:
            raise ConfigError(file, f"{key}.samples", "a judge gives one verdict: samples = 1")
        if cfg.judge is not None and cfg.judge.min_score > cfg.judge.max_score:
            raise ConfigError(file, f"{key}.judge.min_score", "above judge.max_score")
    upstream = {name: cfg.from_ for name, cfg in jobs.items()}
    per = {name: cfg.per for name, cfg in jobs.items()}
    return frozenset(n for n in jobs if stages.carries_item(upstream, per, n))


def fillable(cfg: JobConfig) -> frozenset[str]:
    """The placeholders a spool job's input kind fills (a ``jsonl`` line may carry any)."""
    base = {"context", "source", "line"}
    if cfg.input == "lines":
        base.add("topic")
    return frozenset(base)
