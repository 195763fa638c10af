"""The drop-oldest queue and its worker thread that the nodes and the trainer share."""

from __future__ import annotations

import threading
import time

from surg3d_nodes.common.workers import DropOldestQueue, QueueWorker


def test_full_queue_drops_the_oldest_and_never_blocks():
    q: DropOldestQueue[int] = DropOldestQueue(2)
    t0 = time.monotonic()
    assert [q.put(i) for i in range(5)] == [True, True, False, False, False]
    assert time.monotonic() - t0 < 0.1
    assert q.dropped == 3 and len(q) == 2
    assert q.get_nowait() == 3 and q.get(timeout=0.01) == 4 and q.get(timeout=0.01) is None
    q.put(7)
    assert q.clear() == 1 and len(q) == 0 and q.dropped == 3


def test_worker_handles_in_order_survives_errors_and_stops():
    done: list[int] = []
    errors: list[tuple[int, str]] = []
    gate = threading.Event()

    def handle(i: int) -> None:
        gate.wait(5)
        if i == 2:
            raise ValueError("bad item")
        done.append(i)

    w: QueueWorker[int] = QueueWorker("test", handle, 3, on_error=lambda i, e: errors.append((i, str(e))))
    w.start()
    for i in range(6):       # the thread holds item 0 at the gate; 1..5 queue, 1 and 2 are dropped
        w.submit(i)
        time.sleep(0.02)
    assert w.queue.dropped == 2 and w.pending == 3
    gate.set()
    end = time.monotonic() + 5
    while len(done) < 4 and time.monotonic() < end:
        time.sleep(0.01)
    assert done == [0, 3, 4, 5] and errors == []
    w.submit(2)
    end = time.monotonic() + 5
    while not errors and time.monotonic() < end:
        time.sleep(0.01)
    assert errors == [(2, "bad item")]
    w.submit(9)
    end = time.monotonic() + 5
    while 9 not in done and time.monotonic() < end:
        time.sleep(0.01)
    assert done[-1] == 9, "the worker goes on after an error"
    w.stop()
    assert w.pending == 0
