"""Header stamps as integer nanoseconds: the key that joins a frame to its outputs, from a message
or straight from its serialized CDR bytes (without deserializing the rest of the message)."""

from __future__ import annotations

import struct
from typing import Any, Optional

STAMP_OFFSET = 4  # after the 4-byte CDR encapsulation header come Header.stamp.sec and .nanosec


def stamp_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time (rclpy's or rosbags') in nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def cdr_stamp_format(raw: bytes) -> str:
    """struct format of Header.stamp in CDR bytes: the encapsulation's second byte says CDR_LE or
    CDR_BE."""
    return "<iI" if raw[1] & 1 else ">iI"


def raw_stamp(raw: bytes) -> Optional[int]:
    """Header stamp (ns) of a serialized message whose first field is a std_msgs/Header (plain
    CDR); None for bytes that are not."""
    if len(raw) < STAMP_OFFSET + 8 or raw[0] != 0:
        return None
    sec, nanosec = struct.unpack_from(cdr_stamp_format(raw), raw, STAMP_OFFSET)
    return int(sec) * 1_000_000_000 + int(nanosec)


__all__ = ["STAMP_OFFSET", "stamp_ns", "cdr_stamp_format", "raw_stamp"]
