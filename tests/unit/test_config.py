"""synthd.config: a TOML file -> a frozen Config, or one ConfigError that says what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from synthd.config import Config, ProviderConfig, load
from synthd.errors import ConfigError

MINIMAL = """
[jobs.q]
prompt = "p.txt"
model = "m"
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder holding the default prompt; config paths are relative to it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("Questions about:\n{{context}}\n", encoding="utf-8")
    return tmp_path


def write(folder: Path, text: str, name: str = "synthd.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        load(path)
    return exc.value


def test_minimal_config_loads_with_defaults(folder: Path) -> None:
    cfg = load(write(folder, MINIMAL))

    assert isinstance(cfg, Config)
    assert cfg.source == folder / "synthd.toml"
    assert cfg.providers == {"default": ProviderConfig()}
    job = cfg.jobs["q"]
    assert job.name == "q"
    assert job.config.model == "m"
    assert job.config.input == "file"
    assert job.config.provider == "default"
    assert job.template.fields == frozenset({"context"})
    assert job.template.render({"context": "X"}) == "Questions about:\nX\n"
    assert job.system is None
    assert len(job.fingerprint) == 16
    int(job.fingerprint, 16)


def test_config_objects_are_frozen(folder: Path) -> None:
    cfg = load(write(folder, MINIMAL))
    with pytest.raises(ValueError, match="frozen"):
        cfg.jobs["q"].config.model = "other"  # type: ignore[misc]


def test_api_key_comes_from_the_named_variable(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load(write(folder, '[provider]\napi_key_env = "MY_KEY"\n' + MINIMAL))
    monkeypatch.delenv("MY_KEY", raising=False)
    assert cfg.api_key("default") is None
    monkeypatch.setenv("MY_KEY", "")
    assert cfg.api_key("default") is None
    monkeypatch.setenv("MY_KEY", "sk-from-env")
    assert cfg.api_key("default") == "sk-from-env"


def test_stop_may_be_one_string(folder: Path) -> None:
    cfg = load(write(folder, MINIMAL + 'stop = "END"\n'))
    assert cfg.jobs["q"].config.stop == ("END",)


def test_base_url_loses_its_trailing_slash(folder: Path) -> None:
    cfg = load(write(folder, '[provider]\nbase_url = "https://api.example.com/v1/"\n' + MINIMAL))
    assert cfg.providers["default"].base_url == "https://api.example.com/v1"


def test_system_prompt_is_read(folder: Path) -> None:
    (folder / "sys.txt").write_text("You are terse.", encoding="utf-8")
    cfg = load(write(folder, MINIMAL + 'system_prompt = "sys.txt"\n'))
    assert cfg.jobs["q"].system == "You are terse."


def test_several_providers_and_jobs_naming_them(folder: Path) -> None:
    text = """
[providers.local]
base_url = "http://127.0.0.1:8900/v1"
rpm = 100

[providers.hosted]
base_url = "https://api.example.com/v1"
api_key_env = "HOSTED_KEY"
tpm = 5000

[jobs.a]
prompt = "p.txt"
model = "small"
provider = "local"

[jobs.b]
prompt = "p.txt"
model = "large"
provider = "hosted"
"""
    cfg = load(write(folder, text))
    assert set(cfg.providers) == {"local", "hosted"}
    assert cfg.providers["local"].rpm == 100
    assert cfg.providers["hosted"].tpm == 5000
    assert cfg.providers["hosted"].api_key_env == "HOSTED_KEY"
    assert cfg.jobs["a"].config.provider == "local"
    assert cfg.jobs["b"].config.provider == "hosted"


def test_a_job_on_the_default_provider_needs_one_named_default(folder: Path) -> None:
    text = "[providers.local]\nrpm = 100\n" + MINIMAL
    err = load_error(write(folder, text))
    assert err.key == "jobs.q.provider"
    assert "no provider named 'default'" in err.problem


def filters(table: str, key: str, problem: str, case: str) -> Any:
    """A case whose mistake is in MINIMAL's ``[jobs.q.filters]``, at ``key``."""
    return pytest.param(
        f"{MINIMAL}[jobs.q.filters]\n{table}\n", f"jobs.q.filters.{key}", problem, id=case
    )


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        pytest.param('colour = "red"\n' + MINIMAL, "colour", "unknown key", id="unknown-top-key"),
        pytest.param(MINIMAL + "temprature = 0.5\n", "jobs.q.temprature", "unknown key",
                     id="unknown-job-key"),
        filters("splitt = 'lines'", "splitt", "unknown key", "unknown-filter-key"),
        pytest.param('[jobs.q]\nprompt = "p.txt"\n', "jobs.q.model", "required key is missing",
                     id="missing-model"),
        pytest.param(MINIMAL + "temperature = 3\n", "jobs.q.temperature",
                     "less than or equal to 2", id="temperature-range"),
        pytest.param(MINIMAL + 'samples = "two"\n', "jobs.q.samples", "valid integer",
                     id="samples-type"),
        pytest.param(MINIMAL + 'input = "csv"\n', "jobs.q.input",
                     "'file', 'lines', 'jsonl' or 'chunks'",
                     id="input-choice"),
        pytest.param('[provider]\nrpm = 0\n' + MINIMAL, "provider.rpm", "greater than 0",
                     id="rpm-range"),
        pytest.param('[provider]\nbase_url = "ftp://x"\n' + MINIMAL, "provider.base_url",
                     "http://", id="base-url-scheme"),
        pytest.param("[provider]\nrpm = 10\n", "jobs", "required key is missing", id="no-jobs"),
        pytest.param("jobs = {}\n", "jobs", "at least one job", id="empty-jobs"),
        pytest.param('[jobs."a b"]\nprompt = "p.txt"\nmodel = "m"\n', "jobs.a b",
                     "a job name may hold", id="bad-job-name"),
        pytest.param(MINIMAL.replace("p.txt", "nope.txt"), "jobs.q.prompt",
                     "file not found: nope.txt", id="missing-prompt-file"),
        pytest.param(MINIMAL + 'system_prompt = "sys.txt"\n', "jobs.q.system_prompt",
                     "file not found: sys.txt", id="missing-system-prompt-file"),
        filters("keep_lines_matching = '(unclosed'", "keep_lines_matching", "bad regex",
                "bad-keep-regex"),
        filters("drop_if_matching = '*oops'", "drop_if_matching", "bad regex",
                "bad-drop-if-regex"),
        filters("drop_lines_matching = '[z-a]'", "drop_lines_matching", "bad regex",
                "bad-drop-regex"),
        filters("json_schema = 'schema.json'", "json_schema", "file not found",
                "missing-schema-file"),
        pytest.param(MINIMAL + 'provider = "nope"\n', "jobs.q.provider",
                     "no provider named 'nope'", id="unknown-provider"),
        filters("split = 'turns'\nspeakers = ['User']", "speakers", "two speakers",
                "turns-one-speaker"),
        filters("split = 'turns'", "speakers", "two speakers", "turns-no-speakers"),
        pytest.param('[provider]\nrpm = 1\n[providers.default]\nrpm = 2\n' + MINIMAL,
                     "provider", "both [provider] and [providers.default]",
                     id="provider-twice"),
        pytest.param("[jobs.q\nprompt = 'p.txt'\n", "", "not valid TOML", id="invalid-toml"),
    ],
)  # fmt: skip
def test_a_wrong_config_names_file_key_and_problem(
    folder: Path, text: str, key: str, problem: str
) -> None:
    path = write(folder, text)
    err = load_error(path)
    assert err.file == str(path)
    assert err.key == key
    assert problem in err.problem
    # The one-line message a person reads carries all three.
    message = str(err)
    assert message.startswith(str(path) + ": ")
    assert key in message
    assert problem in message


