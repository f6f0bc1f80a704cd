"""Batch input and result lines as values: packing within limits, reading results."""

from __future__ import annotations

import orjson

from synthd.batchfile import (
    Member,
    Pack,
    batch_failure,
    body_of,
    custom_id,
    failed_batch,
    parse_results,
    poll_delay_s,
    request_line,
    token_limit_after,
)


def member(i: int, reserved: int = 10) -> Member:
    return Member(
        custom_id("c1", i), 1, i, i + 1, 10 * i, 0, 0, {"context": "x"}, None, None, 5, reserved
    )


def test_a_request_line_wraps_the_encoded_body_unchanged() -> None:
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi \u00e9"}]})
    line = request_line("c1:7", "chat", body)
    assert line.endswith(b"\n") and body in line
    assert orjson.loads(line) == {
        "custom_id": "c1:7",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": orjson.loads(body),
    }
    assert body_of(line) == orjson.loads(body)
    assert orjson.loads(request_line("x", "completions", b"{}"))["url"] == "/v1/completions"


def test_a_pack_keeps_to_its_request_and_byte_limits() -> None:
    p = Pack(max_requests=3, max_bytes=100)
    assert p.fits(500)  # an empty pack takes even a line over the byte limit
    p.add(b"a" * 40, member(0))
    assert p.fits(60) and not p.fits(61)
    p.add(b"b" * 10, member(1))
    p.add(b"c" * 10, member(2))
    assert p.full and not p.fits(1)
    assert p.tokens == 30 and len(p.data) == 60


def test_results_read_successes_failures_and_expiries() -> None:
    ok = {"choices": [{"index": 0, "message": {"content": "q?"}}], "usage": {"prompt_tokens": 3}}
    rows = [
        {"custom_id": "a", "response": {"status_code": 200, "body": ok}, "error": None},
        {"custom_id": "b", "response": None, "error": {"code": "batch_expired", "message": "late"}},
        {
            "custom_id": "c",
            "response": {"status_code": 500, "body": {"error": {"message": "boom"}}},
            "error": None,
        },
    ]
    raw = b"".join(orjson.dumps(r) + b"\n" for r in rows) + b"{not json\n" + b'{"x": 1}\n'
    got = {r.custom_id: r for r in parse_results(raw)}
    assert set(got) == {"a", "b", "c"}  # unreadable lines are skipped: their items go again
    assert got["a"].body == ok and got["a"].error is None
    assert (got["b"].error, got["b"].detail) == ("batch_expired", "late")
    assert (got["c"].error, got["c"].detail) == ("http_500", "boom")


def test_a_failed_batch_names_its_code() -> None:
    obj = {"status": "failed", "errors": {"data": [{"code": "token_limit_exceeded"}]}}
    assert batch_failure(obj) == "token_limit_exceeded"
    assert batch_failure({"status": "failed", "errors": None}) == "failed"


def test_polls_back_off_to_a_cap() -> None:
    assert [poll_delay_s(n, 1.0, 10.0) for n in range(6)] == [1, 2, 4, 8, 10, 10]


def test_lines_taken_out_still_count_against_the_limits() -> None:
    p = Pack(max_requests=10, max_bytes=100)
    p.add(b"a" * 40, member(0))
    assert p.take() == b"a" * 40 and p.data == b"" and p.size == 40
    p.add(b"b" * 50, member(1))
    assert p.size == 90 and not p.fits(11) and p.take() == b"b" * 50 and p.spilled == 90


def test_a_batch_refused_or_lost_reads_as_failed_with_its_code() -> None:
    lost = failed_batch("batch_1", "lost")
    assert lost["id"] == "batch_1" and lost["status"] == "failed"
    assert batch_failure(lost) == "lost"
    assert batch_failure(failed_batch(None, "refused")) == "refused"


def test_a_token_limit_failure_lowers_the_limit_below_what_it_made() -> None:
    assert token_limit_after(10_000, 3_000, 2_000) == 4_999  # under the 5,000 it made
    assert token_limit_after(4_000, 3_000, 2_000) == 4_000  # already lower: kept
    assert token_limit_after(10_000, 0, 0) == 1  # never zero: a lone batch still goes
