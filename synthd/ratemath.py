"""A provider's rate arithmetic: token estimates and the AIMD curve. Pure: no clock, no I/O.

The async ``synthd.budget`` applies these to its buckets; ``synthd.pipeline`` and
``synthd.dryrun`` use the estimates without it. The rule, in short (the whole of it is in
``synthd.budget``'s docstring): a 429 cuts the rate to ``cut_rate`` of what was sent; after
the pause, ``recovery_rate`` gives the rate allowed as time passes. A pause of
``WINDOW_PAUSE_S`` or more comes from a windowed limiter, whose rate is ``cycle_rate``.
Rate-limit headers are parsed in ``synthd.headers``, a provider's circuit in
``synthd.circuit``: both pure too.
"""

from __future__ import annotations

import math

_CUT = 0.7  # multiplicative decrease, of the rate actually sent
_RECOVER = 0.9  # share of the pre-cut rate regained within ramp_s
_PLATEAU_S = 10.0  # then back to the pre-cut rate over this long
_DOUBLE_S = 20.0  # and beyond it, twice that rate this long after
WINDOW_PAUSE_S = 10.0  # a pause at least this long comes from a windowed limiter


class Calibration:
    """Characters per prompt token, learned from ``usage`` (an exponential average).

    Starts at 4.0, OpenAI's rule of thumb for English; converges on what the
    provider's own tokenizer counts for this kind of text.
    """

    __slots__ = ("chars_per_token",)

    def __init__(self, chars_per_token: float = 4.0) -> None:
        self.chars_per_token = chars_per_token

    def estimate(self, chars: int) -> int:
        return max(1, math.ceil(chars / self.chars_per_token))

    def learn(self, chars: int, tokens: int) -> None:
        if tokens > 0 and chars > 0:
            self.chars_per_token += 0.05 * (chars / tokens - self.chars_per_token)


def cut_rate(sent: float, floor: float) -> float:
    """The rate after a 429: a share of what was sent, never below ``floor``."""
    return max(floor, _CUT * sent)


def recovery_rate(
    cut: float, ceiling: float, target: float, since_s: float, ramp_s: float, pause_s: float
) -> float:
    """The rate allowed ``since_s`` after the pause that followed a cut from ``ceiling``.

    Shaped like TCP CUBIC's window: linear from ``cut`` to 90% of ``ceiling`` over
    ``ramp_s``; then the last 10% over ``_PLATEAU_S`` (the ceiling is where the last 429
    came from: approach it gently); then beyond it ever faster, doubling after another
    ``_DOUBLE_S`` (a 429 that came while little was sent says little about the limit).
    After a long pause (a windowed limiter, which punishes an overshoot with a whole
    window) time past the ramp runs slower. Never above ``target``.
    """
    back = max(cut, _RECOVER * ceiling)
    if since_s <= 0:
        return min(target, cut)
    if ramp_s > 0 and since_s < ramp_s:
        return min(target, cut + (back - cut) * since_s / ramp_s)
    t = (since_s - max(ramp_s, 0.0)) * WINDOW_PAUSE_S / max(pause_s, WINDOW_PAUSE_S)
    if t < _PLATEAU_S:
        rate = back + (max(ceiling, back) - back) * t / _PLATEAU_S
    else:
        rate = max(ceiling, back) * (1.0 + ((t - _PLATEAU_S) / _DOUBLE_S) ** 3)
    return min(target, rate)


def token_estimate(prompt_tokens: int, max_tokens: int, samples: int) -> int:
    """What a provider reserves for a request against its tokens-per-minute limit."""
    return prompt_tokens + max_tokens * samples


def is_windowed(pause_s: float) -> bool:
    """A pause this long comes from a windowed limiter (a fixed minute, a quota)."""
    return pause_s >= WINDOW_PAUSE_S


def cycle_rate(sent: float, span_s: float) -> float:
    """What a windowed limiter allowed, per minute, before the cut: ``sent`` over the whole
    cycle ``span_s`` (the pause that follows included), so that ``cut_rate`` gives it back."""
    return 60.0 * sent / span_s / _CUT
