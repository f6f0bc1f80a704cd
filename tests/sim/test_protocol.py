"""The simulator's wire format as pure functions: a list endpoint's pages."""

from __future__ import annotations

from synthd.sim.protocol import list_page

IDS = ["e", "d", "c", "b", "a"]  # newest first


def test_pages_follow_on_from_the_id_the_previous_one_ended_with() -> None:
    window, more = list_page(IDS, None, 2)
    assert IDS[window] == ["e", "d"] and more
    window, more = list_page(IDS, "d", 2)
    assert IDS[window] == ["c", "b"] and more
    window, more = list_page(IDS, "b", 2)
    assert IDS[window] == ["a"] and not more


def test_an_unknown_after_is_an_empty_last_page() -> None:
    window, more = list_page(IDS, "zz", 2)
    assert IDS[window] == [] and not more
    assert list_page([], None, 10) == (slice(0, 10), False)
