from synthd.history import EVERY_S, History, ProviderSample


def test_points_are_rates_per_minute_between_samples() -> None:
    h = History()
    h.sample_provider("p", ProviderSample(0.0, 0, 0, 0))
    h.sample_provider("p", ProviderSample(5.0, 10, 1000, 1))
    h.sample_provider("p", ProviderSample(10.0, 10, 1000, 1))
    points = h.points("p", now=12.0)
    assert [(p.ago_s, p.requests_per_min, p.tokens_per_min, p.rate_limited) for p in points] == [
        (7.0, 120.0, 12000.0, 1),
        (2.0, 0.0, 0.0, 0),
    ]
    assert h.points("unknown", 12.0) == []


def test_memory_is_bounded_to_the_window() -> None:
    h = History()
    for i in range(10_000):
        h.sample_provider("p", ProviderSample(i * EVERY_S, i, i, 0))
        h.sample_job("j", i * EVERY_S, i)
    assert len(h.providers["p"]) == h.keep == 181
    assert len(h.jobs["j"]) == h.keep
    assert len(h.points("p", 10_000 * EVERY_S)) == h.keep - 1


def test_a_jobs_rate_is_over_the_last_minute() -> None:
    h = History()
    for t in range(0, 301, 5):
        h.sample_job("j", float(t), t * 2 if t <= 200 else 400)  # 2/s, then stalled
    assert h.items_per_s("j", 300.0, 400) == 0.0
    assert h.items_per_s("j", 100.0, 200) == 2.0
    assert h.items_per_s("none", 300.0, 5) == 0.0


def test_a_counter_that_went_back_reads_as_zero() -> None:
    h = History()
    h.sample_provider("p", ProviderSample(0.0, 50, 500, 3))
    h.sample_provider("p", ProviderSample(5.0, 0, 0, 0))
    assert h.points("p", 5.0)[0].requests_per_min == 0.0
