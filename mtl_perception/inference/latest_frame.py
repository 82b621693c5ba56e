"""A single-slot, newest-wins handoff between a producer (a subscription callback) and a worker.

The camera callback must never wait for the model and frames must never queue up behind it:
`put` stores the newest item, replacing one the worker has not taken yet (that one is counted
as dropped), and `take` hands the worker the newest item or waits for one. Latency therefore
stays bounded by about one inference however fast the camera is, and the drop count says how
much the model could not keep up with. `SequenceGaps` counts the frames that were replaced
before they even reached the slot (the node's subscription keeps only the newest one while the
worker is busy), from each publisher's sequence numbers. No ROS here, so both are tested on their
own.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Dict, Generic, Hashable, Optional, TypeVar

T = TypeVar("T")

__all__ = ["FrameCounts", "LatestFrame", "SequenceGaps"]


@dataclass(frozen=True)
class FrameCounts:
    """Totals since creation (or the last `reset_counts`)."""

    received: int = 0  # items put
    taken: int = 0  # items handed to the worker
    dropped: int = 0  # items replaced before the worker took them

    @property
    def drop_rate(self) -> float:
        """Dropped / received (0 when nothing was received)."""
        return self.dropped / self.received if self.received else 0.0


class LatestFrame(Generic[T]):
    """Thread-safe slot holding at most one pending item; the newest always wins."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._item: Optional[T] = None
        self._pending = False
        self._closed = False
        self._received = 0
        self._taken = 0
        self._dropped = 0

    def put(self, item: T) -> bool:
        """Stores `item` as the newest; True when it replaced an item nobody took (a drop).

        Never blocks beyond the short lock; after `close()` items are ignored (returns False).
        """
        with self._cond:
            if self._closed:
                return False
            replaced = self._pending
            self._item = item
            self._pending = True
            self._received += 1
            if replaced:
                self._dropped += 1
            self._cond.notify()
            return replaced

    def take(self, timeout: Optional[float] = None) -> Optional[T]:
        """The newest pending item, waiting up to `timeout` seconds (None: until one arrives or
        the slot is closed). Returns None on timeout or when closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._pending and not self._closed:
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._cond.wait(remaining)
            if not self._pending:
                return None  # closed and empty
            item, self._item, self._pending = self._item, None, False
            self._taken += 1
            return item

    def clear(self) -> bool:
        """Discards a pending item (counted as dropped); True if there was one."""
        with self._cond:
            if not self._pending:
                return False
            self._item, self._pending = None, False
            self._dropped += 1
            return True

    def close(self) -> None:
        """Wakes every waiting `take` (it returns None once the slot is empty); later `put`s are
        ignored. A pending item can still be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        """Accepts items again after `close()` (counts are kept)."""
        with self._cond:
            self._closed = False

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    @property
    def pending(self) -> bool:
        with self._cond:
            return self._pending

    def counts(self) -> FrameCounts:
        with self._cond:
            return FrameCounts(self._received, self._taken, self._dropped)

    def reset_counts(self) -> None:
        with self._cond:
            self._received = self._taken = self._dropped = 0


class SequenceGaps:
    """Messages each publisher sent that were not seen here, from the gaps in its sequence
    numbers (1, 2, 3 ... per publisher). Publishers are told apart by a key (their GID); a
    publisher's first message, and one whose number did not move forward (a restarted
    publisher), count nothing. Not thread-safe: one caller (the subscription callback)."""

    MAX_PUBLISHERS = 64  # the most recently heard keys kept; publishers come and go

    def __init__(self) -> None:
        self._last: Dict[Hashable, int] = {}  # insertion order = least recently heard first

    def missed(self, publisher: Hashable, sequence: int) -> int:
        """Messages of `publisher` between its previous `sequence` and this one."""
        last = self._last.pop(publisher, None)
        self._last[publisher] = sequence
        if len(self._last) > self.MAX_PUBLISHERS:
            del self._last[next(iter(self._last))]
        if last is None or sequence <= last:
            return 0
        return sequence - last - 1
