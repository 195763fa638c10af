"""Tests of the approximate-time synchroniser (surg3d_nodes.perception.sync)."""

import random
import threading

import pytest

from surg3d_nodes.perception.sync import ApproxTimeSync

MS = 1_000_000


def test_pairs_within_tolerance_and_never_beyond():
    s = ApproxTimeSync(2, tolerance_ns=5 * MS)
    assert s.add(0, 100 * MS, "L0") is None
    out = s.add(1, 103 * MS, "R0")
    assert out == (("L0", "R0"), (100 * MS, 103 * MS))
    assert s.add(0, 200 * MS, "L1") is None
    assert s.add(1, 206 * MS, "R1") is None  # 6 ms apart > 5 ms
    assert s.stats.sets_emitted == 1
    assert s.queue_lengths() == [1, 1]


def test_out_of_order_arrival_and_late_messages():
    s = ApproxTimeSync(2, tolerance_ns=2 * MS)
    assert s.add(0, 30 * MS, "L30") is None
    assert s.add(0, 10 * MS, "L10") is None  # out of order, inserted before L30
    assert s.add(1, 11 * MS, "R11") == (("L10", "R11"), (10 * MS, 11 * MS))
    assert s.add(1, 31 * MS, "R31") == (("L30", "R31"), (30 * MS, 31 * MS))
    # A left frame older than the emitted one can no longer be paired.
    assert s.add(0, 20 * MS, "L20") is None
    assert s.stats.late == [1, 0]
    assert s.stats.unmatched == [1, 0]


def test_time_jump_back_restarts_pairing():
    """A looping bag sends its first stamps again: pairing resumes instead of refusing them all as late."""
    s = ApproxTimeSync(2, tolerance_ns=2 * MS, jump_back_ns=1000 * MS)
    for t in (0, 33, 66):
        s.add(0, (5000 + t) * MS, "L")
        assert s.add(1, (5000 + t) * MS, "R") is not None
    assert s.add(0, 4500 * MS, "late") is None  # 566 ms back: an ordinary late frame
    assert s.stats.late == [1, 0] and s.stats.time_jumps == 0
    assert s.add(0, 0, "L0") is None  # 5 s back: the bag looped
    assert s.add(1, 1 * MS, "R0") == (("L0", "R0"), (0, 1 * MS))
    assert s.stats.time_jumps == 1 and s.stats.late == [1, 0]


def test_three_inputs_and_skipped_frames_counted():
    s = ApproxTimeSync(3, tolerance_ns=3 * MS)
    s.add(0, 0, "a0")
    s.add(1, 1 * MS, "b0")
    s.add(0, 10 * MS, "a1")
    s.add(1, 11 * MS, "b1")
    out = s.add(2, 12 * MS, "c1")
    assert out is not None and out[0] == ("a1", "b1", "c1")
    assert s.stats.unmatched == [1, 1, 0]  # a0 and b0 overtaken by the newer set
    assert s.stats.matched == [1, 1, 1]


def test_bounded_queue_counts_drops():
    s = ApproxTimeSync(2, tolerance_ns=1, queue_size=4)
    for i in range(20):
        assert s.add(0, i * MS, i) is None
    assert s.queue_lengths() == [4, 0]
    assert s.stats.dropped == [16, 0]
    # The newest four are still available.
    assert s.add(1, 19 * MS, "r") == ((19, "r"), (19 * MS, 19 * MS))


def test_randomised_streams_respect_tolerance():
    rng = random.Random(0)
    tol = 4 * MS
    s = ApproxTimeSync(2, tolerance_ns=tol, queue_size=8)
    events = []
    for k in range(300):
        base = k * 33 * MS
        events.append((0, base + rng.randint(-3, 3) * MS))
        if rng.random() > 0.1:  # right camera drops 10 % of frames
            events.append((1, base + rng.randint(-3, 3) * MS))
    # Local shuffling: messages arrive slightly out of order.
    for i in range(0, len(events) - 1, 3):
        if rng.random() < 0.3:
            events[i], events[i + 1] = events[i + 1], events[i]
    sets = []
    for idx, st in events:
        out = s.add(idx, st, st)
        if out is not None:
            sets.append(out[1])
    assert len(sets) > 200
    assert all(abs(a - b) <= tol for a, b in sets)
    assert all(sets[i][0] < sets[i + 1][0] for i in range(len(sets) - 1))
    st = s.stats
    for j in range(2):
        assert st.received[j] == st.matched[j] + st.unmatched[j] + st.dropped[j] + s.queue_lengths()[j]


def test_thread_safety():
    s = ApproxTimeSync(2, tolerance_ns=0, queue_size=1000)
    got = []

    def feed(idx):
        for i in range(500):
            out = s.add(idx, i, (idx, i))
            if out is not None:
                got.append(out)

    threads = [threading.Thread(target=feed, args=(j,)) for j in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a[1] == b[1] for (a, b), _ in got)
    assert len(got) == s.stats.sets_emitted > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 2"):
        ApproxTimeSync(1, 10)
    with pytest.raises(ValueError, match="tolerance_ns"):
        ApproxTimeSync(2, -1)
    s = ApproxTimeSync(2, 10)
    with pytest.raises(IndexError):
        s.add(2, 0, None)
