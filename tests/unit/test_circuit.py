"""The provider circuit: it trips on different items failing, and its probes back off."""

from __future__ import annotations

from synthd.circuit import Circuit


def test_the_circuit_trips_on_different_items_failing_with_no_success_between() -> None:
    c = Circuit(trip_items=3)
    assert not c.failed("a", 1.0) and not c.failed("a", 1.1)  # one item, however often
    assert not c.failed("b", 1.2)
    c.answered(1.3)  # a success clears the count
    assert not c.failed("c", 1.4) and not c.failed("d", 1.5)
    assert c.failed("e", 1.6) and c.state == "down" and c.since == 1.6
    assert not c.failed("f", 1.7)  # already down: no second trip
    assert c.answered(9.0) and c.up
    assert not c.answered(9.1)  # logged once


def test_probes_back_off_to_ten_seconds_and_only_probes_count() -> None:
    c = Circuit(trip_items=1, probe_first_s=0.5, probe_max_s=10.0)
    c.failed("a", 0.0)
    delays = [c.probe_delay_s()]
    c.failed("straggler", 0.1)  # sent before the outage: does not slow the probing
    for _ in range(6):
        c.failed("p", 1.0, probe=True)
        delays.append(c.probe_delay_s())
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_a_stragglers_answer_does_not_end_an_outage() -> None:
    c = Circuit(trip_items=1)
    c.failed("a", 10.0)
    assert not c.answered(10.2, sent_at=9.9)  # sent before the outage began
    assert c.state == "down"
    assert c.answered(12.0, sent_at=11.5)
