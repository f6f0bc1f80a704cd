"""Dry-run's preview of an ``input = "chunks"`` job: how its first files are cut. Pure.

For each of the first ``FILES_SHOWN`` files: the passages' count and sizes (tokens estimated
at the chunker's fixed characters per token, the measure ``chunk_tokens`` is given in) and
the first two passages, whole in ``--json`` and cut to ``SHOWN_CHARS`` in the text report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from synthd.chunking import CHARS_PER_TOKEN
from synthd.models import WorkItem

FILES_SHOWN = 10  # how many files' cuts a dry-run shows
SHOWN_CHARS = 400  # of each passage shown; --json has them whole


@dataclass(slots=True)
class ChunkedFile:
    """How one file of an ``input = "chunks"`` job is cut: its passages' count and sizes
    (tokens estimated at the chunker's fixed characters per token), and the first two."""

    file: str
    passages: int = 0
    tokens_min: int = 0
    tokens_max: int = 0
    tokens_total: int = 0
    first: list[tuple[tuple[int, int], str]] = field(default_factory=list)  # (span, text)

    def add(self, item: WorkItem) -> None:
        assert item.span is not None
        tokens = -(-(item.span[1] - item.span[0]) // CHARS_PER_TOKEN)
        self.tokens_min = tokens if not self.passages else min(self.tokens_min, tokens)
        self.tokens_max = max(self.tokens_max, tokens)
        self.tokens_total += tokens
        self.passages += 1
        if len(self.first) < 2:
            self.first.append((item.span, item.fields["context"]))

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "passages": self.passages,
            "tokens_min": self.tokens_min,
            "tokens_mean": round(self.tokens_total / max(1, self.passages), 1),
            "tokens_max": self.tokens_max,
            "first": [{"span": list(span), "text": text} for span, text in self.first],
        }


def render(files: list[ChunkedFile]) -> list[str]:
    """The text report's lines for ``files``: sizes, then the first passages, indented."""
    out = []
    for c in files:
        mean = c.tokens_total / max(1, c.passages)
        out.append(
            f"-- chunks of {c.file}: {c.passages:,} passages of ~{c.tokens_min:,} / "
            f"{mean:,.0f} / {c.tokens_max:,} tokens (min / mean / max)"
        )
        for i, ((start, end), text) in enumerate(c.first, 1):
            shown = text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + " [...]"
            out.append(f"   passage {i}, characters {start:,}-{end:,}:")
            out.append("   | " + shown.replace("\n", "\n   | "))
    return out
