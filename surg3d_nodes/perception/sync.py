"""Approximate-time synchroniser for N message streams keyed by integer-nanosecond stamps.

A ROS-free replacement for message_filters.ApproximateTimeSynchronizer (not available as a wheel):
one bounded, stamp-sorted queue per input; a set is emitted as soon as one message per input lies
within `tolerance_ns` of all the others (max stamp - min stamp <= tolerance). Messages that can no
longer be part of a set (older than an emitted set, or arriving after it) are counted as unmatched;
messages pushed out of a full queue are counted as dropped. A stamp more than `jump_back_ns` older than
the newest emitted set (default 250 ms: several frames, far beyond any reordering in transport) is a time
jump (a replayed bag looping, a restarted clock): the queues and the emission history restart from it
instead of refusing every later message as late.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SyncStats:
    """Per-input counters of an `ApproxTimeSync`."""

    received: list[int] = field(default_factory=list)
    matched: list[int] = field(default_factory=list)
    unmatched: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    late: list[int] = field(default_factory=list)
    sets_emitted: int = 0
    time_jumps: int = 0


class ApproxTimeSync:
    """Pair messages of `num_inputs` streams whose stamps lie within `tolerance_ns` of each other.

    `add(i, stamp_ns, msg)` returns the matched tuple (one message per input, in input order) with
    its stamps, or None. Thread-safe. Out-of-order arrivals are inserted in stamp order; a message
    older than the newest emitted set of its input cannot be used any more and counts as `late`.
    """

    def __init__(self, num_inputs: int, tolerance_ns: int, queue_size: int = 10,
                 jump_back_ns: int = 250_000_000) -> None:
        if num_inputs < 2:
            raise ValueError(f"ApproxTimeSync needs at least 2 inputs, got {num_inputs}")
        if tolerance_ns < 0:
            raise ValueError(f"tolerance_ns must be >= 0, got {tolerance_ns}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.num_inputs = int(num_inputs)
        self.tolerance_ns = int(tolerance_ns)
        self.queue_size = int(queue_size)
        self.jump_back_ns = int(jump_back_ns)
        self._stamps: list[list[int]] = [[] for _ in range(num_inputs)]
        self._msgs: list[list[Any]] = [[] for _ in range(num_inputs)]
        self._last_emitted: list[int | None] = [None] * num_inputs
        n = num_inputs
        self.stats = SyncStats([0] * n, [0] * n, [0] * n, [0] * n, [0] * n)
        self._lock = threading.Lock()

    def queue_lengths(self) -> list[int]:
        """Current number of waiting messages per input."""
        with self._lock:
            return [len(s) for s in self._stamps]

    def add(self, index: int, stamp_ns: int, msg: Any) -> tuple[tuple[Any, ...], tuple[int, ...]] | None:
        """Queue `msg` of input `index`; return (messages, stamps) of a matched set or None."""
        if not 0 <= index < self.num_inputs:
            raise IndexError(f"input index {index} out of range 0..{self.num_inputs - 1}")
        stamp_ns = int(stamp_ns)
        with self._lock:
            st = self.stats
            st.received[index] += 1
            last = self._last_emitted[index]
            if last is not None and stamp_ns < last - self.jump_back_ns:
                st.time_jumps += 1
                self._clear()
                last = None
            if last is not None and stamp_ns <= last:
                st.late[index] += 1
                st.unmatched[index] += 1
                return None
            stamps, msgs = self._stamps[index], self._msgs[index]
            pos = bisect.bisect_right(stamps, stamp_ns)
            stamps.insert(pos, stamp_ns)
            msgs.insert(pos, msg)
            if len(stamps) > self.queue_size:
                stamps.pop(0)
                msgs.pop(0)
                st.dropped[index] += 1
                if pos == 0:  # the new message itself was the oldest: it is the one pushed out
                    return None
                pos -= 1
            return self._try_match(index, pos)

    def _try_match(self, index: int, pos: int) -> tuple[tuple[Any, ...], tuple[int, ...]] | None:
        """Match the new message (queue `index`, position `pos`) with the closest stamp of every
        other input (caller holds the lock)."""
        stamp_ns = self._stamps[index][pos]
        chosen = [0] * self.num_inputs
        for j in range(self.num_inputs):
            stamps = self._stamps[j]
            if not stamps:
                return None
            if j == index:
                chosen[j] = pos
                continue
            k = bisect.bisect_left(stamps, stamp_ns)
            cands = [c for c in (k - 1, k) if 0 <= c < len(stamps)]
            chosen[j] = min(cands, key=lambda c: abs(stamps[c] - stamp_ns))
        picked = [self._stamps[j][chosen[j]] for j in range(self.num_inputs)]
        if max(picked) - min(picked) > self.tolerance_ns:
            return None
        out_msgs = []
        for j, k in enumerate(chosen):
            out_msgs.append(self._msgs[j][k])
            # Older messages of this input can never be emitted once a newer set went out.
            self.stats.unmatched[j] += k
            self.stats.matched[j] += 1
            del self._stamps[j][: k + 1]
            del self._msgs[j][: k + 1]
            self._last_emitted[j] = picked[j]
        self.stats.sets_emitted += 1
        return tuple(out_msgs), tuple(picked)

    def reset(self) -> None:
        """Forget all queued messages and the emission history (counters are kept)."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        for j in range(self.num_inputs):
            self._stamps[j].clear()
            self._msgs[j].clear()
            self._last_emitted[j] = None
