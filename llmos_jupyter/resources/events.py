"""A thread-safe event bus: every state change emits one event dict.

Subscribers (widgets, ``%llm ps``, the side panel's comm) are called synchronously, from the
thread that emitted, with ``{"type": ..., "time": ..., **fields}``; a failing subscriber is
dropped from that call only, never breaking the emitter. The last 500 events are kept.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable


class EventBus:
    """Publish/subscribe for manager events (``load``, ``unload``, ``evict``, ``job``, ``error`` ...)."""

    def __init__(self, keep: int = 500):
        self._lock = threading.Lock()
        self._subs: list[Callable[[dict], None]] = []
        self.history: collections.deque = collections.deque(maxlen=keep)

    def subscribe(self, fn: Callable[[dict], None]) -> Callable[[], None]:
        """Call ``fn(event)`` on every event; returns a function that unsubscribes."""
        with self._lock:
            self._subs.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subs:
                    self._subs.remove(fn)

        return unsubscribe

    def emit(self, type: str, **fields) -> dict:
        """Record and deliver one event; returns it."""
        event = {"type": type, "time": time.time(), **fields}
        with self._lock:
            self.history.append(event)
            subs = list(self._subs)
        for fn in subs:
            try:
                fn(event)
            except Exception:  # a broken view must not break the manager
                pass
        return event
