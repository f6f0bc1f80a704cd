"""What the simulated model says: deterministic, cheap, plausible enough to exercise filters.

Pure functions. ``analyse`` reads a prompt once per request (mode, context words, speaker
names); ``generate`` writes one choice from it with a ``random.Random`` the caller seeds with
``choice_rng``, so the same request always gets the same answer and choices of one request
differ. Each mode deliberately produces a small share of defective answers (too few questions,
broken turn-taking, invalid JSON, refusals) so that the daemon's filters have work to do.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from random import Random
from typing import Literal

ConcreteMode = Literal["questions", "conversation", "json", "text", "answer", "judge"]
FinishReason = Literal["stop", "length"]

CHARS_PER_TOKEN = 4
#: OpenAI's chat format wraps every message in a few tokens of markup.
TOKENS_PER_MESSAGE = 4


def count_tokens(text: str) -> int:
    """The simulator's token count: ceil(len(text) / 4), so 0 for "" and >= 1 otherwise.

    About right for English under OpenAI's tokenizers, and free to compute. It is the one place
    that defines a token here: prompt usage, completion usage, rate-limit charges and
    ``max_tokens`` truncation all go through it (truncating to n tokens keeps 4n characters).
    """
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def chat_prompt_tokens(contents: Iterable[str]) -> int:
    """Prompt tokens of a chat request: each message's content plus TOKENS_PER_MESSAGE."""
    return sum(count_tokens(c) + TOKENS_PER_MESSAGE for c in contents)


def cut(text: str, max_tokens: int, stop: Sequence[str]) -> tuple[str, FinishReason]:
    """Apply stop sequences and max_tokens the way a decoder meets them, whichever comes first.

    The text ends before the earliest stop sequence that fits entirely within max_tokens
    (finish "stop", the sequence itself excluded); otherwise it is cut to max_tokens (finish
    "length") if longer; otherwise it ends naturally ("stop"). A stop sequence at position 0
    gives an empty text, as it does with the real API.
    """
    limit = max_tokens * CHARS_PER_TOKEN
    end = -1
    for s in stop:
        i = text.find(s)
        if i != -1 and i + len(s) <= limit and (end == -1 or i < end):
            end = i
    if end != -1:
        return text[:end], "stop"
    if len(text) > limit:
        return text[:limit], "length"
    return text, "stop"


# --- seeding ---------------------------------------------------------------------------------


def request_digest(seed: int, canonical_body: bytes) -> int:
    """A 64-bit digest of (server seed, canonical request body): the root of a request's RNGs."""
    h = hashlib.blake2b(canonical_body, digest_size=8, key=seed.to_bytes(8, "little", signed=True))
    return int.from_bytes(h.digest(), "little")


def choice_rng(digest: int, index: int) -> Random:
    """The generator of choice ``index`` (0 <= index < 2**32); distinct indexes give unrelated
    streams."""
    return Random((digest << 32) | index)


# --- reading the prompt ----------------------------------------------------------------------

_SPEAKER = re.compile(r"\b([A-Z][A-Z0-9_]+):")
_WORD = re.compile(r"\b[A-Za-z][a-z]{3,}\b")
_MAX_SCAN_CHARS = 4000
_MAX_WORDS = 24
DEFAULT_SPEAKERS = ("USER", "ASSISTANT")
_THIRD_SPEAKERS = ("NARRATOR", "ALEX", "SAM", "MODERATOR")

_STOPWORDS_TEXT = """
    about above after again against also although among another answer answers anything
    around based because been before being below between both cannot chat come could create
    dialogue does doing done down during each either else enough even every example few from
    following format further generate given good have having here into itself just json keep
    know like list make many more most much must never only other others output over please
    question questions rather really return same should show since some something such than
    that their them then there these they thing things this those though three through under
    until upon used using very want were what when where whether which while will with within
    without would write your yours conversation turn turns text reply respond response
"""
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


@dataclass(frozen=True, slots=True)
class PromptInfo:
    """What generation needs from a prompt, read once per request."""

    mode: ConcreteMode
    words: tuple[str, ...]
    speakers: tuple[str, str]


def detect_mode(prompt: str) -> ConcreteMode:
    """Keyword rules, case-insensitive, first match wins: a judge's rubric (faithfulness),
    an answer (answer the question), question, conversation, json, text."""
    t = prompt.lower()
    if "faithfulness" in t:
        return "judge"
    if "answer the question" in t:
        return "answer"
    if "question" in t:
        return "questions"
    if "conversation" in t or "chat between" in t or "dialogue" in t:
        return "conversation"
    if "json" in t:
        return "json"
    return "text"


def _scan_window(prompt: str) -> str:
    # Long prompts are instructions around a context; both ends are representative enough and
    # bounding the scan keeps a 100 kB prompt from costing a millisecond of regex.
    if len(prompt) <= _MAX_SCAN_CHARS:
        return prompt
    half = _MAX_SCAN_CHARS // 2
    return prompt[:half] + "\n" + prompt[-half:]


