"""Typed, frozen configuration, built and checked once at start-up.

``load(path)`` reads TOML, validates every key with pydantic, then checks what
pydantic cannot see: prompt files exist, placeholders can be filled by the
job's input kind, regexes compile, the API key is not in the file. Every
failure is one ``ConfigError`` naming the file, the key and the problem. This
is also the only module that reads environment variables.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from synthd import stages
from synthd.errors import ConfigError
from synthd.fingerprint import job_fingerprint
from synthd.prompts import Template

Api = Literal["chat", "completions"]
InputKind = Literal["file", "lines", "jsonl", "chunks"]
Transport = Literal["http", "sdk"]
TokenAccounting = Literal["reserved", "used"]
LongPrompt = Literal["truncate", "reject"]
RedisDown = Literal["pause", "split"]
Mode = Literal["online", "batch"]
BatchFallback = Literal["none", "online"]

PositiveInt = Annotated[int, Field(gt=0)]
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PositiveFloat = Annotated[float, Field(gt=0)]
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProviderConfig(_Frozen):
    """One API endpoint and the budget synthd keeps to when calling it."""

    base_url: str = "http://127.0.0.1:8900/v1"
    api_key_env: str = "OPENAI_API_KEY"
    rpm: PositiveInt = 3500
    tpm: PositiveInt = 2_000_000
    max_in_flight: PositiveInt = 256
    burst_s: PositiveFloat = 1.0
    tpm_counts: TokenAccounting = "reserved"
    request_timeout_s: PositiveFloat = 120.0
    connect_timeout_s: PositiveFloat = 10.0
    max_attempts: PositiveInt = 6
    backoff_base_s: PositiveFloat = 0.5
    backoff_max_s: PositiveFloat = 30.0
    ramp_s: Annotated[float, Field(ge=0)] = 5.0
    retry_after_max_s: Annotated[float, Field(ge=0)] = 120.0
    transport: Transport = "http"
    adapt_to_headers: bool = True
    batch_enqueued_tokens: PositiveInt = 20_000_000  # batch mode: tokens in batches at once

    @field_validator("api_key_env")
    @classmethod
    def _variable_name(cls, v: str) -> str:
        if not _ENV_NAME.match(v):
            # Never echo the value: it is often a key pasted in the wrong place.
            raise ValueError(
                "must be the name of an environment variable (letters, digits, _), "
                "not the key itself"
            )
        return v

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class PathsConfig(_Frozen):
    spool: Path = Path("spool")
    out: Path = Path("out")
    state: Path = Path("state")


class ServiceConfig(_Frozen):
    """Daemon behaviour that is not about any one job."""

    listen: str = "127.0.0.1:9464"  # "" turns the HTTP endpoint off
    grace_s: Annotated[float, Field(ge=0)] = 30.0
    scan_interval_s: PositiveFloat = 0.5
    settle_s: Annotated[float, Field(ge=0)] = 1.0
    progress_interval_s: PositiveFloat = 5.0
    commit_interval_s: PositiveFloat = 0.05
    max_line_bytes: PositiveInt = 4_000_000


class CoordinationConfig(_Frozen):
    """Several daemons sharing one budget and one spool through Redis (``docs/scaleout.md``)."""

    redis_url: str
    node: str = Field(default_factory=lambda: _default_node(socket.gethostname()))
    lease_ttl_s: Annotated[float, Field(ge=1, le=15)] = 10.0
    takeover: bool = True
    on_redis_down: RedisDown = "pause"
    block_s: Annotated[float, Field(gt=0, le=1)] = 0.1

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("node")
    @classmethod
    def _node_name(cls, v: str) -> str:
        if not _NODE_NAME.match(v):
            raise ValueError("a node name may hold letters, digits, '_', '-', '.'")
        return v


def _default_node(hostname: str) -> str:
    """The host's short name, made a valid node name."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", hostname.split(".")[0]).lstrip("_.-")
    return name or "node"


class FiltersConfig(_Frozen):
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


class OutputConfig(_Frozen):
    shard_max_records: PositiveInt = 10_000
    shard_max_bytes: PositiveInt = 64_000_000


class ExportConfig(_Frozen):
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


