"""A batch's result lines as outcomes: what becomes of the members without a result."""

from __future__ import annotations

from synthd.batchfile import Member, custom_id
from synthd.batchresults import unfinished
from synthd.models import Source

SOURCES = {1: Source(1, "q", "c1", "t.txt", "/x", "fp")}


def member(i: int, tries: int = 0, source_id: int = 1) -> Member:
    return Member(custom_id("c1", i), source_id, i, i, 0, 0, 0, {}, None, None, 5, 10, tries)


def test_the_unfinished_go_again_with_a_try_more_until_out_of_rounds() -> None:
    members = [member(0), member(1, tries=2), member(2, tries=1), member(3)]
    again, online, dead = unfinished(members, {"c1:3"}, SOURCES, "failed", "online", 2)
    assert [(m.seq, m.tries) for m in again] == [(0, 1), (2, 2)]
    assert online == [] and dead == [members[1]]  # a failure never goes online


def test_an_expiry_goes_online_when_asked_and_done_or_gone_members_go_nowhere() -> None:
    members = [member(0), member(1), member(2, source_id=9), member(3, tries=5)]
    again, online, dead = unfinished(members, {"c1:1"}, SOURCES, "expired", "online", 2)
    assert again == [] and dead == [] and online == [members[0], members[3]]
    again, online, dead = unfinished(members, {"c1:1"}, SOURCES, "expired", "none", 2)
    assert [m.seq for m in again] == [0] and online == [] and dead == [members[3]]
