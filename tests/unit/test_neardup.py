"""synthd.neardup: the keys of near-duplicate texts (the index is ``test_nearindex``)."""

from __future__ import annotations

import random

from synthd import neardup
from synthd.config_jobs import FiltersConfig

# Ten texts of the kind the shipped jobs produce, distinct in content though alike in form.
TEXTS = [
    "Why did the council close the library on the east side, and who decided it without "
    "asking the families who use it every afternoon after school?",
    "What will the nurses do when the night shift is cut to two people for the whole ward, "
    "and how will patients who need help at three in the morning be heard?",
    "How long had the tenant been asking the landlord to fix the mould in the bathroom before "
    "she finally called the housing office, and what did they tell her?",
    "Where will the farmers store the grain now that the flood has taken the barn, and will "
    "the insurance pay before the winter feed runs out for the cattle?",
    "Who looks after the younger brother while the mother works two jobs across town, and "
    "does the school know that he eats nothing until dinner?",
    "What did the teacher who fled the war bring with her, and how does she plan lessons for "
    "children who speak four different languages in one small classroom?",
    "Why is the student paying more than half of his loan on rent for a room without a "
    "window, and what would happen if he moved back home to his parents?",
    "How did the storm change the route of the ferry that the island depends on for food, "
    "medicine and the post, and when will the harbour be repaired?",
    "What does the new parent wish someone had told her about the first weeks without sleep, "
    "and who did she turn to when the crying would not stop at night?",
    "Why do the neighbours play loud music every weekend until dawn, and has anyone on the "
    "street tried to talk to them before calling the police about it?",
]


def reorder(text: str) -> str:
    """The same clauses in another order, as a model rewrites a sentence."""
    first, _, rest = text.partition(", and ")
    return f"{rest.rstrip('?')}, and {first[0].lower()}{first[1:]}?"


def one_word_changed(text: str) -> str:
    words = text.split()
    words[len(words) // 2] = "really"
    return " ".join(words)


def reworded(text: str) -> str:
    """Case, punctuation and spacing changed, and one word swapped for a synonym."""
    return one_word_changed(text).upper().replace(",", " ;").replace("?", " !!")


PARAMS = neardup.Params(0.85)


def test_estimate_tracks_the_true_jaccard_similarity() -> None:
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(5000)]
    for _ in range(20):
        a = set(rng.sample(vocab, 200))
        b = set(rng.sample(sorted(a), rng.randint(120, 200))) | set(rng.sample(vocab, 30))
        true = len(a & b) / len(a | b)
        ka = neardup.key(" ".join(sorted(a)), 1, PARAMS.rows)
        kb = neardup.key(" ".join(sorted(b)), 1, PARAMS.rows)
        # 128 permutations: the estimate's standard deviation is at most 0.045.
        assert abs(neardup.similarity(ka.sig, kb.sig) - true) < 0.15


def test_band_shape_finds_pairs_at_the_threshold() -> None:
    for t in (0.5, 0.7, 0.85, 0.9, 0.95):
        r = neardup.band_rows(t)
        b = neardup.NUM_PERM // r
        assert 1 - (1 - t**r) ** b >= 0.95
        assert len(neardup.band_keys(list(range(neardup.NUM_PERM)), r)) == b


def test_units_follow_the_configured_field() -> None:
    rec = {
        "completion": "A?\nB?",
        "items": ["A?", "B?", " "],
        "turns": [{"speaker": "Coach", "text": "Hi"}, {"speaker": "Maya", "text": "Hello"}],
    }
    assert neardup.texts_of(rec, "completion") == ["A?\nB?"]
    assert neardup.texts_of(rec, "items") == ["A?", "B?"]
    assert neardup.texts_of(rec, "turns") == ["Hi", "Hello"]
    assert neardup.texts_of({"completion": "x"}, "items") == ["x"]  # no items: the completion


def test_params_come_from_the_filters() -> None:
    assert neardup.params_of(FiltersConfig()) is None
    p = neardup.params_of(FiltersConfig(near_dedupe=0.9, near_dedupe_field="items"))
    assert p == neardup.Params(0.9, "items", 1)


def test_shingles_ignore_case_and_punctuation() -> None:
    assert neardup.shingles("Hello, World! Again", 2) == {"hello world", "world again"}
    assert neardup.shingles("One", 3) == {"one"}
    assert neardup.shingles("", 2) == {""}
