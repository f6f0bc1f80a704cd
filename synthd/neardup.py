"""Near-duplicate keys: word shingles -> MinHash (rensa) -> LSH band keys. Pure.

Exact de-duplication misses what a model at temperature 0.7 writes again with a word
changed or two sentences swapped. A text's word shingles (``shingle_words`` words each,
lower-cased; one word by default: reordered clauses then keep their similarity, and on
real contexts longer shingles found fewer planted copies for no fewer false matches, see
``bench/near_dedupe.py``) are hashed by rensa's ``RMinHash`` into ``NUM_PERM`` values;
the fraction of equal values between two texts estimates their Jaccard similarity.

The index itself lives in the checkpoint (``synthd.nearindex``): one row per kept
text (its record id and its signature) and one row per LSH band key, written in the same
transaction as the records, so it survives any crash exactly as they do and costs no
memory in the daemon. Band keys only find candidates; a candidate is a near-duplicate
when the signatures estimate a similarity at or above the threshold.

Signatures are stored as the low 16 bits of each value (256 bytes): two different values
agree there with probability 2**-16, which moves an estimate by at most 0.002.
"""

from __future__ import annotations

import functools
import operator
import re
from array import array
from dataclasses import dataclass
from typing import Any, Literal

import rensa

from synthd.config_jobs import FiltersConfig

NUM_PERM = 128
SEED = 1  # changing it would make every stored signature meaningless
Field = Literal["completion", "items", "turns"]

_WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class Key:
    """What the index needs of one text: its band keys and its stored signature."""

    bands: tuple[int, ...]
    sig: bytes


@dataclass(frozen=True, slots=True)
class Params:
    """A job's near-duplicate settings, and the LSH shape that follows from the threshold."""

    threshold: float
    field: Field = "completion"
    shingle_words: int = 1

    @property
    def rows(self) -> int:
        return band_rows(self.threshold)

    def keys(self, record: dict[str, Any]) -> list[Key]:
        """The keys of a record's texts: its completion, or each item, or each turn."""
        return [key(t, self.shingle_words, self.rows) for t in texts_of(record, self.field)]


@functools.cache
def band_rows(threshold: float, num_perm: int = NUM_PERM, recall: float = 0.95) -> int:
    """Rows per band: the most (fewest false candidates) that still find a pair at the
    threshold with probability ``recall``. Candidates are verified, so a false one costs
    a little CPU, a missed one a duplicate kept."""
    best = 1
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if 1 - (1 - threshold**r) ** b >= recall:
            best = r
    return best


def shingles(text: str, words: int) -> set[str]:
    """The text's runs of ``words`` words, lower-cased; a shorter text is one shingle."""
    w = _WORD.findall(text.lower())
    if words == 1:
        return set(w) or {""}
    if len(w) <= words:
        return {" ".join(w)}
    return {" ".join(w[i : i + words]) for i in range(len(w) - words + 1)}


def signature(text: str, words: int) -> list[int]:
    """The text's MinHash values (``NUM_PERM`` unsigned 32-bit ints)."""
    m = rensa.RMinHash(num_perm=NUM_PERM, seed=SEED)
    m.update(shingles(text, words))
    return list(m.digest())


def key(text: str, words: int, rows: int) -> Key:
    values = signature(text, words)
    return Key(band_keys(values, rows), array("H", [v & 0xFFFF for v in values]).tobytes())


def band_keys(values: list[int], rows: int) -> tuple[int, ...]:
    """One key per band of ``rows`` values, below 2**61 (SQLite's INTEGER is signed 64-bit).

    A band's values read as one integer, modulo a Mersenne prime: equal bands give equal
    keys, and unequal ones collide about once in 2**61 (a collision is only a candidate,
    which the signatures then turn down). The band's number is mixed in, so equal values
    in different bands are different keys.
    """
    raw = array("I", values).tobytes()
    step = rows * 4
    return tuple(
        (int.from_bytes(raw[b * step : (b + 1) * step], "little") + b * _BAND_MIX) % _PRIME
        for b in range(len(values) // rows)
    )


_PRIME = (1 << 61) - 1
_BAND_MIX = 0x9E3779B97F4A7C15


def similarity(a: bytes, b: bytes) -> float:
    """The estimated Jaccard similarity of two stored signatures."""
    x, y = array("H", a), array("H", b)
    same: int = sum(map(operator.eq, x, y))
    return same / len(x)


def texts_of(record: dict[str, Any], field: Field) -> list[str]:
    """The texts compared: the completion, or each item, or each turn's words."""
    if field == "items" and isinstance(record.get("items"), list):
        return [str(i) for i in record["items"] if str(i).strip()]
    if field == "turns" and isinstance(record.get("turns"), list):
        return [str(t.get("text", "")) for t in record["turns"] if str(t.get("text", "")).strip()]
    return [str(record.get("completion") or "")]


def params_of(filters: FiltersConfig) -> Params | None:
    """A job's near-duplicate settings; None when ``near_dedupe`` is off."""
    if filters.near_dedupe is None:
        return None
    return Params(filters.near_dedupe, filters.near_dedupe_field, filters.near_dedupe_shingle_words)
