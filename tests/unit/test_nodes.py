"""``synthd status`` across nodes: shares, merged counts, every node's checkpoint."""

from __future__ import annotations

from pathlib import Path

from synthd.checkpoint import STATE_FILE, JobCounts
from synthd.config_coordination import CoordinationConfig
from synthd.nodes import merge_counts, read_nodes, render, shares, state_files
from tests.redisserver import RedisServer


def test_shares_are_each_nodes_grant_rate_over_all() -> None:
    rows = [
        ("a", 4000, {"holder": "h:1:x", "granted_requests": "300", "started": "0", "at": "10"}),
        ("b", 2500, {"holder": "h:2:y", "granted_requests": "100", "started": "0", "at": "10"}),
        ("c", -2, {}),  # a dead node not taken over yet: no lease, nothing said
    ]
    got = {n.node: n for n in shares(rows, 10.0)}
    assert got["a"].share == 0.75 and got["b"].share == 0.25
    assert got["a"].granted_rpm == 1800.0
    assert got["a"].lease_s == 4.0
    assert got["c"].lease_s is None and got["c"].share is None
    text = "\n".join(render(list(got.values())))
    assert "a  lease 4.0s  share 75.0% (1,800 rpm)" in text
    assert "c  lease expired" in text
    assert render(None) == ["nodes: Redis does not answer"]


def test_counts_add_up_over_the_nodes() -> None:
    a = JobCounts("q", 1, 10, 0, {"record": 30, "dead": 1}, 30, 100, 200)
    b = JobCounts("q", 0, 5, 1, {"record": 20, "rejected": 2}, 20, 50, 70)
    c = JobCounts("other", 0, 1, 0, {"record": 1}, 1, 1, 1)
    merged = {m.job: m for m in merge_counts([[a, c], [b]])}
    q = merged["q"]
    assert (q.files_active, q.files_done, q.files_failed) == (1, 15, 1)
    assert q.items == {"record": 50, "dead": 1, "rejected": 2}
    assert (q.records, q.prompt_tokens, q.completion_tokens) == (50, 150, 270)
    assert merged["other"] == c


def test_state_files_are_every_nodes(tmp_path: Path) -> None:
    for node in ("b", "a"):
        (tmp_path / node).mkdir()
        (tmp_path / node / STATE_FILE).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    assert state_files(tmp_path) == [tmp_path / "a" / STATE_FILE, tmp_path / "b" / STATE_FILE]
    assert state_files(tmp_path / "absent") == []


def test_without_redis_status_says_so(redis_server: RedisServer) -> None:
    coord = CoordinationConfig(redis_url=redis_server.url, node="a")
    assert read_nodes(coord) == []
    redis_server.stop()
    assert read_nodes(coord) is None
