"""The newest-wins single-slot handoff between the image callback and the worker (no ROS)."""
from __future__ import annotations

import threading
import time

from mtl_perception.inference.latest_frame import FrameCounts, LatestFrame


def test_newest_item_wins_and_replaced_items_count_as_dropped():
    slot = LatestFrame()
    assert slot.put(1) is False
    assert slot.put(2) is True  # 1 was never taken
    assert slot.put(3) is True
    assert slot.take(timeout=0) == 3
    assert slot.take(timeout=0) is None  # nothing pending: no stale item comes back
    assert slot.put(4) is False
    assert slot.take() == 4
    assert slot.counts() == FrameCounts(received=4, taken=2, dropped=2)
    assert slot.counts().drop_rate == 0.5


def test_take_times_out_and_close_wakes_a_waiting_worker():
    slot = LatestFrame()
    start = time.monotonic()
    assert slot.take(timeout=0.05) is None
    assert time.monotonic() - start >= 0.04
    result = []
    worker = threading.Thread(target=lambda: result.append(slot.take()))
    worker.start()
    time.sleep(0.05)
    slot.close()
    worker.join(timeout=5)
    assert not worker.is_alive() and result == [None]
    assert slot.put(1) is False and not slot.pending  # closed: ignored
    slot.reopen()
    slot.put(2)
    assert slot.take(timeout=0) == 2


def test_pending_item_survives_close_and_clear_counts_a_drop():
    slot = LatestFrame()
    slot.put("a")
    slot.close()
    assert slot.take() == "a"
    assert slot.take() is None
    slot.reopen()
    slot.put("b")
    assert slot.clear() is True and slot.clear() is False
    assert slot.counts().dropped == 1
    slot.reset_counts()
    assert slot.counts() == FrameCounts()
    assert FrameCounts().drop_rate == 0.0


def test_fast_producer_slow_consumer_never_queues_and_accounts_for_every_frame():
    """A camera much faster than the model: the worker only ever sees newer frames than the
    last it processed, the newest frame is never lost, and received = taken + dropped."""
    slot = LatestFrame()
    taken = []
    done = threading.Event()

    def consumer():
        while True:
            item = slot.take(timeout=1.0)
            if item is None:
                if done.is_set() and not slot.pending:
                    return
                continue
            taken.append(item)
            time.sleep(0.002)  # "inference"

    worker = threading.Thread(target=consumer)
    worker.start()
    n = 2000
    for i in range(n):
        slot.put(i)
        if i % 100 == 0:
            time.sleep(0.001)
    done.set()
    worker.join(timeout=30)
    assert not worker.is_alive()
    counts = slot.counts()
    assert counts.received == n
    assert counts.taken == len(taken)
    assert counts.taken + counts.dropped == n
    assert counts.dropped > 0  # the producer outran the consumer
    assert taken == sorted(set(taken))  # strictly increasing: never an older frame after a newer one
    assert taken[-1] == n - 1  # the newest frame is always processed


def test_sequence_gaps_count_each_publishers_missing_numbers():
    from mtl_perception.inference.latest_frame import SequenceGaps

    gaps = SequenceGaps()
    assert gaps.missed("cam", 5) == 0  # the first message heard sets the start
    assert gaps.missed("cam", 6) == 0
    assert gaps.missed("cam", 10) == 3  # 7, 8, 9 were replaced before anyone read them
    assert gaps.missed("other", 1) == 0  # another publisher: its own numbers
    assert gaps.missed("cam", 11) == 0
    assert gaps.missed("other", 4) == 2
    assert gaps.missed("cam", 2) == 0  # restarted (numbers went back): a new start, nothing counted
    assert gaps.missed("cam", 4) == 1


def test_sequence_gaps_forget_the_least_recently_heard_publisher():
    from mtl_perception.inference.latest_frame import SequenceGaps

    gaps = SequenceGaps()
    for key in range(SequenceGaps.MAX_PUBLISHERS):
        gaps.missed(key, 1)
    gaps.missed(0, 2)  # heard again: now the most recent
    gaps.missed("new", 1)  # one over the limit: key 1 is forgotten
    assert gaps.missed(0, 4) == 1
    assert gaps.missed(1, 9) == 0  # forgotten: starts again
