from synthd.history import EVERY_S, History, ProviderSample


def test_the_chart_holds_rates_per_minute_between_samples() -> None:
    h = History()
    h.sample_provider("p", ProviderSample(0.0, 0, 0, 0))
    h.sample_provider("p", ProviderSample(5.0, 10, 1000, 1))
    h.sample_provider("p", ProviderSample(10.0, 10, 1000, 1))
    chart = h.chart("p")
    assert chart.ago_s == [5.0, 0.0]  # before the newest sample
    assert h.age_s("p", now=12.0) == 2.0 and h.age_s("unknown", 12.0) is None
    assert chart.requests_per_min == [120.0, 0.0]
    assert chart.tokens_per_min == [12000, 0]
    assert chart.rate_limited == [1, 0]
    assert h.chart("unknown").ago_s == []


def test_memory_is_bounded_to_the_window() -> None:
    h = History()
    for i in range(10_000):
        h.sample_provider("p", ProviderSample(i * EVERY_S, i, i, 0))
        h.sample_job("j", i * EVERY_S, i)
    assert len(h.providers["p"]) == h.keep == 181
    assert len(h.jobs["j"]) == h.keep
    assert len(h.chart("p").ago_s) == h.keep - 1


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
    assert h.chart("p").requests_per_min == [0.0]


def test_the_chart_is_kept_until_the_next_sample() -> None:
    h = History()
    h.sample_provider("p", ProviderSample(0.0, 0, 0, 0))
    h.sample_provider("p", ProviderSample(5.0, 10, 0, 0))
    first = h.chart("p")
    assert h.chart("p") is first
    h.sample_provider("p", ProviderSample(10.0, 30, 0, 0))
    assert h.chart("p").requests_per_min == [120.0, 240.0]