class JudgeConfig(_Frozen):
    """A judge job: its prompt is the rubric; its answer a JSON ``score`` and ``reason``."""

    min_score: float  # a verdict below this sends the judged record to rejects
    max_score: PositiveFloat = 10.0  # a score above this is an invalid verdict


class JobConfig(_Frozen):
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


class Price(_Frozen):
    input_per_mtok: Annotated[float, Field(ge=0)]
    output_per_mtok: Annotated[float, Field(ge=0)]


class _FileModel(_Frozen):
    """The TOML file as written; ``load`` turns it into ``Config``."""

    provider: ProviderConfig | None = None
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    paths: PathsConfig = PathsConfig()
    service: ServiceConfig = ServiceConfig()
    prices: dict[str, Price] = Field(default_factory=dict)
    coordination: CoordinationConfig | None = None
    jobs: dict[str, JobConfig]


@dataclass(frozen=True, slots=True)
class Job:
    """A job ready to run: its config plus the loaded templates."""

    name: str
    config: JobConfig
    template: Template
    system: str | None
    fingerprint: str
    schema: dict[str, Any] | None = None  # the parsed filters.json_schema
    chunk_tokens: int = 0  # input = "chunks": a passage's size, resolved


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon needs. Relative paths are taken from the working directory."""

    source: Path
    providers: dict[str, ProviderConfig]
    paths: PathsConfig
    service: ServiceConfig
    prices: dict[str, Price]
    jobs: dict[str, Job]
    coordination: CoordinationConfig | None = None

    @property
    def node(self) -> str | None:
        """This daemon's node name when it shares a spool with others, else None."""
        return None if self.coordination is None else self.coordination.node

    @property
    def state_dir(self) -> Path:
        """Where this daemon's checkpoint lives: ``state/<node>/`` when it has a node."""
        node = self.node
        return self.paths.state if node is None else self.paths.state / node

    def shard_prefix(self, stream: str) -> str:
        """A stream's shard prefix: the node in it when several daemons share ``out/``."""
        node = self.node
        return stream if node is None else f"{stream}-{node}"

    def api_key(self, provider: str) -> str | None:
        """The key from the provider's variable; None when it is unset or empty."""
        return os.environ.get(self.providers[provider].api_key_env) or None


@dataclass(frozen=True, slots=True)
class SystemdEnv:
    """What a service manager passes a service (sd_notify(3)); all None outside one."""

    notify_socket: str | None  # $NOTIFY_SOCKET: where status datagrams go
    watchdog_usec: str | None  # $WATCHDOG_USEC: the watchdog interval, unparsed
    watchdog_pid: str | None  # $WATCHDOG_PID: the process the watchdog is meant for


def systemd_env() -> SystemdEnv:
    """The manager's variables as they are now (``synthd.notify`` parses them)."""
    env = os.environ
    return SystemdEnv(env.get("NOTIFY_SOCKET"), env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"))


def status_token() -> str | None:
    """The token the status page asks for when the service listens beyond loopback
    (``SYNTHD_STATUS_TOKEN``; see ``synthd.statuspage``); None when unset or empty."""
    return os.environ.get("SYNTHD_STATUS_TOKEN") or None


def crash_at() -> str | None:
    """The crash point a test armed (``SYNTHD_CRASH_AT``, see ``crashpoints``)."""
    return os.environ.get("SYNTHD_CRASH_AT") or None


# Keys that look like a secret written into the file instead of the environment.
_SECRET_KEYS = frozenset({"api_key", "apikey", "key", "token", "secret", "authorization"})
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def load(path: Path) -> Config:
    """Read, validate and resolve a config file. Raises ``ConfigError``."""
    file = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(file, "", "no such file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(file, "", f"cannot read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "", f"not valid TOML: {e}") from e
    _refuse_secrets(file, raw, "")
    try:
        model = _FileModel.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(file, key, _pydantic_message(err)) from e
    return _resolve(path, model)


def _pydantic_message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] == "value_error":  # our own checks; the value may be a secret
        return str(err["msg"]).removeprefix("Value error, ")
    return f"{err['msg']} (got {err.get('input')!r})"


def _refuse_secrets(file: str, node: Any, prefix: str) -> None:
    if not isinstance(node, dict):
        return
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else k
        if k.lower() in _SECRET_KEYS and isinstance(v, str):
            raise ConfigError(
                file,
                key,
                "an API key must not be written in the config file; put it in an "
                "environment variable and name that variable with api_key_env",
            )
        _refuse_secrets(file, v, key)


