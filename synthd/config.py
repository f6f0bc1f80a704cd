"""Typed, frozen configuration, built and checked once at start-up.

``load(path)`` reads TOML, validates every key with pydantic, then checks what
pydantic cannot see: prompt files exist, placeholders can be filled by the
job's input kind, regexes compile, the API key is not in the file. Every
failure is one ``ConfigError`` naming the file, the key and the problem. This
is also the only module that reads environment variables.

The sections live beside it: ``config_jobs`` (a job's table, pipelines, passage size),
``config_coordination`` (several daemons on one Redis), ``config_base`` (what they share).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, ValidationError, field_validator

from synthd import config_jobs, stages
from synthd.config_base import Frozen, PositiveFloat, PositiveInt
from synthd.config_coordination import CoordinationConfig
from synthd.config_jobs import JobConfig
from synthd.errors import ConfigError
from synthd.fingerprint import job_fingerprint
from synthd.prompts import Template

Transport = Literal["http", "sdk"]
TokenAccounting = Literal["reserved", "used"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ProviderConfig(Frozen):
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


class PathsConfig(Frozen):
    spool: Path = Path("spool")
    out: Path = Path("out")
    state: Path = Path("state")


class ServiceConfig(Frozen):
    """Daemon behaviour that is not about any one job."""

    listen: str = "127.0.0.1:9464"  # "" turns the HTTP endpoint off
    grace_s: Annotated[float, Field(ge=0)] = 30.0
    scan_interval_s: PositiveFloat = 0.5
    settle_s: Annotated[float, Field(ge=0)] = 1.0
    progress_interval_s: PositiveFloat = 5.0
    commit_interval_s: PositiveFloat = 0.05
    max_line_bytes: PositiveInt = 4_000_000


class Price(Frozen):
    input_per_mtok: Annotated[float, Field(ge=0)]
    output_per_mtok: Annotated[float, Field(ge=0)]


class _FileModel(Frozen):
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
    with_item = config_jobs.check_stages(file, model.jobs)
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
        fillable = config_jobs.fillable(cfg)
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
    chunk_tokens = config_jobs.chunk_tokens(file, key, cfg, template, system)
    chunks = (chunk_tokens, cfg.chunk_overlap) if chunk_tokens else None
    fingerprint = job_fingerprint(cfg, template.text, system, chunks)
    return Job(name, cfg, template, system, fingerprint, schema, chunk_tokens)


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
