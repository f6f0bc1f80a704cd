from synthd.config import Price
from synthd.history import History, ProviderSample
from synthd.livestatus import TEXT_CHARS, Health, RecentLines, snapshot
from synthd.metrics import JobStats, ProviderStats
from synthd.models import Outcome, Source
from synthd.monitor import JobInfo, Limits

SRC = Source(1, "q", "c1", "a.txt", "spool/q/.work/c1-a.txt", "fp")


def outcome(state: str, lines: dict) -> Outcome:  # type: ignore[type-arg]
    return Outcome(SRC, 0, 1, 10, state, lines)


def record(text: str, line: int = 1) -> dict:  # type: ignore[type-arg]
    return {"job": "q", "source": {"file": "a.txt", "line": line}, "completion": text}


def test_recent_lines_keep_the_last_few_newest_first_cut_short() -> None:
    recent = RecentLines(keep=2)
    recent.add([outcome("record", {"records": [record(f"r{i}", i)]}) for i in range(5)])
    reject = {**record("x" * 1000), "reason": "too_short"}
    recent.add([outcome("rejected", {"rejects": [reject]})])
    dead = {"job": "q", "source": {"file": "a.txt", "line": 3}, "error": "HTTP 400", "kind": "x"}
    recent.add([outcome("dead", {"dead": [dead]})])
    got = recent.to_json()
    assert [r["text"] for r in got["accepted"]] == ["r4", "r3"]
    assert got["rejected"][0]["reason"] == "too_short"
    assert len(got["rejected"][0]["text"]) == TEXT_CHARS
    assert got["dead"] == [
        {"job": "q", "file": "a.txt", "line": 3, "text": "HTTP 400", "reason": "x"}
    ]


def test_snapshot_numbers_come_from_the_counters() -> None:
    s = JobStats(prompt_tokens=2_000_000, completion_tokens=1_000_000, records=7, dead=1)
    s.items_done, s.items_queued = 10, 30
    s.reject("too_short", 2)
    s.count("200")
    history = History()
    history.sample_job("q", 0.0, 0)
    history.sample_provider("p", ProviderSample(0.0, 0, 0, 0))
    history.sample_provider("p", ProviderSample(5.0, 10, 100, 0))
    doc = snapshot(
        version="9.9",
        health=Health("ok", True, None, None, 12.0),
        jobs={"q": s},
        info={"q": JobInfo("p", "m")},
        prices={"m": Price(input_per_mtok=1.0, output_per_mtok=2.0)},
        providers={"p": ProviderStats(in_flight=3, rate_limited=2, up=False)},
        limits={"p": Limits(60.0, 1000.0)},
        history=history,
        recent=RecentLines(),
        now=10.0,
    )
    job = doc["jobs"][0]
    assert (job["items_done"], job["backlog"], job["progress"]) == (10, 20.0, 0.3333)
    assert job["items_per_s"] == 1.0 and job["eta_s"] == 20
    assert job["cost_usd"] == 4.0 and job["rejects"] == {"too_short": 2} and job["rejected"] == 2
    p = doc["providers"][0]
    assert (p["circuit"], p["in_flight"], p["rate_limited"]) == ("open", 3, 2)
    assert p["budget"] == {"rpm": 60.0, "tpm": 1000.0}
    assert p["chart"] == {
        "ago_s": [0.0],
        "age_s": 5.0,
        "requests_per_min": [120.0],
        "tokens_per_min": [1200],
        "rate_limited": [0],
    }
    assert doc["health"]["ready"] is True and doc["version"] == "9.9"


def test_a_job_without_a_price_has_no_cost_and_an_unknown_eta() -> None:
    s = JobStats()
    s.items_queued = 5
    doc = snapshot(
        version="1",
        health=Health("ok", False, None, None, 0.0),
        jobs={"q": s},
        info={"q": JobInfo("p", "m")},
        prices={},
        providers={},
        limits={},
        history=History(),
        recent=RecentLines(),
        now=0.0,
    )
    job = doc["jobs"][0]
    assert job["cost_usd"] is None and job["eta_s"] is None and job["backlog"] == 5


def test_recent_lines_keep_a_short_copy_not_the_line() -> None:
    recent = RecentLines(keep=3)
    big = {**record("q" * 5000), "context": "c" * 1_000_000, "messages": ["m" * 1_000_000]}
    recent.add([outcome("record", {"records": [big]})])
    recent.add([outcome("record", {"records": [record(f"later{i}")]}) for i in range(2)])
    kept = list(recent.kept["records"])
    assert all(set(k) == {"job", "file", "line", "text"} for k in kept)
    assert [k["text"][:6] for k in recent.to_json()["accepted"]] == ["later1", "later0", "qqqqqq"]