def test_a_missing_config_file_is_a_config_error(folder: Path) -> None:
    err = load_error(folder / "absent.toml")
    assert err.file == str(folder / "absent.toml")
    assert err.problem == "no such file"


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ('[provider]\napi_key = "sk-abc123"\n', "provider.api_key"),
        ('[providers.hosted]\napi_key = "sk-abc123"\n', "providers.hosted.api_key"),
        ('api_key = "sk-abc123"\n', "api_key"),
        ('[provider]\nAPIKEY = "sk-abc123"\n', "provider.APIKEY"),
    ],
)
def test_an_api_key_in_the_file_is_refused(folder: Path, section: str, key: str) -> None:
    path = write(folder, section + MINIMAL)
    err = load_error(path)
    assert err.key == key
    assert "must not be written in the config file" in err.problem
    assert "api_key_env" in err.problem
    assert "environment variable" in err.problem
    # The secret itself is never echoed back into logs.
    assert "sk-abc123" not in str(err)


def test_an_api_key_inside_a_job_is_refused(folder: Path) -> None:
    err = load_error(write(folder, MINIMAL + '[jobs.q.extra]\napi_key = "sk-abc123"\n'))
    assert err.key == "jobs.q.extra.api_key"
    assert "environment variable" in err.problem


def test_topic_placeholder_cannot_be_filled_by_a_whole_file(folder: Path) -> None:
    (folder / "t.txt").write_text("Write about {{ topic }} in {{context}}.", encoding="utf-8")
    path = write(folder, MINIMAL.replace("p.txt", "t.txt"))
    err = load_error(path)
    assert err.key == "jobs.q.prompt"
    assert "placeholder topic cannot be filled by input = 'file'" in err.problem
    assert "available: context, line, source" in err.problem


