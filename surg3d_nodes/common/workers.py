"""Bounded drop-oldest queues and the worker thread that drains one.

A live pipeline must never block the producer (a ROS callback, a camera): when the consumer falls behind,
the OLDEST queued item is dropped and counted, so the consumer always works on recent data.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """Thread-safe FIFO of at most `maxsize` items; `put` never blocks (a full queue drops its oldest item)."""

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"queue size must be at least 1, got {maxsize}")
        self.maxsize = int(maxsize)
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Append `item`; False when the oldest item had to be dropped for it (counted in `dropped`)."""
        with self._cond:
            full = len(self._items) >= self.maxsize
            if full:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()
        return not full

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, waiting up to `timeout` s for one (None: no wait limit); None when none came."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def get_nowait(self) -> T | None:
        """The oldest item, or None when the queue is empty."""
        with self._cond:
            return self._items.popleft() if self._items else None

    def clear(self) -> int:
        """Drop every queued item (not counted as dropped); returns how many there were."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            return n

    def wake(self) -> None:
        """Wake a consumer waiting in `get` (it then returns None if nothing is queued)."""
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class QueueWorker(Generic[T]):
    """A daemon thread that calls `handle(item)` for each item submitted, oldest first, through a
    DropOldestQueue. An exception in `handle` goes to `on_error(item, exc)` and the thread goes on."""

    def __init__(self, name: str, handle: Callable[[T], None], maxsize: int,
                 on_error: Callable[[T, BaseException], None] | None = None):
        self.name = name
        self.queue: DropOldestQueue[T] = DropOldestQueue(maxsize)
        self._handle = handle
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> QueueWorker[T]:
        """Start the thread (idempotent); returns self."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        return self

    def submit(self, item: T) -> bool:
        """Queue `item` without blocking; False when an older item was dropped for it."""
        return self.queue.put(item)

    @property
    def pending(self) -> int:
        """Items queued, not yet handled."""
        return len(self.queue)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join the thread; queued items are discarded."""
        self._stop.set()
        self.queue.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.queue.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            item = self.queue.get(timeout=0.1)
            if item is None:
                continue
            try:
                self._handle(item)
            except Exception as e:  # one bad item must not end the worker
                if self._on_error is None:
                    raise
                self._on_error(item, e)
