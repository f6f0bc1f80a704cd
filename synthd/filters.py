"""The validation chain: a completion in, an ``Accepted`` or a ``Rejection`` out.

Pure and built once per job. The steps run in a fixed order, each one either
transforming the text or rejecting it with a stable reason code:

1. finish reason (``content_filter`` and the like), empty text
2. strip, ``drop_if_matching`` (refusal boilerplate) on the whole text
3. ``split`` into lines, paragraphs or speaker turns
4. ``strip_numbering``, ``keep_lines_matching``, ``drop_lines_matching``
5. counts: ``min_items``/``max_items``, ``min_turns``; ``single_paragraph``
6. ``require_json`` (and its JSON Schema)
7. ``min_chars``/``max_chars`` on the final text
8. a judge job's verdict (``synthd.judge``): its score against ``min_score``

De-duplication is not here: it needs the job's history and lives with the
single writer (``synthd.writer``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import orjson

from synthd import judge as judge_mod
from synthd.config_jobs import FiltersConfig, JudgeConfig
from synthd.models import Accepted, Rejection

# List markers followed by white space: "1. ", "2) ", "- ", "(a) ", "Q3: ". The
# space is required, so "3.5 million" or "-5 degrees" keep their numbers.
_NUMBERING = re.compile(r"^\s*(?:\d{1,3}[.):]|[-*•]|\(?[a-zA-Z]\)|Q\d{1,3}[.:])\s+")
_LABEL = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 _'-]{0,40}):\s?(.*)$")
_BLANK_LINE = re.compile(r"\n\s*\n")
# A label that reads like a name ("Maya:", "SYSTEM:", "Dr Lee:") starts a turn;
# "PS:" or "Note:" inside a turn do not.
_SPEAKERLIKE = re.compile(r"^[A-Z][A-Za-z'-]{1,23}(?: [A-Z][A-Za-z'-]{1,23})?$")
_NOT_SPEAKERS = frozenset({"ps", "note", "tip", "example", "step", "summary", "warning", "edit"})


class FilterChain:
    """A job's filters, compiled. ``apply`` is pure and never raises on text."""

    def __init__(
        self,
        cfg: FiltersConfig,
        schema: dict[str, Any] | None = None,
        judge: JudgeConfig | None = None,
    ) -> None:
        self.cfg = cfg
        self._judge = judge
        self._keep = re.compile(cfg.keep_lines_matching) if cfg.keep_lines_matching else None
        self._drop = re.compile(cfg.drop_lines_matching) if cfg.drop_lines_matching else None
        self._drop_if = (
            re.compile(cfg.drop_if_matching, re.IGNORECASE) if cfg.drop_if_matching else None
        )
        self._speakers = {s.casefold(): s for s in cfg.speakers}
        self._validate: Callable[[Any], str | None] | None = None
        if schema is not None:
            self._validate = _schema_validator(schema)

    def apply(self, text: str | None, finish_reason: str | None) -> Accepted | Rejection:
        cfg = self.cfg
        if finish_reason in cfg.reject_finish_reasons:
            return Rejection(f"finish_reason:{finish_reason}")
        if text is None or not text.strip():
            return Rejection("empty")
        if cfg.strip:
            text = text.strip()
        if self._drop_if is not None and (m := self._drop_if.search(text)):
            return Rejection("drop_if_matching", m.group(0)[:80])
        if cfg.split == "turns":
            return self._turns(text)
        if cfg.split == "none":
            if cfg.single_paragraph and _BLANK_LINE.search(text):
                return Rejection("not_single_paragraph")
            return self._finish(text, None)
        parts = text.splitlines() if cfg.split == "lines" else _BLANK_LINE.split(text)
        items = self._clean_items(parts)
        if len(items) < cfg.min_items:
            return Rejection("too_few_items", f"{len(items)} < {cfg.min_items}")
        if cfg.max_items is not None:
            items = items[: cfg.max_items]
        joiner = "\n" if cfg.split == "lines" else "\n\n"
        return self._finish(joiner.join(items), items)

    def _clean_items(self, parts: list[str]) -> list[str]:
        items = []
        for part in parts:
            item = part.strip()
            if self.cfg.strip_numbering:
                item = _NUMBERING.sub("", item, count=1).strip()
            if not item:
                continue
            if self._keep is not None and not self._keep.search(item):
                continue
            if self._drop is not None and self._drop.search(item):
                continue
            items.append(item)
        return items

    def _turns(self, text: str) -> Accepted | Rejection:
        turns: list[tuple[str, str]] = []
        for raw in text.splitlines():
            m = _LABEL.match(raw)
            label = m.group(1).strip() if m else ""
            if m and label.casefold() in self._speakers:
                turns.append((self._speakers[label.casefold()], m.group(2).strip()))
            elif m and _SPEAKERLIKE.match(label) and label.casefold() not in _NOT_SPEAKERS:
                return Rejection("unknown_speaker", label)
            elif turns:
                speaker, said = turns[-1]
                turns[-1] = (speaker, f"{said}\n{raw.strip()}".strip())
            elif raw.strip():
                return Rejection("text_before_first_turn", raw.strip()[:80])
        for (a, _), (b, _) in itertools.pairwise(turns):
            if a == b:
                return Rejection("broken_alternation", a)
        if any(not said for _, said in turns):
            return Rejection("empty_turn")
        if len(turns) < max(self.cfg.min_turns, 1):
            return Rejection("too_few_turns", f"{len(turns)} < {self.cfg.min_turns}")
        joined = "\n".join(f"{s}: {t}" for s, t in turns)
        return self._finish(joined, None, turns)

    def _finish(
        self, text: str, items: list[str] | None, turns: list[tuple[str, str]] | None = None
    ) -> Accepted | Rejection:
        cfg = self.cfg
        data: Any = None
        if cfg.require_json:
            try:
                data = orjson.loads(_unfence(text))
            except orjson.JSONDecodeError as e:
                return Rejection("invalid_json", str(e)[:120])
            if self._validate is not None and (problem := self._validate(data)):
                return Rejection("schema", problem[:200])
        if len(text) < cfg.min_chars:
            return Rejection("too_short", f"{len(text)} < {cfg.min_chars} chars")
        if cfg.max_chars is not None and len(text) > cfg.max_chars:
            return Rejection("too_long", f"{len(text)} > {cfg.max_chars} chars")
        if self._judge is not None:
            return judge_mod.verdict(text, self._judge)
        return Accepted(text, items, turns, data)


def _unfence(text: str) -> str:
    """Models often wrap JSON in a Markdown code fence; look inside it."""
    if text.startswith("```"):
        body = text.split("\n", 1)[1] if "\n" in text else ""
        return body.rsplit("```", 1)[0]
    return text


def _schema_validator(schema: dict[str, Any]) -> Callable[[Any], str | None]:
    # Deferred to save start-up time: jsonschema costs about a third of the daemon's whole
    # import time (python -X importtime), and only jobs with a json_schema need it.
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)

    def validate(data: Any) -> str | None:
        error = jsonschema.exceptions.best_match(validator.iter_errors(data))
        return None if error is None else error.message

    return validate
