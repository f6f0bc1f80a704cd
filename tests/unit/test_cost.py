"""``synthd.cost.price_usd``: tokens at a model's price, for status and dry-run."""

from __future__ import annotations

from synthd.config import Price
from synthd.cost import price_usd


def test_each_side_at_its_own_price_per_million() -> None:
    price = Price(input_per_mtok=2.0, output_per_mtok=10.0)
    assert price_usd(price, 1_000_000, 500_000) == (2.0, 5.0)
    assert price_usd(price, 0, 0) == (0.0, 0.0)


def test_no_price_no_cost() -> None:
    assert price_usd(None, 100, 100) is None