def test_topic_placeholder_is_filled_by_lines(folder: Path) -> None:
    (folder / "t.txt").write_text("Write about {{ topic }}.", encoding="utf-8")
    cfg = load(write(folder, MINIMAL.replace("p.txt", "t.txt") + 'input = "lines"\n'))
    assert cfg.jobs["q"].template.fields == frozenset({"topic"})


def test_any_placeholder_is_allowed_for_jsonl(folder: Path) -> None:
    (folder / "t.txt").write_text("{{title}} by {{author}}: {{context}}", encoding="utf-8")
    cfg = load(write(folder, MINIMAL.replace("p.txt", "t.txt") + 'input = "jsonl"\n'))
    assert cfg.jobs["q"].template.fields == frozenset({"title", "author", "context"})


def test_an_unknown_placeholder_is_refused_for_lines(folder: Path) -> None:
    (folder / "t.txt").write_text("{{title}}", encoding="utf-8")
    err = load_error(write(folder, MINIMAL.replace("p.txt", "t.txt") + 'input = "lines"\n'))
    assert err.key == "jobs.q.prompt"
    assert "placeholder title cannot be filled by input = 'lines'" in err.problem


def test_turns_with_two_speakers_loads(folder: Path) -> None:
    text = MINIMAL + "[jobs.q.filters]\nsplit = 'turns'\nspeakers = ['User', 'Assistant']\n"
    cfg = load(write(folder, text))
    assert cfg.jobs["q"].config.filters.speakers == ("User", "Assistant")


def test_a_schema_file_that_is_not_json_is_a_config_error(folder: Path) -> None:
    (folder / "schema.json").write_text("{not json", encoding="utf-8")
    err = load_error(write(folder, MINIMAL + "[jobs.q.filters]\njson_schema = 'schema.json'\n"))
    assert err.key == "jobs.q.filters.json_schema"


# -- the fingerprint ---------------------------------------------------------


def fingerprint(folder: Path, extra: str = "", prompt: str = "{{context}}") -> str:
    (folder / "p.txt").write_text(prompt, encoding="utf-8")
    return load(write(folder, MINIMAL + extra)).jobs["q"].fingerprint


def test_fingerprint_is_stable(folder: Path) -> None:
    assert fingerprint(folder) == fingerprint(folder)


