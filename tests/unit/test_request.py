"""``synthd.request.build``: one item's request, pure, for the daemon and dry-run alike."""

from __future__ import annotations

import orjson

from synthd import config
from synthd.config import Job
from synthd.fingerprint import sampling_params
from synthd.models import Source, WorkItem
from synthd.ratemath import Calibration
from synthd.request import TRUNCATION_MARKER, Request, Unsendable, build
from tests.conftest import Workdir, simple_job

SRC = Source(1, "t", "c1", "a.txt", "spool/t/.work/c1-a.txt", "fp")


def job(work: Workdir, **extra: str | int) -> Job:
    path = work.write_config("http://127.0.0.1:9/v1", simple_job("t", max_tokens=40, **extra))
    return config.load(path).jobs["t"]


def item(context: str, **fields: str) -> WorkItem:
    return WorkItem(SRC, 0, 1, len(context), {"context": context, **fields})


def test_a_short_item_becomes_its_body_with_the_reservation(work: Workdir) -> None:
    j = job(work, samples=2)
    req = build(j, sampling_params(j.config), item("a harbour"), Calibration(), 1e9)
    assert isinstance(req, Request)
    body = orjson.loads(req.body)
    assert body["model"] == "sim-1" and body["n"] == 2 and body["max_tokens"] == 40
    assert body["messages"] == req.prompt and "a harbour" in req.prompt[-1]["content"]
    assert req.prompt_tokens == Calibration().estimate(req.prompt_chars)
    assert req.reserved == req.prompt_tokens + 40 * 2
    assert req.tokens_before_cut is None and req.context == "a harbour"


def test_a_long_prompt_is_cut_to_fit_or_refused_as_configured(work: Workdir) -> None:
    text = "word " * 2000
    cut = job(work, max_prompt_tokens=300, on_long_prompt='"truncate"')
    req = build(cut, sampling_params(cut.config), item(text), Calibration(), 1e9)
    assert isinstance(req, Request)
    assert req.context.endswith(TRUNCATION_MARKER) and req.prompt_tokens <= 300
    assert req.tokens_before_cut is not None and req.tokens_before_cut > 300
    refuse = job(work, max_prompt_tokens=300, on_long_prompt='"reject"')
    no = build(refuse, sampling_params(refuse.config), item(text), Calibration(), 1e9)
    assert isinstance(no, Unsendable) and no.reason == "prompt_too_long"


def test_what_can_never_be_sent_says_why(work: Workdir) -> None:
    j = job(work)
    params = sampling_params(j.config)
    too_big = build(j, params, item("a harbour"), Calibration(), tpm=10)
    assert isinstance(too_big, Unsendable) and too_big.reason == "too_large_for_budget"
    assert "> tpm 10" in too_big.detail
    missing = build(j, params, WorkItem(SRC, 0, 1, 1, {}), Calibration(), 1e9)
    assert isinstance(missing, Unsendable) and missing.reason == "missing_field"


def test_the_calibration_sets_the_estimate(work: Workdir) -> None:
    j = job(work)
    params = sampling_params(j.config)
    coarse = build(j, params, item("a harbour"), Calibration(2.0), 1e9)
    fine = build(j, params, item("a harbour"), Calibration(8.0), 1e9)
    assert isinstance(coarse, Request) and isinstance(fine, Request)
    assert coarse.body == fine.body and coarse.prompt_tokens > fine.prompt_tokens
