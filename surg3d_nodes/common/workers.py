"""Bounded drop-oldest queues, the worker thread that drains one, and a lock whose looping holder serves others.

A live pipeline must never block the producer (a ROS callback, a camera): when the consumer falls behind,
the OLDEST queued item is dropped and counted, so the consumer always works on recent data.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


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


class _Call:
    """One piece of work a thread left for the lock's holder, with its outcome."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # handed to the caller, re-raised there
            self.error = e
        self.done.set()

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class ServingLock:
    """A re-entrant lock for a worker that holds it in a loop (`with lock: step()`) and other threads that need it
    now and then (`lock.call(fn)`). A call that finds the lock free runs at once; one that finds it held is left
    for the holder, which runs every call left when its hold ends, still holding the lock. A caller so waits at
    most one hold, and the worker never waits for callers.

    Why: Python's locks are not fair. The training thread took the model lock again at once after each step, and a
    publishing callback waited through steps for up to seconds (with both executor threads waiting there, the
    node's input callbacks had no thread and frames were dropped). A worker that instead waited between holds
    until no other thread waited lost most of its time to the callers' thread switches (a browser's renders at
    5 Hz left it 20 of 160 frames)."""

    def __init__(self, poll_s: float = 0.05) -> None:
        self._lock = threading.RLock()
        self._pending: list[_Call] = []
        self._pending_lock = threading.Lock()
        self._poll_s = poll_s

    def __enter__(self) -> ServingLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.serve()
        finally:
            self._lock.release()

    def serve(self) -> int:
        """Run the calls left so far (the holder, holding the lock); returns how many."""
        with self._pending_lock:
            calls, self._pending = self._pending, []
        for c in calls:
            c.run()
        return len(calls)

    def call(self, fn: Callable[[], R]) -> R:
        """`fn()` under the lock, run here when the lock is free, else by its holder at the end of its hold;
        its exception is raised here."""
        if self._lock.acquire(blocking=False):
            try:
                return fn()
            finally:
                self._lock.release()
        c = _Call(fn)
        with self._pending_lock:
            self._pending.append(c)
        while not c.done.wait(self._poll_s):
            # The holder may have let go without serving (it left between our try and the append): take over.
            if not self._lock.acquire(blocking=False):
                continue
            try:
                with self._pending_lock:
                    mine = c in self._pending
                    if mine:
                        self._pending.remove(c)
                if mine:
                    c.run()
            finally:
                self._lock.release()
        return c.outcome()


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
