"""The Files and Batch APIs over one aiohttp session: upload, create, poll, find, download.

Every call waits for one request from the provider's budget first (``Budget.acquire(0)``),
so polling many batches stays within the rate the online path keeps to. Failures are
``synthd.errors`` provider errors: ``Retryable`` (no answer, a 5xx, a 429) or
``Rejected`` (any other 4xx); the caller decides how long to keep trying.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from synthd.batchfile import KEY_FIELD
from synthd.budget import Budget
from synthd.config import ProviderConfig
from synthd.errors import ProviderError, Rejected, Retryable


class BatchApi:
    """One provider's Files and Batch endpoints. ``start`` and ``close`` bracket its life."""

    def __init__(self, cfg: ProviderConfig, api_key: str | None, budget: Budget) -> None:
        self.cfg = cfg
        self.budget = budget
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # Files are large: a download may take far longer than one completion.
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self.cfg.request_timeout_s)
        self._session = aiohttp.ClientSession(
            timeout=timeout, headers=self._headers, trust_env=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, **kw: Any) -> bytes:
        assert self._session is not None, "start() first"
        await self.budget.acquire(0)
        try:
            async with self._session.request(method, self.cfg.base_url + path, **kw) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise Retryable(f"{method} {path}: {type(e).__name__}") from e
        if status == 200:
            return raw
        detail = f"{method} {path}: HTTP {status}: {raw[:300].decode('utf-8', 'replace')}"
        if status == 429 or status >= 500 or status in (408, 409):
            raise Retryable(detail, status)
        raise Rejected(detail, status)

    async def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        raw = await self._call(method, path, **kw)
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise Retryable(f"{method} {path}: the reply is not JSON") from e
        if not isinstance(obj, dict):
            raise Retryable(f"{method} {path}: the reply is not an object")
        return obj

    async def upload(self, path: Path, filename: str) -> str:
        """Upload a batch input file (read in a thread); its file id."""
        data = await asyncio.to_thread(path.read_bytes)
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", data, filename=filename, content_type="application/jsonl")
        return str((await self._json("POST", "/files", data=form))["id"])

    async def create(self, file_id: str, endpoint: str, key: str) -> dict[str, Any]:
        body = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": {KEY_FIELD: key},
        }
        return await self._json("POST", "/batches", data=orjson.dumps(body), headers=_JSON)

    async def get(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/batches/{batch_id}")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/batches/{batch_id}/cancel")

    async def find(self, key: str, since: float) -> dict[str, Any] | None:
        """The batch whose metadata holds ``key``, looking back to ``since`` (a crash
        between create and recording its id leaves only this to find it by)."""
        after: str | None = None
        while True:
            params = {"limit": "100", **({"after": after} if after else {})}
            page = await self._json("GET", "/batches", params=params)
            data = page.get("data") or []
            for b in data:
                if (b.get("metadata") or {}).get(KEY_FIELD) == key:
                    return dict(b)
            # Newest first: past the batch's own creation (less a clock's skew) it cannot be.
            if not data or not page.get("has_more") or data[-1].get("created_at", 0) < since - 3600:
                return None
            after = str(data[-1]["id"])

    async def find_file(self, filename: str, since: float) -> str | None:
        """The id of an uploaded batch file named ``filename`` (a crash between its upload
        and recording the id leaves only its name to find it by), looking back to ``since``."""
        after: str | None = None
        while True:
            params = {"purpose": "batch", "limit": "10000", **({"after": after} if after else {})}
            page = await self._json("GET", "/files", params=params)
            data = page.get("data") or []
            for f in data:
                if f.get("filename") == filename:
                    return str(f["id"])
            if not data or not page.get("has_more") or data[-1].get("created_at", 0) < since - 3600:
                return None
            after = str(data[-1]["id"])

    async def content(self, file_id: str) -> bytes:
        return await self._call("GET", f"/files/{file_id}/content")

    async def delete_file(self, file_id: str) -> None:
        try:
            await self._call("DELETE", f"/files/{file_id}")
        except ProviderError as e:
            if e.status != 404:  # already gone is what we wanted
                raise


_JSON = {"Content-Type": "application/json"}