def context_words(prompt: str) -> tuple[str, ...]:
    """Distinct lower-case content words of the prompt (4+ letters, no stop words), in order."""
    seen: dict[str, None] = {}
    for m in _WORD.finditer(_scan_window(prompt)):
        w = m.group().lower()
        if w not in _STOPWORDS:
            seen[w] = None
            if len(seen) >= _MAX_WORDS:
                break
    return tuple(seen)


def speaker_names(prompt: str) -> tuple[str, str]:
    """The first two distinct ``NAME:`` tokens of the prompt, completed from USER, ASSISTANT."""
    names: list[str] = []
    for m in _SPEAKER.finditer(_scan_window(prompt)):
        if m.group(1) not in names:
            names.append(m.group(1))
            if len(names) == 2:
                return names[0], names[1]
    for d in DEFAULT_SPEAKERS:
        if len(names) == 2:
            break
        if d not in names:
            names.append(d)
    return names[0], names[1]


def analyse(prompt: str, mode: ConcreteMode | None = None) -> PromptInfo:
    """Read the prompt; ``mode`` overrides keyword detection."""
    return PromptInfo(
        mode=mode or detect_mode(prompt),
        words=context_words(prompt),
        speakers=speaker_names(prompt),
    )


# --- writing ---------------------------------------------------------------------------------

_GENERIC_NOUNS = (
    "the process", "the outcome", "daily practice", "the broader context", "long-term goals",
    "the main idea", "the evidence", "small details", "the first step", "the final result",
    "common mistakes", "the underlying cause", "the next stage", "everyday decisions",
)  # fmt: skip
_SUBJECTS = (
    "the team", "a careful reader", "this approach", "the author", "each step", "the system",
    "a small change", "the evidence", "the process", "a simple habit", "the example",
    "the plan", "good feedback", "the whole story",
)  # fmt: skip
# Prefixes that make any context word, singular or plural, a singular subject.
_SUBJECT_OF = ("the role of ", "the idea of ", "the question of ", "a focus on ", "talk of ")
_VERBS = (
    "depends on", "shapes", "improves", "reflects", "requires", "explains", "supports",
    "changes", "reveals", "complicates", "builds on", "draws attention to", "is linked to",
    "makes room for",
)  # fmt: skip
_OPENERS = (
    "", "", "", "", "In practice, ", "Over time, ", "For most readers, ", "In many cases, ",
    "At first glance, ", "Still, ", "As a result, ", "Interestingly, ",
)  # fmt: skip
_TAILS = (
    "", "", "", " over time", " in practice", " more than expected", " in subtle ways",
    ", which is easy to overlook", " when conditions change", " for everyone involved",
)  # fmt: skip
_QUESTIONS = (
    "What is the main purpose of {a}?",
    "How does {a} relate to {b}?",
    "Why might {a} matter for {b}?",
    "What are the risks of ignoring {a}?",
    "Which examples of {a} appear in the text?",
    "How would you explain {a} to a beginner?",
    "What evidence supports the claim about {a}?",
    "When does {a} become a problem?",
    "Who is most affected by {a}?",
    "What would change if {a} were removed?",
    "How can {a} and {b} be compared?",
    "What is the difference between {a} and {b}?",
)
_INTROS = (
    "Here are some questions:",
    "Here are some questions based on the text:",
    "Sure! Here are a few questions about the passage:",
    "Questions:",
)
_REFUSALS = (
    "As an AI language model, I cannot help with that request.",
    "As an AI language model, I cannot provide that information.",
    "I'm sorry, but I cannot assist with that.",
)


def _noun(words: tuple[str, ...], rng: Random) -> str:
    if words and rng.random() < 0.6:
        return "the " + rng.choice(words)
    return rng.choice(_GENERIC_NOUNS)


def _sentence(words: tuple[str, ...], rng: Random) -> str:
    if words and rng.random() < 0.4:
        subject = rng.choice(_SUBJECT_OF) + rng.choice(words)
    else:
        subject = rng.choice(_SUBJECTS)
    s = f"{rng.choice(_OPENERS)}{subject} {rng.choice(_VERBS)} {_noun(words, rng)}"
    return s[0].upper() + s[1:] + rng.choice(_TAILS) + "."


def _sentences(words: tuple[str, ...], rng: Random, n: int) -> str:
    return " ".join(_sentence(words, rng) for _ in range(n))


def _question_lines(words: tuple[str, ...], rng: Random, n: int) -> list[str]:
    pool = words or tuple(noun.removeprefix("the ") for noun in _GENERIC_NOUNS)
    lines = []
    for template in rng.sample(_QUESTIONS, n):
        q = template.format(a=rng.choice(pool), b=rng.choice(pool))
        if rng.random() < 0.15:  # a model that forgets the question mark
            q = q[:-1] + rng.choice((".", ""))
        lines.append(q)
    return lines


