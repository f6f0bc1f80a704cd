"""``synthd dry-run`` on a known spool: exact bodies, counts, tokens, cost and time.

Token figures are the daemon's estimate, ceil(chars / 4) per prompt, where chars
are the rendered template plus the system prompt. Template t is "Ask about: "
(11 chars) + context.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path

import orjson
import pytest

from synthd import cli, config, dryrun
from synthd.backlog import Backlog
from synthd.checkpoint import Checkpoint
from synthd.models import Outcome
from synthd.stagestore import hand_over
from tests.helpers import PRICED_JOB, Workdir

CONFIG = (
    """
[provider]
base_url = "http://127.0.0.1:9/v1"
rpm = 60
tpm = 10000

[providers.slow]
base_url = "http://127.0.0.1:9/v1"
rpm = 1
tpm = 1000

"""
    + PRICED_JOB
    + """temperature = 0.5
max_tokens = 100
samples = 2
max_prompt_tokens = 5

[jobs.u]
prompt = "prompts/u.txt"
system_prompt = "prompts/sys.txt"
provider = "slow"
api = "completions"
model = "m-2"
temperature = 0
max_tokens = 50
stop = "END"
"""
)
PROMPTS = {"t.txt": "Ask about: {{context}}", "u.txt": "Text: {{context}}", "sys.txt": "Be brief."}


def write_deployment(work: Workdir, toml: str, prompts: dict[str, str]) -> Path:
    """The config file and the prompts it names (name -> template) under prompts/."""
    for name, text in prompts.items():
        (work.path / "prompts" / name).write_text(text)
    cfg = work.path / "config" / "synthd.toml"
    cfg.write_text(toml)
    return cfg


def build_fixture(work: Workdir) -> Path:
    cfg = write_deployment(work, CONFIG, PROMPTS)

    t = work.spool("t")
    # Claimed before a crash: "one" done (the resume point), "three" done out of order.
    (t / ".work").mkdir()
    (t / ".work" / "00000009-c.txt").write_text("one\ntwo\nthree\n")
    cp = Checkpoint(work.path / "state" / "synthd.db")
    src = cp.add_source("t", "00000009", "c.txt", "spool/t/.work/00000009-c.txt", "fp")
    with cp.transaction() as tx:
        tx.record([Outcome(src, 0, 1, 4, "record"), Outcome(src, 2, 3, 14, "record")])
        tx.resume_points({src.id: (1, 1, 4)})
    cp.close()
    files: list[tuple[Path, bytes]] = [
        (t / "a.txt", b"alpha\nbravo charlie\n\n"),  # bravo charlie: 24 chars, 6 tokens > 5
        (t / "b.jsonl", b'{"text": "delta", "lang": "en"}\n{"nope": 1}\nnot json\n'),
        (t / "empty.txt", b"  \n\n"),
        (t / "bin.txt", b"\x00\x01binary"),
        (work.spool("u") / "x.txt", b"hello world\n"),
        (work.spool("u") / "y.txt", codecs.BOM_UTF16_LE + "bonjour\n".encode("utf-16-le")),
    ]
    for i, (path, data) in enumerate(files):
        path.write_bytes(data)
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))  # oldest first, as listed
    return cfg


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under spool/ and the checkpoint itself, with its bytes."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    return {k: v for k, v in files.items() if k.startswith("spool") or k.endswith(".db")}


def test_known_spool_exact_figures(work: Workdir) -> None:
    cfg_path = build_fixture(work)
    before = snapshot(work.path)
    result = dryrun.plan(config.load(cfg_path), n=2)
    assert snapshot(work.path) == before  # nothing moved, transcoded or written
    assert not (work.path / "out").exists()

    t, u = result.jobs
    assert result.chars_per_token == 4.0
    assert [(s.file, s.line) for s in t.samples] == [("c.txt", 2), ("a.txt", 1)]
    assert t.samples[0].url == "http://127.0.0.1:9/v1/chat/completions"
    assert t.samples[0].body == {
        "model": "m-1",
        "messages": [{"role": "user", "content": "Ask about: two"}],
        "temperature": 0.5,
        "max_tokens": 100,
        "n": 2,
    }
    assert t.backlog == Backlog(
        files_pending=4,
        files_claimed=1,
        requests=3,  # two, alpha, delta
        bad_lines=2,  # {"nope": 1}, not json
        unsendable=1,  # bravo charlie: prompt too long
        prompt_tokens=12,  # 4 + 4 + 4: "Ask about: two" is 14 chars
        completion_tokens_max=600,  # 3 requests x 100 max_tokens x 2 samples
        reserved_tokens=612,
        failing_files={"empty.txt": "empty", "bin.txt": "binary"},
        context_chars=13,  # "two", "alpha", "delta"
    )
    assert t.cost == dryrun.Cost(input_usd=0.000024, output_usd_max=0.006)
    assert t.cost.total_usd_max == 0.006024
    assert (t.minutes, t.bound) == (0.0612, "tokens")  # 612 / 10000 > 3 / 60

    assert [s.file for s in u.samples] == ["x.txt", "y.txt"]
    assert u.samples[0].url == "http://127.0.0.1:9/v1/completions"
    assert u.samples[0].body == {
        "model": "m-2",
        "prompt": "Be brief.\n\nText: hello world",
        "temperature": 0.0,
        "max_tokens": 50,
        "n": 1,
        "stop": ["END"],
    }
    assert u.samples[1].body["prompt"] == "Be brief.\n\nText: bonjour"  # UTF-16 read as text
    b = u.backlog
    assert (b.files_pending, b.requests, b.bad_lines, b.unsendable) == (2, 2, 0, 0)
    # 26 chars -> 7 and 22 chars -> 6 (system prompt included); 2 x 50 completion
    assert (b.prompt_tokens, b.completion_tokens_max, b.reserved_tokens) == (13, 100, 113)
    assert u.cost is None  # no price for m-2
    assert (u.minutes, u.bound) == (2.0, "requests")  # 2 requests at 1 rpm

    assert [
        (p.name, p.requests, p.reserved_tokens, p.minutes, p.bound) for p in result.providers
    ] == [
        ("default", 3, 612, 0.0612, "tokens"),
        ("slow", 2, 113, 2.0, "requests"),
    ]


def test_cli_one_job_human_report(work: Workdir, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = build_fixture(work)
    assert cli.main(["dry-run", "--config", str(cfg_path), "--job", "u", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "== job t" not in out
    lines = out.splitlines()
    assert lines[0] == (
        "== job u: model m-2, provider slow, api completions, max_tokens 50, samples 1"
    )
    assert lines[1] == "-- request 1: x.txt line 1 -> POST http://127.0.0.1:9/v1/completions"
    body_end = lines.index("}")
    assert orjson.loads("\n".join(lines[2 : body_end + 1]))["prompt"] == (
        "Be brief.\n\nText: hello world"
    )
    assert lines[body_end + 1 :] == [
        "backlog: 2 files pending, 0 claimed; 2 requests, 0 bad lines, 0 unsendable",
        "tokens: prompt ~13 (at 4 chars/token), completion <= 100 "
        "(max_tokens x samples per request: an upper bound)",
        'cost: unknown, no [prices."m-2"] in the config',
        "time: ~2.0 min at the provider's budget (requests-bound)",
        "",
        "provider slow: 2 requests, 113 tokens reserved -> ~2.0 min at rpm 1 / tpm 1,000 "
        "(requests-bound; retries and 429 pauses not included)",
    ]


def test_cli_json_and_cost(work: Workdir, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = build_fixture(work)
    assert cli.main(["dry-run", "--config", str(cfg_path), "--job", "t", "-n", "0", "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    (t,) = out["jobs"]
    assert t["requests_shown"] == []
    assert t["backlog"]["requests"] == 3 and t["backlog"]["prompt_tokens"] == 12
    assert t["cost_usd"] == {"input": 0.000024, "output_max": 0.006, "total_max": 0.006024}
    assert (t["minutes"], t["bound_by"]) == (0.0612, "tokens")
    assert out["completion_tokens"].startswith("upper bound")


def test_unknown_job_is_a_usage_error(work: Workdir, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = build_fixture(work)
    assert cli.main(["dry-run", "--config", str(cfg_path), "--job", "nope"]) == 2
    assert "no job named 'nope' (jobs: t, u)" in capsys.readouterr().err


def test_without_state_claimed_files_are_not_counted(work: Workdir) -> None:
    cfg_path = build_fixture(work)
    (work.path / "state" / "synthd.db").unlink()
    t = dryrun.plan(config.load(cfg_path), ["t"], n=0).jobs[0]
    # The daemon only resumes claims its checkpoint knows; nothing else is read.
    assert (t.backlog.files_claimed, t.backlog.requests) == (0, 2)
    assert not (work.path / "state" / "synthd.db").exists()


def test_a_chunks_job_shows_how_each_file_is_cut(work: Workdir) -> None:
    (work.path / "prompts" / "t.txt").write_text("Ask about: {{context}}")
    (work.path / "config" / "synthd.toml").write_text(
        '[provider]\nbase_url = "http://127.0.0.1:9/v1"\n[jobs.c]\nprompt = "prompts/t.txt"\n'
        'model = "m"\ninput = "chunks"\nchunk_tokens = 25\n'
    )
    paragraphs = [f"Paragraph {i} says a few plain words about the harbour." for i in range(40)]
    (work.spool("c") / "book.txt").write_text("\n\n".join(paragraphs))
    (work.spool("c") / "empty.html").write_text("<html><script>menu()</script></html>")
    cfg = config.load(work.path / "config" / "synthd.toml")
    plan = dryrun.plan(cfg, ["c"], n=1)
    (job,) = plan.jobs
    (book,) = job.chunked
    assert book.file == "book.txt"
    assert book.passages == job.backlog.requests
    assert book.tokens_max == 25  # 100 characters, cut after a word
    whole = "\n\n".join(paragraphs)
    assert [span for span, _ in book.first] == [(0, 100), (100, 200)]
    assert [text for _, text in book.first] == [whole[:100].strip(), whole[100:200].strip()]
    assert job.backlog.failing_files == {"empty.html": "no_text"}
    shown = dryrun.render(plan)
    assert f"-- chunks of book.txt: {book.passages} passages of ~" in shown
    assert "   passage 2, characters 100-200:" in shown and "   | Paragraph 2 says" in shown
    assert orjson.loads(orjson.dumps(plan.to_json()))["jobs"][0]["chunked"][0]["passages"] == (
        book.passages
    )


# -- a pipeline: the chain costed from its first stage's backlog ---------------------------

CHAIN = """
[provider]
base_url = "http://127.0.0.1:9/v1"
rpm = 60
tpm = 1000000

