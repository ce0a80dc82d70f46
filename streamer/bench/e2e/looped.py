"""A recorded session replayed N times, to make a short capture a long benchmark.

How the loop stays valid: each loop is a whole new WebSocket connection.
The replay backend gives every connection the whole session from its start,
so the client treats it as what it is, a reconnect, and resynchronises every
book from the recorded snapshot (in-band for Kraken and OKX, the REST
``/api/v3/depth`` body for Binance). Sequence ids and checksums are the
recorded ones, untouched, and stay valid within each loop. After a loop's last
frame is flushed to the socket, the server closes it normally; after the last
loop the socket stays open, as the plain replay does.

The cost this adds to the measurement is one reconnect (and, for Binance, one
REST snapshot) per loop, exactly what a real reconnect costs.

``rate`` paces the frames at a constant number per second (latency at a known
offered load) instead of as fast as the client reads.
"""

from __future__ import annotations

import asyncio

from ...capture.reader import Capture
from ...capture.replay import CaptureReplayBackend
from ...local.server import WsSession

CLOSE_NORMAL = 1000


class LoopedCaptureBackend(CaptureReplayBackend):
    """:class:`CaptureReplayBackend` that closes each connection after the
    whole session was sent, ``loops`` times; the client's reconnect starts the next loop."""

    def __init__(self, capture: Capture, *, loops: int, protocol: str | None = None,
                 rate: float | None = None) -> None:
        if loops < 1:
            raise ValueError(f"loops must be at least 1, got {loops}")
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be a positive number of frames per second, got {rate!r}")
        super().__init__(capture, speed=None, protocol=protocol)
        if rate is not None:
            # Paced at a constant offered load (not the recorded gaps): frame i is due at i / rate.
            self._offsets = [i / rate for i in range(self.frame_count)]
        self.loops = loops
        self.loops_done = 0
        #: Set once every loop has been delivered to the client.
        self.all_sent = asyncio.Event()

    @property
    def total_frames(self) -> int:
        """Frames a client receives over all loops."""
        return self.loops * self.frame_count

    async def _stream(self, session: WsSession) -> None:
        if self.loops_done >= self.loops:
            return  # a reconnect after the last loop gets nothing more: the run is over
        await super()._stream(session)
        self.loops_done += 1
        if self.loops_done < self.loops:
            await session.close(CLOSE_NORMAL)
        else:
            self.all_sent.set()
