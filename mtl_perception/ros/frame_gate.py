"""Take a camera frame from the subscription only when the worker can use it.

A camera faster than the model sends frames the node never processes. rclpy copies a frame out
of the middleware when the executor takes it (1.7 ms at 1920x1080 on a 2-core machine), so
taking every frame only to replace it in the newest-wins slot spends the CPU the model needs.
`FrameGate` is the image subscription's callback group: closed from the moment a frame is
handed to the worker until the worker is free again, so the executor leaves the subscription out
of its wait set and the subscription's KEEP_LAST 1 history keeps only the newest frame, replaced
unread. The worker reopens the gate and wakes the executor when it is ready for the next frame.

Frames replaced unread never reach the node, so they are counted from the gaps in each
publisher's sequence numbers (rclpy's MessageInfo, `publication_sequence`, counted by
`SequenceGaps`). Publishers are told apart by their GID, which rclpy's MessageInfo carries from
Kilted on; Jazzy's has the numbers but no GID, which is enough while the topic has one publisher
(a camera driver), so the gate is used then too. Where there are no usable numbers (an rclpy
whose callbacks get no MessageInfo, as on Humble, an rmw without publication sequence numbers,
or several publishers without GIDs) the gate is never closed and every frame is taken, as
before; the drop count then misses the frames the middleware replaced before the executor took
them (`frame_intake: every frame` in the diagnostics says so).
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Optional, Tuple

from rclpy.callback_groups import CallbackGroup
from rclpy.subscription import Subscription

__all__ = ["MESSAGE_INFO_CALLBACKS", "FrameGate", "publication_sequence", "with_message_info"]

#: Whether this rclpy passes MessageInfo to a two-argument subscription callback (Iron and later).
MESSAGE_INFO_CALLBACKS = hasattr(Subscription, "CallbackType")

_UNSUPPORTED = 2 ** 63  # rmw's "sequence number unsupported" is UINT64_MAX


class FrameGate(CallbackGroup):
    """A callback group the executor may take from only while it is open (one subscription)."""

    def __init__(self) -> None:
        super().__init__()
        self._open = True

    def can_execute(self, entity: Any) -> bool:
        return self._open

    def beginning_execution(self, entity: Any) -> bool:
        return self._open

    def ending_execution(self, entity: Any) -> None:
        pass

    def close(self) -> None:
        """The executor stops taking frames (the worker has one)."""
        self._open = False

    def reopen(self) -> bool:
        """Lets the executor take the next frame; True when the gate was closed (wake it then)."""
        was_closed, self._open = not self._open, True
        return was_closed


def publication_sequence(info: Optional[dict], sole_publisher: Optional[str] = None) -> Optional[Tuple[Hashable, int]]:
    """(publisher key, its sequence number) of a message, from rclpy's MessageInfo. The key is the
    publisher's GID where rclpy gives one (Kilted and later); without it (Jazzy) the numbers are
    still usable while the topic has a single publisher, whose key (from the graph) is then
    `sole_publisher`. None when there is no info, the rmw does not number its messages, or
    publishers without GIDs could not be told apart."""
    if not info:
        return None
    sequence, gid = info.get("publication_sequence_number"), info.get("publisher_gid")
    if sequence is None or not 0 < int(sequence) < _UNSUPPORTED:
        return None
    if gid and gid.get("data"):
        return bytes(gid["data"]), int(sequence)
    return None if sole_publisher is None else (sole_publisher, int(sequence))


def with_message_info(callback: Callable[[Any, Optional[dict]], None]) -> Callable[..., None]:
    """`callback(msg, info)` as a subscription callback: as it is where rclpy passes MessageInfo,
    else called with info None."""
    if MESSAGE_INFO_CALLBACKS:
        return callback
    return lambda msg: callback(msg, None)
