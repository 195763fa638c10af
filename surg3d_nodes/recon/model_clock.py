"""Model time of frame stamps: seconds since the first frame, with long pauses of the stream shortened.

The deformation tracks have one knot per `knot_spacing` of model time, so a stream that stops for an hour
(video unplugged, a bag replayed later with real-time stamps) must not make the model allocate an hour of
knots. A forward gap longer than `max_gap_s` counts as `max_gap_s` of model time; the mapping stays
monotonic, so every past stamp still has one model time.
"""

from __future__ import annotations

from bisect import bisect_right


class ModelClock:
    """Monotonic map stamp (ns) -> model time (s); see module docstring."""

    def __init__(self, max_gap_s: float = 2.0) -> None:
        if not max_gap_s > 0:
            raise ValueError(f"max_gap_s must be positive, got {max_gap_s}")
        self.max_gap_s = float(max_gap_s)
        self.first_ns: int | None = None
        self.newest_ns: int | None = None
        self._gap_starts: list[int] = []     # newest stamp before each shortened gap (sorted)
        self._gap_ends: list[int] = []       # first stamp after it
        self._removed_s: list[float] = []    # model seconds removed up to and including that gap

    def time_of(self, stamp_ns: int) -> float:
        """Model time of a stamp (0 before the first frame)."""
        if self.first_ns is None:
            return 0.0
        s = int(stamp_ns)
        raw = (s - self.first_ns) * 1e-9
        i = bisect_right(self._gap_ends, s)          # gaps that ended at or before s
        t = raw - (self._removed_s[i - 1] if i else 0.0)
        if i < len(self._gap_ends) and s > self._gap_starts[i]:
            # Inside a shortened gap: time runs for max_gap_s, then holds until the gap's end.
            t = min(t, (self._gap_ends[i] - self.first_ns) * 1e-9 - self._removed_s[i])
        return t

    def advance(self, stamp_ns: int) -> bool:
        """Take a new newest stamp (must not be older than the newest); True when a long gap was shortened."""
        s = int(stamp_ns)
        if self.first_ns is None:
            self.first_ns = self.newest_ns = s
            return False
        if s < self.newest_ns:
            raise ValueError(f"stamp {s} is older than the newest {self.newest_ns}")
        gap = (s - self.newest_ns) * 1e-9
        start, self.newest_ns = self.newest_ns, s
        if gap <= self.max_gap_s:
            return False
        total = (self._removed_s[-1] if self._removed_s else 0.0) + gap - self.max_gap_s
        self._gap_starts.append(start)
        self._gap_ends.append(s)
        self._removed_s.append(total)
        return True

    def state_dict(self) -> dict:
        """Everything needed to restore the mapping (checkpoints)."""
        return {"max_gap_s": self.max_gap_s, "first_ns": self.first_ns, "newest_ns": self.newest_ns,
                "gap_starts": list(self._gap_starts),
                "gap_ends": list(self._gap_ends), "removed_s": list(self._removed_s)}

    def load_state_dict(self, d: dict) -> None:
        """Restore from `state_dict`."""
        self.max_gap_s = float(d["max_gap_s"])
        self.first_ns, self.newest_ns = d["first_ns"], d["newest_ns"]
        self._gap_starts = [int(x) for x in d["gap_starts"]]
        self._gap_ends = [int(x) for x in d["gap_ends"]]
        self._removed_s = [float(x) for x in d["removed_s"]]