@pytest.mark.parametrize(
    "extra",
    [
        "temperature = 0.2\n",
        "max_tokens = 999\n",
        "samples = 3\n",
        "top_p = 0.5\n",
        'stop = ["END"]\n',
        'api = "completions"\n',
        "[jobs.q.extra]\nseed = 7\n",
    ],
)
def test_fingerprint_changes_with_parameters(folder: Path, extra: str) -> None:
    assert fingerprint(folder, extra) != fingerprint(folder)


def test_fingerprint_changes_with_template_model_and_system(folder: Path) -> None:
    base = fingerprint(folder)
    assert fingerprint(folder, prompt="Q: {{context}}") != base
    assert load(write(folder, MINIMAL.replace('"m"', '"m2"'))).jobs["q"].fingerprint != base
    (folder / "sys.txt").write_text("Be brief.", encoding="utf-8")
    assert fingerprint(folder, 'system_prompt = "sys.txt"\n') != base


@pytest.mark.parametrize(
    "extra",
    [
        "[jobs.q.filters]\nsplit = 'lines'\nmin_items = 3\nkeep_lines_matching = '\\?$'\n",
        "[jobs.q.filters]\ndedupe = false\nmax_chars = 10\n",
        "[jobs.q.output]\nshard_max_records = 5\n",
        "[jobs.q.export]\ncompletion_stop = ' STOP'\n",
    ],
)
def test_fingerprint_ignores_filters_and_output(folder: Path, extra: str) -> None:
    assert fingerprint(folder, extra) == fingerprint(folder)


def test_chunk_size_is_given_or_fits_the_prompt_limit(folder: Path) -> None:
    chunks = MINIMAL + 'input = "chunks"\n'
    assert load(write(folder, chunks)).jobs["q"].chunk_tokens == 1000
    given = load(write(folder, chunks + "chunk_tokens = 300\nchunk_overlap = 30\n"))
    assert given.jobs["q"].chunk_tokens == 300
    fitted = load(write(folder, chunks + "max_prompt_tokens = 1000\n")).jobs["q"]
    # The template and the fields' values take their share; 10 % is kept for the estimate.
    assert 850 <= fitted.chunk_tokens < 900
    assert load(write(folder, MINIMAL)).jobs["q"].chunk_tokens == 0


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ("chunk_tokens = 100\nchunk_overlap = 51\n", "jobs.q.chunk_overlap", "at most half"),
        ("max_prompt_tokens = 20\n", "jobs.q.max_prompt_tokens", "raise it or set chunk_tokens"),
        ("chunk_tokens = 0\n", "jobs.q.chunk_tokens", "greater than 0"),
    ],
)
def test_bad_chunk_settings_are_named(folder: Path, extra: str, key: str, problem: str) -> None:
    err = load_error(write(folder, MINIMAL + 'input = "chunks"\n' + extra))
    assert (err.key, problem in err.problem) == (key, True), err


def test_passage_size_and_overlap_are_in_a_chunks_jobs_fingerprint(folder: Path) -> None:
    chunks = 'input = "chunks"\n'
    base = fingerprint(folder, chunks)
    assert fingerprint(folder, chunks + "chunk_tokens = 1000\n") == base  # the default
    assert fingerprint(folder, chunks + "chunk_tokens = 999\n") != base
    assert fingerprint(folder, chunks + "chunk_overlap = 9\n") != base
    assert fingerprint(folder) == fingerprint(folder, 'input = "lines"\n')


def test_without_coordination_nothing_is_named_for_a_node(folder: Path) -> None:
    cfg = load(write(folder, MINIMAL))
    assert cfg.coordination is None and cfg.node is None
    assert cfg.state_dir == Path("state")
    assert cfg.shard_prefix("q") == "q"


