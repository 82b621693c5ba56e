"""Spinning an rclpy node on a daemon thread: how the demo, replay and tests listen to topics
while their main thread does other work."""
from __future__ import annotations

import threading
from typing import Any, Tuple


def spin_in_background(node: Any, context: Any) -> Tuple[Any, threading.Thread]:
    """Starts a SingleThreadedExecutor for `node` on a daemon thread; returns (executor, thread).
    Shut down with `executor.shutdown()` and `thread.join()`."""
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def spin() -> None:
        try:
            executor.spin()
        except Exception:  # the context was shut down under it: nothing left to do
            pass

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    return executor, thread
