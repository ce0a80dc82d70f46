"""REST GETs for snapshots and instrument metadata, with rate-limit handling.

HTTP 429 (rate limited) and 418 (Binance's IP ban) honour ``Retry-After``;
other failures back off with jitter. Every body is handed to the recorder so
REST snapshots enter the raw capture like frames do.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol
from urllib.parse import urlencode

import aiohttp

from ..errors import CobyError
from ..exchanges.base import RestRequest
from .backoff import Backoff

log = logging.getLogger(__name__)


class RestError(CobyError):
    code = "NET-001"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HttpRecorder(Protocol):
    def http(self, url: str, data: str) -> None: ...


class RestClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        retries: int = 5,
        recorder: HttpRecorder | None = None,
        max_body_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._recorder = recorder
        self._max_body = max_body_bytes
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        self.rate_limited = 0

    def url_for(self, request: RestRequest) -> str:
        query = urlencode(request.params)
        return f"{self.base_url}{request.path}" + (f"?{query}" if query else "")

    async def get(self, request: RestRequest) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = self.url_for(request)
        backoff = Backoff(base=0.5, cap=30.0)
        last_error = "no attempt"
        for _attempt in range(self._retries):
            retry_after = 0.0
            try:
                self.requests += 1
                async with self._session.get(url) as resp:
                    body = await self._read_capped(resp, request)
                    text = body.decode("utf-8", errors="replace")
                    if resp.status == 200:
                        if self._recorder is not None:
                            self._recorder.http(url, text)
                        return text
                    last_error = f"HTTP {resp.status}"
                    if resp.status in (429, 418):
                        self.rate_limited += 1
                        retry_after = _retry_after(resp.headers.get("Retry-After"))
                    elif 400 <= resp.status < 500:
                        raise RestError(f"GET {request.path}: HTTP {resp.status}: {text[:200]}", resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            delay = backoff.next_delay(minimum=retry_after)
            log.warning("GET %s failed (%s); retrying in %.1fs", request.path, last_error, delay)
            await asyncio.sleep(delay)
        raise RestError(f"GET {request.path} failed after {self._retries} attempts: {last_error}")

    async def _read_capped(self, resp: aiohttp.ClientResponse, request: RestRequest) -> bytes:
        """The whole body, refusing more than ``max_body_bytes`` (memory stays bounded)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self._max_body:
                raise RestError(f"GET {request.path}: response larger than {self._max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _retry_after(value: str | None) -> float:
    if not value:
        return 1.0
    try:
        return min(max(float(value), 0.0), 300.0)
    except ValueError:
        return 1.0
