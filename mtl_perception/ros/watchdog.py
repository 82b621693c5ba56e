"""The "no frames" decision: how long the image input has been silent, counted from when a
publisher appeared on the topic (or from the last frame, whichever is later), never from the
node's activation, so a camera that starts late does not raise a warning at start-up.

Pure Python, fed with the publisher count the node polls and monotonic times.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["InputState", "InputWatch", "input_state"]


@dataclass(frozen=True)
class InputState:
    """'waiting' (no publisher), 'ok' (frames arrive) or 'silent' (publishers but no frame for
    `silent_for` >= timeout seconds)."""

    status: str
    silent_for: float
    publishers: int


def input_state(publishers: int, now: float, publisher_since: Optional[float], last_frame: Optional[float],
                timeout: float) -> InputState:
    """The input's state at `now`: silence is measured from the later of `publisher_since` (when
    the current publishers appeared) and `last_frame`."""
    if publishers <= 0 or publisher_since is None:
        return InputState("waiting", 0.0, max(publishers, 0))
    start = publisher_since if last_frame is None else max(publisher_since, last_frame)
    silent_for = max(0.0, now - start)
    return InputState("silent" if silent_for >= timeout else "ok", silent_for, publishers)


class InputWatch:
    """Remembers since when the image topic has had a publisher and when the last frame came;
    `poll(publishers, now)` gives the InputState. Not thread-safe by itself: the node calls
    `frame` under its stats lock and `poll` from its diagnostics timer."""

    def __init__(self, timeout: float) -> None:
        self.timeout = float(timeout)
        self.publisher_since: Optional[float] = None
        self.last_frame: Optional[float] = None

    def frame(self, now: float) -> None:
        self.last_frame = now

    def poll(self, publishers: int, now: float) -> InputState:
        if publishers <= 0:
            self.publisher_since = None
        elif self.publisher_since is None:
            self.publisher_since = now
        return input_state(publishers, now, self.publisher_since, self.last_frame, self.timeout)
