"""mtl_perception.ros.throttle.ProblemThrottle with a fake clock: one line per problem kind per
period, carrying the number suppressed, whatever the message texts."""
from __future__ import annotations

import numpy as np
import pytest

from mtl_perception.ros.throttle import ProblemThrottle


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_one_line_per_kind_per_period_with_the_suppressed_count():
    clock = FakeClock()
    throttle = ProblemThrottle(5.0, clock)
    assert throttle.report("size", "step 3 too small") == "step 3 too small"
    clock.t += 1.0
    assert throttle.report("size", "data has 7 bytes") is None  # other text, same kind
    assert throttle.report("encoding", "unsupported 'yuv'") == "unsupported 'yuv'"  # another kind: logged
    clock.t += 1.0
    assert throttle.report("size", "data has 9 bytes") is None
    clock.t += 3.0  # 5 s after the first 'size' line
    line = throttle.report("size", "data has 11 bytes")
    assert line == "data has 11 bytes (2 more 'size' problem(s) suppressed in the last 5.0 s)"
    clock.t += 10.0
    assert throttle.report("size", "again") == "again"  # nothing suppressed since the last line
    assert throttle.counts() == {"size": 5, "encoding": 1}


def test_two_thousand_random_malformed_frames_in_20_s_give_a_handful_of_lines():
    """The issue's case: 2,000 random bad frames in 20 s (about 520 lines when throttled by text)."""
    rng = np.random.default_rng(0)
    clock = FakeClock()
    throttle = ProblemThrottle(5.0, clock)
    kinds = ("encoding", "size", "decode", "stale")
    lines, distinct_texts, events = [], set(), []
    for t in np.sort(rng.uniform(0.0, 20.0, 2000)):
        clock.t = 100.0 + float(t)
        kind = kinds[rng.integers(len(kinds))]
        text = f"{kind} problem with {rng.integers(1, 10_000)} bytes"
        distinct_texts.add(text)
        events.append((clock.t, kind))
        line = throttle.report(kind, text)
        if line is not None:
            lines.append(line)
    assert len(distinct_texts) > 1500
    assert sum(throttle.counts().values()) == 2000
    # Brute-force reference: per kind, a line at each event >= 5 s after that kind's last line,
    # carrying the number of that kind's events in between.
    expected, last = [], {}
    for t, kind in events:
        if kind not in last or t - last[kind][0] >= 5.0:
            expected.append(last[kind][1] if kind in last else 0)
            last[kind] = (t, 0)
        else:
            last[kind] = (last[kind][0], last[kind][1] + 1)
    got = [int(line.split("(")[1].split()[0]) if "suppressed" in line else 0 for line in lines]
    assert got == expected
    assert len(kinds) <= len(lines) <= len(kinds) * 5  # 4 kinds x (20 s / 5 s + 1): not ~520


def test_period_must_be_positive():
    with pytest.raises(ValueError, match="period_s"):
        ProblemThrottle(0.0)