def questions(info: PromptInfo, rng: Random) -> str:
    """An optional intro line, then numbered questions; ~10% have fewer than 3."""
    n = rng.randint(1, 2) if rng.random() < 0.10 else rng.randint(3, 8)
    body = "\n".join(f"{i}. {q}" for i, q in enumerate(_question_lines(info.words, rng, n), 1))
    if rng.random() < 0.85:
        return rng.choice(_INTROS) + rng.choice(("\n", "\n\n")) + body
    return body


def conversation(info: PromptInfo, rng: Random) -> str:
    """6-14 alternating ``NAME: text`` turns; ~5% repeat a speaker, ~3% add a third one."""
    a, b = info.speakers
    turns = rng.randint(6, 14)
    order = [(a, b)[i % 2] for i in range(turns)]
    if rng.random() < 0.05:
        k = rng.randrange(1, turns)
        order[k:] = [(a, b)[(k - 1 + i) % 2] for i in range(turns - k)]
    if rng.random() < 0.03:
        third = next(n for n in _THIRD_SPEAKERS if n not in (a, b))
        order[rng.randrange(1, turns)] = third
    lines = []
    for i, speaker in enumerate(order):
        if i % 2 == 0 and rng.random() < 0.3:
            text = _question_lines(info.words, rng, 1)[0]
        else:
            text = _sentences(info.words, rng, rng.randint(1, 2))
        lines.append(f"{speaker}: {text}")
    return rng.choice(("\n", "\n\n")).join(lines)


def json_object(info: PromptInfo, rng: Random) -> str:
    """A JSON object with summary, questions and score; ~10% is invalid JSON."""
    qs = _question_lines(info.words, rng, rng.randint(2, 5))
    summary = _sentences(info.words, rng, rng.randint(1, 2))
    # Formatted by hand: the pieces are letters, spaces and punctuation that need no escaping,
    # and a hand-made layout is what the invalid variants below need to cut into.
    items = ",\n".join(f'    "{q}"' for q in qs)
    score = rng.randint(1, 10)
    text = f'{{\n  "summary": "{summary}",\n  "questions": [\n{items}\n  ],\n  "score": {score}\n}}'
    r = rng.random()
    if r < 0.05:
        return text[:-1].rstrip()  # missing closing brace
    if r < 0.10:
        return text[:-2] + ",\n}"  # trailing comma
    return text


def prose(info: PromptInfo, rng: Random) -> str:
    """One to three paragraphs; ~5% begin with a refusal."""
    paragraphs = [_sentences(info.words, rng, rng.randint(3, 6)) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.05:
        paragraphs[0] = rng.choice(_REFUSALS) + " " + paragraphs[0]
    return "\n\n".join(paragraphs)


_NOT_SAID = (
    "The passage does not say.",
    "The passage does not say; it only describes {a}.",
    "This is not stated in the passage.",
)


def answer(info: PromptInfo, rng: Random) -> str:
    """One to three sentences; ~15% say the passage does not say (a stage's filter's work)."""
    if rng.random() < 0.15:
        return rng.choice(_NOT_SAID).format(a=_noun(info.words, rng))
    return _sentences(info.words, rng, rng.randint(1, 3))


_REASONS = (
    "The answer follows the passage closely and addresses the question.",
    "Mostly supported by the passage, though it leaves out a detail.",
    "The answer is vague and only loosely tied to the passage.",
    "It adds claims the passage does not make.",
)


def verdict(info: PromptInfo, rng: Random) -> str:
    """A judge's JSON verdict: faithfulness, usefulness, score (the lower), reason.

    ~20% score 4 or less (a judge's ``min_score`` has work to do), ~3% is not JSON.
    """
    if rng.random() < 0.03:
        return "The answer seems reasonable overall."
    low = rng.random() < 0.20
    faithful = rng.randint(1, 4) if low else rng.randint(6, 10)
    useful = rng.randint(faithful, 10) if low else rng.randint(5, 10)
    score = min(faithful, useful)
    reason = _REASONS[2 + rng.randrange(2)] if low else _REASONS[rng.randrange(2)]
    return (
        f'{{"faithfulness": {faithful}, "usefulness": {useful}, "score": {score}, '
        f'"reason": "{reason}"}}'
    )


_WRITERS = {
    "answer": answer,
    "judge": verdict,
    "questions": questions,
    "conversation": conversation,
    "json": json_object,
    "text": prose,
}


def generate(info: PromptInfo, rng: Random) -> str:
    """The full answer the model "wants" to give, before stop sequences and max_tokens."""
    return _WRITERS[info.mode](info, rng)
