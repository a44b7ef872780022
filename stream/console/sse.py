"""The live feed: Server-Sent Events carrying every score and event the service produces.

The service calls :meth:`Broadcaster.publish` from its head worker thread; that call never blocks: each
connected client has a bounded queue, and when a client reads too slowly its oldest message is dropped
and counted (``dsanet_dropped_total{stage="console_feed"}``, plus a ``dropped`` field the client sees on its
next message), so one stalled browser tab never slows scoring or another client.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

KEEPALIVE_SECONDS = 15.0


class Subscription:
    """One client's bounded queue, woken on its event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.queue: deque[tuple[str, str]] = deque()
        self.size = size
        self.dropped = 0
        self.wake = asyncio.Event()
        self.closed = False


class Broadcaster:
    def __init__(self, queue_size: int = 512, on_drop: Callable[[int], None] | None = None) -> None:
        self.queue_size = queue_size
        self.on_drop = on_drop
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self.closed = False
        self.dropped = 0

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, kind: str, data: Any) -> None:
        """Queue one message for every client; never blocks (thread-safe)."""
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
        dropped = 0
        with self._lock:
            subs = list(self._subs)
            for s in subs:
                if len(s.queue) >= s.size:
                    s.queue.popleft()
                    s.dropped += 1
                    dropped += 1
                s.queue.append((kind, text))
        for s in subs:
            try:
                s.loop.call_soon_threadsafe(s.wake.set)
            except RuntimeError:  # that client's loop is gone: forget it
                self._remove(s)
        if dropped:
            self.dropped += dropped
            if self.on_drop is not None:
                self.on_drop(dropped)

    def subscribe(self) -> Subscription:
        s = Subscription(asyncio.get_running_loop(), self.queue_size)
        with self._lock:
            self._subs.append(s)
        return s

    def _remove(self, s: Subscription) -> None:
        with self._lock:
            if s in self._subs:
                self._subs.remove(s)

    def close(self) -> None:
        """End every stream (server shutdown)."""
        self.closed = True
        with self._lock:
            subs = list(self._subs)
        for s in subs:
            s.closed = True
            try:
                s.loop.call_soon_threadsafe(s.wake.set)
            except RuntimeError:
                pass

    async def stream(self, first: list[tuple[str, Any]] | None = None) -> AsyncIterator[bytes]:
        """The SSE byte stream of one client: ``first`` messages, then live ones, keep-alive comments."""
        sub = self.subscribe()
        try:
            yield b"retry: 2000\n\n"
            for kind, data in first or []:
                yield _frame(kind, json.dumps(data, separators=(",", ":"), default=str))
            while not (self.closed or sub.closed):
                try:
                    await asyncio.wait_for(sub.wake.wait(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                sub.wake.clear()
                while True:
                    with self._lock:
                        if not sub.queue:
                            break
                        kind, text = sub.queue.popleft()
                        lost, sub.dropped = sub.dropped, 0
                    if lost:
                        yield _frame("dropped", json.dumps({"dropped": lost}))
                    yield _frame(kind, text)
        finally:
            self._remove(sub)


def _frame(kind: str, text: str) -> bytes:
    return f"event: {kind}\ndata: {text}\n\n".encode()
