"""What tokens cost at a model's ``[prices."<model>"]``. Pure.

``synthd status`` prices the tokens a job has used; ``synthd dry-run`` the tokens
its backlog would use. Both round for display; the arithmetic is here, once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synthd.config import Price


def price_usd(
    price: Price | None, prompt_tokens: int, completion_tokens: int
) -> tuple[float, float] | None:
    """(input, output) dollars, unrounded; None when the model has no price."""
    if price is None:
        return None
    return (
        prompt_tokens * price.input_per_mtok / 1e6,
        completion_tokens * price.output_per_mtok / 1e6,
    )


# The Batch API's price as a share of the online one (OpenAI's, and most that copy it).
BATCH_DISCOUNT = 0.5