[prices."m-1"]
input_per_mtok = 2.0
output_per_mtok = 10.0

[jobs.q]
prompt = "prompts/q.txt"
model = "m-1"
max_tokens = 100
filters = { split = "lines", max_items = 4 }

[jobs.a]
from = "q"
per = "item"
prompt = "prompts/a.txt"
model = "m-1"
max_tokens = 50

[jobs.j]
from = "a"
prompt = "prompts/j.txt"
model = "m-1"
max_tokens = 20
judge = { min_score = 5 }
"""
CHAIN_PROMPTS = {
    "q.txt": "Q: {{context}}",
    "a.txt": "A: {{context}} {{item}}",
    "j.txt": "J: {{context}} {{item}} {{completion}}",
}


def chain_fixture(work: Workdir) -> config.Config:
    cfg = write_deployment(work, CHAIN, CHAIN_PROMPTS)
    spool = work.spool("q")
    (spool / "one.txt").write_text("x" * 400)
    (spool / "two.txt").write_text("y" * 400)
    return config.load(cfg)


def test_a_stage_is_costed_from_its_upstream_backlog(work: Workdir) -> None:
    result = dryrun.plan(chain_fixture(work), ["a"], n=1)
    plans = {p.job: p for p in result.jobs}
    assert list(plans) == ["q", "a", "j"], "the whole chain, each stage after its upstream"
    q, a, j = plans["q"].backlog, plans["a"].backlog, plans["j"].backlog
    assert (q.requests, q.projected_requests, q.fan_out) == (2, 0, None)
    # No history yet: per item, at most max_items = 4 a record; the judge, one per answer.
    assert (a.requests, a.projected_requests, a.fan_out) == (0, 8, 4.0)
    assert (j.projected_requests, j.fan_out) == (8, 1.0)
    # A's prompt: "A:  " (4 chars) + the passage (400) + one of 4 items of 100 tokens (100).
    assert a.prompt_tokens == 8 * 126
    assert a.completion_tokens_max == 8 * 50
    assert plans["a"].cost is not None
    assert result.providers[0].requests == 2 + 8 + 8
    text = dryrun.render(result)
    assert "~8 more requests projected from its upstream's backlog at 4 per upstream record" in text
    assert "pipelines: every stage above, from its first stage's backlog: <= $" in text


def test_items_already_handed_to_a_stage_are_rendered_as_it_would_send_them(
    work: Workdir,
) -> None:
    cfg = chain_fixture(work)
    cp = Checkpoint(cfg.paths.state / "synthd.db")
    rec = {"id": "p1", "context": "the passage", "completion": "a?\nb?", "items": ["a?", "b?"]}
    with cp.transaction() as tx:
        hand_over(tx.db, [("q", {**rec, "fingerprint": "f"})], {"q": [("a", "item")]})
    cp.close()
    a = {p.job: p for p in dryrun.plan(cfg, ["a"], n=5).jobs}["a"]
    assert a.backlog.requests == 2
    assert [s.body["messages"][-1]["content"] for s in a.samples] == [
        "A: the passage a?",
        "A: the passage b?",
    ]
    assert [s.file for s in a.samples] == ["q/p1/0", "q/p1/1"]