def _resolve(path: Path, model: _FileModel) -> Config:
    file = str(path)
    providers = dict(model.providers)
    if model.provider is not None:
        if "default" in providers:
            raise ConfigError(file, "provider", "both [provider] and [providers.default] given")
        providers["default"] = model.provider
    if not providers:
        providers["default"] = ProviderConfig()
    if not model.jobs:
        raise ConfigError(file, "jobs", "at least one job is required")
    with_item = _check_stages(file, model.jobs)
    jobs = {
        name: _resolve_job(file, name, cfg, providers, name in with_item)
        for name, cfg in model.jobs.items()
    }
    return Config(
        source=path,
        providers=providers,
        paths=model.paths,
        service=model.service,
        prices=model.prices,
        jobs=jobs,
        coordination=model.coordination,
    )


def _resolve_job(
    file: str,
    name: str,
    cfg: JobConfig,
    providers: dict[str, ProviderConfig],
    with_item: bool = False,
) -> Job:
    key = f"jobs.{name}"
    if not _JOB_NAME.match(name):
        raise ConfigError(file, key, "a job name may hold letters, digits, '_', '-', '.'")
    if cfg.provider not in providers:
        raise ConfigError(file, f"{key}.provider", f"no provider named {cfg.provider!r}")
    template = Template(_read_text(file, f"{key}.prompt", cfg.prompt))
    # JSONL items may carry any field, so only a line can tell (checked per item).
    if cfg.from_ is None:
        fillable = _fillable(cfg)
    else:
        fillable = stages.STAGE_FIELDS if with_item else stages.STAGE_FIELDS - {"item"}
    unfillable = set() if cfg.input == "jsonl" and cfg.from_ is None else template.fields - fillable
    if unfillable:
        missing = ", ".join(sorted(unfillable))
        by = f"input = {cfg.input!r}" if cfg.from_ is None else f"from = {cfg.from_!r}"
        raise ConfigError(
            file,
            f"{key}.prompt",
            f"placeholder {missing} cannot be filled by {by} "
            f"(available: {', '.join(sorted(fillable))})",
        )
    system = None
    if cfg.system_prompt is not None:
        system = _read_text(file, f"{key}.system_prompt", cfg.system_prompt)
    for field in ("keep_lines_matching", "drop_lines_matching", "drop_if_matching"):
        pattern = getattr(cfg.filters, field)
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(file, f"{key}.filters.{field}", f"bad regex: {e}") from e
    schema = None
    if cfg.filters.json_schema is not None:
        schema_key = f"{key}.filters.json_schema"
        try:
            schema = orjson.loads(_read_text(file, schema_key, cfg.filters.json_schema))
        except orjson.JSONDecodeError as e:
            raise ConfigError(file, schema_key, f"not valid JSON: {e}") from e
    if cfg.filters.split == "turns" and len(cfg.filters.speakers) != 2:
        raise ConfigError(file, f"{key}.filters.speakers", "split = 'turns' needs two speakers")
    chunk_tokens = _chunk_tokens(file, key, cfg, template, system)
    chunks = (chunk_tokens, cfg.chunk_overlap) if chunk_tokens else None
    fingerprint = job_fingerprint(cfg, template.text, system, chunks)
    return Job(name, cfg, template, system, fingerprint, schema, chunk_tokens)


DEFAULT_CHUNK_TOKENS = 1000  # input = "chunks" without max_prompt_tokens to fit
_CHUNK_ROOM = 0.9  # of what the prompt leaves: the estimate learns, and may count more


def _chunk_tokens(
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


def _check_stages(file: str, jobs: dict[str, JobConfig]) -> frozenset[str]:
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


def _fillable(cfg: JobConfig) -> frozenset[str]:
    base = {"context", "source", "line"}
    if cfg.input == "lines":
        base.add("topic")
    return frozenset(base)


def _read_text(file: str, key: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(file, key, f"file not found: {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(file, key, f"cannot read {path}: {e}") from e


def parse_listen(listen: str) -> tuple[str, int]:
    """``[service] listen`` as (host, port): the service binds it, ``synthd status`` reads it."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)
