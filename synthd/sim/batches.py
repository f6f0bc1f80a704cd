"""The simulator's Files and Batch APIs: uploads, batches that take time, and their faults.

OpenAI's shapes (``openai.types.Batch``, ``FileObject``): a JSONL file is uploaded with
``purpose=batch``; a batch made from it goes ``validating`` -> ``in_progress`` ->
``finalizing`` -> ``completed`` after ``batch_time_s`` (scaled down for tests), and its
results land in an output file (successes) and an error file (failed or expired lines),
one line per request in any order. The faults a batch client must survive are knobs
of ``SimConfig``: a share of lines that fail (``batch_p_line_fail``), every n-th batch
expiring with only part of its lines done (``batch_expire_every``), every n-th batch
failing whole at validation (``batch_fail_every``), and a limit on the tokens enqueued
per model (``batch_enqueued_tokens``; a batch over it fails with ``token_limit_exceeded``).
State lives in memory for the simulator's life, which is what lets a test kill the
daemon and find its batches again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from synthd.sim.config import SimConfig
from synthd.sim.protocol import error_body, list_page

# (kind, body) -> (status, response body): how the server answers one request.
Answer = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any], int]]

MAX_LINES = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "text"}
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_JSON = "application/json"


@dataclass(slots=True)
class SimFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def obj(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass(slots=True)
class SimBatch:
    id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, str] | None
    created_at: int
    status: str = "validating"
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    tokens: int = 0
    model: str = ""
    times: dict[str, int] = field(default_factory=dict)
    cancel: asyncio.Event = field(default_factory=asyncio.Event)

    def obj(self) -> dict[str, Any]:
        t = self.times
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": t.get("in_progress"),
            "expires_at": self.created_at + 86400,
            "finalizing_at": t.get("finalizing"),
            "completed_at": t.get("completed"),
            "failed_at": t.get("failed"),
            "expired_at": t.get("expired"),
            "cancelling_at": t.get("cancelling"),
            "cancelled_at": t.get("cancelled"),
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
        }


def _error(status: int, message: str, code: str | None = None) -> web.Response:
    body = error_body(message, "invalid_request_error", None, code)
    return web.Response(status=status, body=body, content_type=_JSON)


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type=_JSON)


class Batches:
    """Files and batches, and the tasks that process batches. One per app."""

    def __init__(self, cfg: SimConfig, answer: Answer) -> None:
        self.cfg = cfg
        self._answer = answer
        self.files: dict[str, SimFile] = {}
        self.batches: dict[str, SimBatch] = {}  # in creation order
        self._enqueued: dict[str, int] = {}  # model -> tokens of batches in progress
        self._rng = random.Random(cfg.fault_seed)
        self._count = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.created = 0

    def _id(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count:08x}{self._rng.getrandbits(32):08x}"

    def _add_file(self, filename: str, purpose: str, data: bytes) -> SimFile:
        f = SimFile(self._id("file"), filename, purpose, data, int(time.time()))
        self.files[f.id] = f
        return f

    # -- files --

    async def upload(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        purpose = form.get("purpose")
        upload = form.get("file")
        if purpose != "batch" or not isinstance(upload, web.FileField):
            return _error(400, "purpose=batch and a file are required")
        data = upload.file.read()
        if len(data) > MAX_FILE_BYTES:
            return _error(400, f"file is larger than {MAX_FILE_BYTES} bytes")
        return _json(self._add_file(upload.filename, "batch", data).obj())

    async def list_files(self, request: web.Request) -> web.StreamResponse:
        """Newest first, filtered by ``purpose``; ``after`` is the previous page's last id."""
        limit = max(1, min(10_000, int(request.query.get("limit", "10000"))))
        purpose = request.query.get("purpose")
        ordered = [f for f in reversed(self.files.values()) if purpose in (None, f.purpose)]
        window, more = list_page([f.id for f in ordered], request.query.get("after"), limit)
        page = ordered[window]
        return _json({"object": "list", "data": [f.obj() for f in page], "has_more": more})

    async def file_info(self, request: web.Request) -> web.StreamResponse:
        f = self.files.get(request.match_info["id"])
        return _json(f.obj()) if f else _error(404, "No such File object")

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        f = self.files.get(request.match_info["id"])
        if f is None:
            return _error(404, "No such File object")
        return web.Response(body=f.data, content_type="application/octet-stream")

    async def file_delete(self, request: web.Request) -> web.StreamResponse:
        f = self.files.pop(request.match_info["id"], None)
        if f is None:
            return _error(404, "No such File object")
        return _json({"id": f.id, "object": "file", "deleted": True})

    # -- batches --

    async def create(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "body is not an object")
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            return _error(400, f"endpoint must be one of {sorted(ENDPOINTS)}")
        if body.get("completion_window") != "24h":
            return _error(400, "completion_window must be '24h'")
        f = self.files.get(str(body.get("input_file_id")))
        if f is None:
            return _error(400, "input_file_id: no such file")
        metadata = body.get("metadata")
        b = SimBatch(self._id("batch"), endpoint, f.id, metadata, int(time.time()))
        self.batches[b.id] = b
        self.created += 1
        task = asyncio.create_task(self._process(b, f.data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _json(b.obj())

    async def get(self, request: web.Request) -> web.StreamResponse:
        b = self.batches.get(request.match_info["id"])
        return _json(b.obj()) if b else _error(404, "No such Batch object")

    async def list_batches(self, request: web.Request) -> web.StreamResponse:
        """Newest first; ``after`` is the id the previous page ended with."""
        limit = max(1, min(100, int(request.query.get("limit", "20"))))
        ordered = list(reversed(self.batches.values()))
        window, more = list_page([b.id for b in ordered], request.query.get("after"), limit)
        page = ordered[window]
        return _json(
            {
                "object": "list",
                "data": [b.obj() for b in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": more,
            }
        )

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        b = self.batches.get(request.match_info["id"])
        if b is None:
            return _error(404, "No such Batch object")
        if b.status not in TERMINAL:
            b.status = "cancelling"
            b.times["cancelling"] = int(time.time())
            b.cancel.set()
        return _json(b.obj())

    # -- processing --

    async def _process(self, b: SimBatch, data: bytes) -> None:
        lines = [ln for ln in data.splitlines() if ln.strip()]
        requests, problem = self._validate(b, lines)
        if problem is not None:
            self._finish(b, "failed", errors=[problem])
            return
        b.total = len(requests)
        n = self.created
        if self.cfg.batch_fail_every and n % self.cfg.batch_fail_every == 0:
            self._finish(b, "failed", errors=[{"code": "server_error", "message": "failed"}])
            return
        b.tokens = sum(_tokens(r["body"]) for r in requests)
        b.model = str(requests[0]["body"].get("model", "")) if requests else ""
        limit = self.cfg.batch_enqueued_tokens
        if limit and self._enqueued.get(b.model, 0) + b.tokens > limit:
            message = f"Enqueued token limit reached for {b.model}. Limit: {limit} enqueued tokens."
            self._finish(b, "failed", errors=[{"code": "token_limit_exceeded", "message": message}])
            return
        self._enqueued[b.model] = self._enqueued.get(b.model, 0) + b.tokens
        try:
            b.status = "in_progress"
            b.times["in_progress"] = int(time.time())
            expire = bool(self.cfg.batch_expire_every and n % self.cfg.batch_expire_every == 0)
            # The simulated time: lines complete over it, so an expiry or a cancel keeps
            # what finished before it.
            done_share = 1.0
            try:
                async with asyncio.timeout(self.cfg.batch_time_s):
                    await b.cancel.wait()
                done_share = 0.5
            except TimeoutError:
                pass
            if expire:
                done_share = 0.5
            cut = int(len(requests) * done_share)
            out: list[dict[str, Any]] = []
            err: list[dict[str, Any]] = []
            kind = ENDPOINTS[b.endpoint]
            for i, r in enumerate(requests):
                rid = f"batch_req_{b.id}_{i}"
                if i >= cut:
                    reason = "batch_cancelled" if b.cancel.is_set() else "batch_expired"
                    message = "This request could not be executed before the batch ended."
                    err.append(
                        _line(rid, r["custom_id"], None, {"code": reason, "message": message})
                    )
                    continue
                if self._rng.random() < self.cfg.batch_p_line_fail:
                    resp = orjson.loads(error_body("The server had an error", "server_error"))
                    err.append(_line(rid, r["custom_id"], {"status_code": 500, "body": resp}, None))
                    continue
                status, resp, _ = self._answer(kind, r["body"])
                entry = _line(rid, r["custom_id"], {"status_code": status, "body": resp}, None)
                (out if status == 200 else err).append(entry)
            b.completed, b.failed = len(out), len(err)
            b.times["finalizing"] = int(time.time())
            if out:
                b.output_file_id = self._add_file(
                    f"{b.id}_output.jsonl", "batch_output", _jsonl(out)
                ).id
            if err:
                b.error_file_id = self._add_file(
                    f"{b.id}_error.jsonl", "batch_output", _jsonl(err)
                ).id
            if b.cancel.is_set():
                self._finish(b, "cancelled")
            else:
                self._finish(b, "expired" if expire else "completed")
        finally:
            self._enqueued[b.model] -= b.tokens

    def _validate(
        self, b: SimBatch, lines: list[bytes]
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        if len(lines) > MAX_LINES:
            return [], {"code": "too_many_requests", "message": f"over {MAX_LINES} requests"}
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for i, raw in enumerate(lines, 1):
            try:
                r = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return [], {"code": "invalid_json_line", "message": "not JSON", "line": i}
            if not isinstance(r, dict) or set(r) != {"custom_id", "method", "url", "body"}:
                return [], {"code": "invalid_request", "message": "bad keys", "line": i}
            if r["url"] != b.endpoint or r["method"] != "POST":
                return [], {"code": "mismatched_endpoint", "message": r["url"], "line": i}
            if r["custom_id"] in seen:
                return [], {"code": "duplicate_custom_id", "message": r["custom_id"], "line": i}
            seen.add(r["custom_id"])
            out.append(r)
        return out, None

    def _finish(self, b: SimBatch, status: str, errors: list[dict[str, Any]] | None = None) -> None:
        b.status = status
        b.errors = errors
        b.times[status] = int(time.time())

    def counts(self) -> dict[str, int]:
        """Batches by status, for /stats."""
        out: dict[str, int] = {}
        for b in self.batches.values():
            out[b.status] = out.get(b.status, 0) + 1
        return out

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _tokens(body: dict[str, Any]) -> int:
    """Enqueued tokens of one request: its prompt's characters / 4 plus max_tokens x n."""
    prompt = body.get("messages") or body.get("prompt") or ""
    chars = len(orjson.dumps(prompt))
    return chars // 4 + int(body.get("max_tokens") or 16) * int(body.get("n") or 1)


def _line(
    rid: str, custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    if response is not None:
        response = {**response, "request_id": rid.replace("batch_req_", "req_")}
    return {"id": rid, "custom_id": custom_id, "response": response, "error": error}


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)
