"""ModelClock: stamps to model time, long pauses shortened, monotonic, restorable."""

from __future__ import annotations

import numpy as np
import pytest

from surg3d_nodes.recon.model_clock import ModelClock

S = 10**9


def test_clock_shortens_long_gaps_and_stays_monotonic():
    c = ModelClock(max_gap_s=2.0)
    assert c.time_of(5 * S) == 0.0                     # nothing seen yet
    for s in (10, 11, 12):
        assert not c.advance(s * S)
    assert c.advance(112 * S)                          # 100 s pause -> 2 s of model time
    assert not c.advance(113 * S)
    assert c.advance(213 * S)                          # another one
    assert c.time_of(11 * S) == pytest.approx(1.0)
    assert c.time_of(112 * S) == pytest.approx(4.0)
    assert c.time_of(113 * S) == pytest.approx(5.0)
    assert c.time_of(213 * S) == pytest.approx(7.0)
    assert c.time_of(13 * S) == pytest.approx(3.0)     # inside a gap: runs for max_gap_s ...
    assert c.time_of(50 * S) == pytest.approx(4.0)     # ... then holds
    stamps = np.linspace(0, 250, 2001) * S
    times = [c.time_of(int(s)) for s in stamps]
    assert np.all(np.diff(times) >= -1e-12)
    with pytest.raises(ValueError, match="older than the newest"):
        c.advance(200 * S)

    r = ModelClock(max_gap_s=9.0)
    r.load_state_dict(c.state_dict())
    assert [r.time_of(int(s)) for s in stamps] == times
    with pytest.raises(ValueError, match="positive"):
        ModelClock(max_gap_s=0.0)