def test_coordination_names_state_and_shards_for_the_node(folder: Path) -> None:
    text = '[coordination]\nredis_url = "redis://127.0.0.1:6379/0"\nnode = "web-1"\n' + MINIMAL
    cfg = load(write(folder, text))
    assert cfg.coordination is not None
    assert cfg.coordination.lease_ttl_s <= 15
    assert cfg.coordination.takeover is True
    assert cfg.coordination.on_redis_down == "pause"
    assert cfg.state_dir == Path("state") / "web-1"
    assert cfg.shard_prefix("q") == "q-web-1"


def test_the_default_node_is_the_short_hostname(folder: Path) -> None:
    cfg = load(write(folder, '[coordination]\nredis_url = "redis://h:1"\n' + MINIMAL))
    assert cfg.node and "." not in cfg.node and " " not in cfg.node


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ('redis_url = "http://h"', "coordination.redis_url", "redis://"),
        ('redis_url = "redis://h"\nnode = "a/b"', "coordination.node", "a node name"),
        ('redis_url = "redis://h"\nlease_ttl_s = 60', "coordination.lease_ttl_s", "15"),
        ('redis_url = "redis://h"\non_redis_down = "ignore"', "coordination.on_redis_down", ""),
        ("node = 'a'", "coordination.redis_url", "required"),
    ],
)
def test_a_wrong_coordination_names_the_key(
    folder: Path, table: str, key: str, problem: str
) -> None:
    err = load_error(write(folder, f"[coordination]\n{table}\n" + MINIMAL))
    assert err.key == key
    assert problem in err.problem


# -- pipelines: from, per, judge ----------------------------------------------------


STAGES = """
[jobs.q]
prompt = "p.txt"
model = "m"
[jobs.q.filters]
split = "lines"
[jobs.a]
from = "q"
per = "item"
prompt = "a.txt"
model = "m"
"""


def test_a_stage_loads_with_its_placeholders(folder: Path) -> None:
    (folder / "a.txt").write_text("{{context}} {{item}} {{parent}}", encoding="utf-8")
    cfg = load(write(folder, STAGES))
    assert (cfg.jobs["a"].config.from_, cfg.jobs["a"].config.per) == ("q", "item")
    assert cfg.jobs["q"].config.from_ is None


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (STAGES.replace('from = "q"', 'from = "nope"'), "jobs.a.from", "no job named 'nope'"),
        (STAGES.replace("[jobs.q]\n", '[jobs.q]\nfrom = "a"\n'), "jobs.q.from", "a cycle"),
        (STAGES.replace('split = "lines"', 'split = "none"'), "jobs.a.per", "split"),
        (STAGES.replace('per = "item"', 'per = "each"'), "jobs.a.per", "got 'each'"),
        (STAGES + "[jobs.q.judge]\nmin_score = 5\n", "jobs.q.judge", "set from"),
        (
            STAGES + "samples = 2\n[jobs.a.judge]\nmin_score = 5\n",
            "jobs.a.samples",
            "samples = 1",
        ),
    ],
)
def test_a_wrong_pipeline_names_file_and_key(
    folder: Path, text: str, key: str, problem: str
) -> None:
    (folder / "a.txt").write_text("{{context}} {{item}}", encoding="utf-8")
    err = load_error(write(folder, text))
    assert err.file.endswith("synthd.toml")
    assert err.key == key
    assert problem in err.problem


def test_item_is_not_fillable_where_no_stage_made_one(folder: Path) -> None:
    (folder / "a.txt").write_text("{{item}}", encoding="utf-8")
    err = load_error(write(folder, STAGES.replace('per = "item"', 'per = "record"')))
    assert err.key == "jobs.a.prompt"
    assert "item" in err.problem
    assert "from = 'q'" in err.problem


def test_the_shipped_pipeline_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    cfg = load(root / "config" / "qa.toml")
    links = {n: (j.config.from_, j.config.per) for n, j in cfg.jobs.items()}
    assert links == {
        "questions": (None, "record"),
        "answers": ("questions", "item"),
        "qa_judge": ("answers", "record"),
    }
    judge = cfg.jobs["qa_judge"].config.judge
    assert judge is not None
    assert judge.min_score == 6
