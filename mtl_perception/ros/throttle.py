"""Warnings about bad input throttled per kind of problem, not per message text.

A camera sending malformed frames produces a different text for nearly every frame (sizes,
byte counts), so throttling by text lets hundreds of lines through; the node reports one line
per problem kind ("encoding", "size", "decode", "failed", ...) per period instead, carrying how
many problems of that kind were suppressed since the previous line. Pure Python (a clock can be
injected), thread-safe: the subscription callback and the worker both report.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Optional, Tuple

__all__ = ["ProblemThrottle"]


class ProblemThrottle:
    """At most one log line per problem kind per `period_s`.

    `report(kind, text)` returns the line to log now (`text`, plus the number of problems of that
    kind suppressed since the last line, if any) or None while the kind is throttled. `counts()`
    gives the total per kind, logged or not, for diagnostics.
    """

    def __init__(self, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be positive, got {period_s!r}")
        self.period_s = float(period_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: Dict[str, Tuple[float, int]] = {}  # kind -> (time of the last line, suppressed since)
        self._totals: Dict[str, int] = {}

    def report(self, kind: str, text: str) -> Optional[str]:
        """Counts one problem of `kind`; the line to log, or None if throttled."""
        now = self._clock()
        with self._lock:
            self._totals[kind] = self._totals.get(kind, 0) + 1
            last = self._last.get(kind)
            if last is not None and now - last[0] < self.period_s:
                self._last[kind] = (last[0], last[1] + 1)
                return None
            suppressed = last[1] if last is not None else 0
            self._last[kind] = (now, 0)
        if suppressed:
            since = now - last[0]
            return f"{text} ({suppressed} more '{kind}' problem(s) suppressed in the last {since:.1f} s)"
        return text

    def counts(self) -> Dict[str, int]:
        """Problems reported per kind since construction (logged or suppressed)."""
        with self._lock:
            return dict(self._totals)
