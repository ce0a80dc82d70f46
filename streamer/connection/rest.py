"""REST GETs for snapshots and instrument metadata, with rate-limit handling.

HTTP 429 (rate limited) and 418 (Binance's IP ban) honour ``Retry-After``;
other failures back off with capped, full jitter. A 429 or 418 closes the
client's gate until ``Retry-After`` has passed: every request of this client
(all symbols' snapshots share it) waits, so a banned client does not keep
hammering the exchange and prolong the ban. Every wait is recorded in
:attr:`RestClient.waits` (reason and seconds) for the operator and the tests.
Every body is handed to the recorder so REST snapshots enter the raw capture
like frames do.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
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


#: Longest Retry-After honoured; a larger value is most likely a misparsed header.
MAX_RETRY_AFTER = 300.0
#: Waits kept in :attr:`RestClient.waits`.
WAITS_KEPT = 256


@dataclass(frozen=True, slots=True)
class RestWait:
    """One pause before a request: why, and for how long (seconds)."""

    reason: str
    seconds: float
    status: int | None = None
    retry_after: float | None = None


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
        #: HTTP 418 answers (Binance's IP ban for clients that ignored 429s).
        self.banned = 0
        #: Recent pauses (backoff after a failure, or the rate-limit gate), newest last.
        self.waits: deque[RestWait] = deque(maxlen=WAITS_KEPT)
        # Loop time before which no request may be sent (set by 429/418 Retry-After).
        self._gate_until = 0.0

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
            status: int | None = None
            await self._wait_for_gate(request)
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
                    status = resp.status
                    if resp.status in (429, 418):
                        self.rate_limited += 1
                        if resp.status == 418:
                            self.banned += 1
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                        self._close_gate(retry_after)
                    elif 400 <= resp.status < 500:
                        raise RestError(f"GET {request.path}: HTTP {resp.status}: {text[:200]}", resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            delay = backoff.next_delay(minimum=retry_after)
            self.waits.append(RestWait(last_error, delay, status, retry_after if status in (429, 418) else None))
            log.warning("GET %s failed (%s); retrying in %.1fs", request.path, last_error, delay)
            await asyncio.sleep(delay)
        raise RestError(f"GET {request.path} failed after {self._retries} attempts: {last_error}", status)

    def _close_gate(self, seconds: float) -> None:
        """No request of this client before ``seconds`` from now (never shortens a running ban)."""
        until = asyncio.get_running_loop().time() + seconds
        self._gate_until = max(self._gate_until, until)

    async def _wait_for_gate(self, request: RestRequest) -> None:
        """Wait while a 429/418 Retry-After is running, whoever's request caused it."""
        loop = asyncio.get_running_loop()
        while (left := self._gate_until - loop.time()) > 0:
            self.waits.append(RestWait("rate-limit gate", left))
            log.info("GET %s waits %.1fs for the exchange's Retry-After", request.path, left)
            await asyncio.sleep(left)

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


def parse_retry_after(value: str | None) -> float:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110 10.2.3).

    Missing or unreadable: 1 s, so a rate-limited client still pauses.
    """
    if not value:
        return 1.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 1.0
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if seconds != seconds:  # NaN
        return 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
