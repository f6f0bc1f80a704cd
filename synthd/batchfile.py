"""Batch input and result files as values: packing lines, reading results. Pure.

A batch input file is JSONL, one request a line: ``{"custom_id", "method", "url", "body"}``.
The custom_id is the item's id (its claim and its ordinal), so a result line names the
item it belongs to whatever order the provider writes results in. A ``Pack`` collects
lines up to the job's request and byte limits; ``parse_results`` reads an output or an
error file into one ``LineResult`` per line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

# What a batch line's "url" is for each api; the batch's "endpoint" is the same.
BATCH_URLS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
KEY_FIELD = "synthd_batch"  # the batch metadata key that finds a batch again after a crash


def custom_id(claim: str, seq: int) -> str:
    """The item's id: unique in the state (claims are never reused), stable across runs."""
    return f"{claim}:{seq}"


def batch_key(prefix: str, local_id: int) -> str:
    """The synthd key put in a batch's metadata: this state's and the batch row's."""
    return f"synthd-{prefix}-{local_id}"


def request_line(cid: str, api: str, body: bytes) -> bytes:
    """One input line around an already encoded request body (not encoded again)."""
    head = orjson.dumps({"custom_id": cid, "method": "POST", "url": BATCH_URLS[api]})
    return head[:-1] + b',"body":' + body + b"}\n"


def body_of(line: bytes) -> dict[str, Any]:
    """The request body of an input line."""
    body: dict[str, Any] = orjson.loads(line)["body"]
    return body


@dataclass(frozen=True, slots=True)
class Member:
    """An item in a pack: what its record needs once its result comes back."""

    custom_id: str
    source_id: int
    seq: int
    line: int
    end: int
    offset: int  # of its request line in the pack's file
    length: int
    fields: dict[str, str]
    meta: dict[str, Any] | None
    sent_context: str | None  # the context as sent, when the prompt was cut short
    prompt_chars: int
    reserved: int
    tries: int = 0


@dataclass(slots=True)
class Pack:
    """Lines gathered for one batch file, within its request and byte limits."""

    max_requests: int
    max_bytes: int
    data: bytearray = field(default_factory=bytearray)  # lines not yet handed to the file
    members: list[Member] = field(default_factory=list)
    tokens: int = 0
    spilled: int = 0  # bytes of lines already taken out (``take``) to be written

    @property
    def size(self) -> int:
        """Bytes of the whole file: lines taken out and lines still held."""
        return self.spilled + len(self.data)

    def fits(self, nbytes: int) -> bool:
        """Whether one more line of ``nbytes`` stays within the limits (an empty pack
        takes any line: a line over the byte limit alone is still one request)."""
        if not self.members:
            return True
        return len(self.members) < self.max_requests and self.size + nbytes <= self.max_bytes

    @property
    def full(self) -> bool:
        return len(self.members) >= self.max_requests or self.size >= self.max_bytes

    def take(self) -> bytes:
        """The lines held so far, to be appended to the file: the pack keeps only members."""
        out = bytes(self.data)
        self.spilled += len(out)
        self.data = bytearray()
        return out

    def add(self, line: bytes, member: Member) -> None:
        self.members.append(member)
        self.data += line
        self.tokens += member.reserved


@dataclass(frozen=True, slots=True)
class LineResult:
    """One result line: a success's response body, or why the request failed."""

    custom_id: str
    body: dict[str, Any] | None  # the completion, when status_code was 200
    error: str | None  # a stable code: batch_expired, http_500, ...
    detail: str = ""


def parse_results(raw: bytes) -> list[LineResult]:
    """Every line of an output or error file; a line that cannot be read is skipped
    (its item is then missing, and missing items are resubmitted)."""
    return parse_lines(raw.splitlines())


def parse_lines(lines: list[bytes]) -> list[LineResult]:
    """``parse_results`` over lines already split: a big file is read a chunk at a time."""
    out: list[LineResult] = []
    for ln in lines:
        try:
            row = orjson.loads(ln)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("custom_id"), str):
            continue
        out.append(_result(row))
    return out


def _result(row: dict[str, Any]) -> LineResult:
    cid = row["custom_id"]
    resp = row.get("response")
    err = row.get("error")
    if isinstance(resp, dict) and resp.get("status_code") == 200:
        body = resp.get("body")
        if isinstance(body, dict):
            return LineResult(cid, body, None)
        return LineResult(cid, None, "malformed", "a 200 without a body")
    if isinstance(err, dict) and err.get("code"):
        return LineResult(cid, None, str(err["code"]), str(err.get("message") or ""))
    if isinstance(resp, dict):
        detail = ""
        body = resp.get("body")
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            detail = str(body["error"].get("message") or "")
        return LineResult(cid, None, f"http_{resp.get('status_code')}", detail)
    return LineResult(cid, None, "unknown", "neither a response nor an error")


def batch_failure(obj: dict[str, Any]) -> str:
    """The code a failed batch reports (``token_limit_exceeded``, ...), or ``failed``."""
    errors = obj.get("errors")
    if isinstance(errors, dict):
        for e in errors.get("data") or ():
            if isinstance(e, dict) and e.get("code"):
                return str(e["code"])
    return "failed"


def failed_batch(batch_id: str | None, code: str) -> dict[str, Any]:
    """A batch as if the provider reported it failed with ``code``: one it refused to
    create (``refused``) or refuses to show (``lost``), whose items then go again."""
    return {"id": batch_id, "status": "failed", "errors": {"data": [{"code": code}]}}


def token_limit_after(limit: int, enqueued_before: int, tokens: int) -> int:
    """The enqueued-token limit once a batch of ``tokens`` failed with
    ``token_limit_exceeded`` while ``enqueued_before`` were enqueued: below what it made,
    yet at least 1 (a batch alone over it still goes, when nothing else is enqueued)."""
    return min(limit, max(1, enqueued_before + tokens - 1))


def poll_delay_s(polls: int, base_s: float, max_s: float) -> float:
    """The wait before the next status poll: doubling from ``base_s`` up to ``max_s``."""
    return float(min(max_s, base_s * 2 ** min(polls, 30)))
