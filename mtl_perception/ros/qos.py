"""The image subscription's QoS: matched to the camera's publishers (`image_qos: auto`), and an
incompatible-QoS event reported instead of a silent subscription that receives nothing.

Camera drivers mostly publish best effort (sensor-data QoS); a reliable subscription does not
match such a publisher at all, while a best-effort subscription matches both kinds. So `auto`
subscribes best effort as soon as one publisher on the topic is best effort, and reliable
otherwise (reliable loses no large frames between processes, see the QoS note in the README).
History is always KEEP_LAST 1 (the node only processes the newest frame) and durability
volatile (an old frame is worth nothing). The decision is re-made whenever the publishers change
(`publishers_signature`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, Tuple

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy

from mtl_perception.ros.parameters import IMAGE_QOS_MODES

try:  # Iron and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

__all__ = ["IMAGE_QOS_MODES", "ImageQoS", "decide_image_qos", "publishers_signature",
           "incompatible_qos_callbacks", "describe_incompatible_qos"]

@dataclass(frozen=True)
class ImageQoS:
    """The chosen reliability of the image subscription and why (one line for diagnostics)."""

    reliability: ReliabilityPolicy
    description: str

    @property
    def best_effort(self) -> bool:
        return self.reliability == ReliabilityPolicy.BEST_EFFORT

    def profile(self) -> QoSProfile:
        """KEEP_LAST 1, volatile, with the chosen reliability."""
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=self.reliability,
                          durability=DurabilityPolicy.VOLATILE)


def _is_best_effort(endpoint: Any) -> bool:
    return endpoint.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT


def decide_image_qos(mode: str, publishers: Sequence[Any]) -> ImageQoS:
    """The subscription QoS for `mode` ('auto', 'reliable' or 'best_effort') given the publishers'
    TopicEndpointInfo on the image topic (`node.get_publishers_info_by_topic(topic)`)."""
    if mode not in IMAGE_QOS_MODES:
        raise ValueError(f"image_qos must be one of {', '.join(IMAGE_QOS_MODES)}, got {mode!r}")
    if mode == "reliable":
        return ImageQoS(ReliabilityPolicy.RELIABLE, "reliable (set by image_qos)")
    if mode == "best_effort":
        return ImageQoS(ReliabilityPolicy.BEST_EFFORT, "best effort (set by image_qos)")
    n_best = sum(1 for p in publishers if _is_best_effort(p))
    n_reliable = len(publishers) - n_best
    if not publishers:
        return ImageQoS(ReliabilityPolicy.RELIABLE, "auto: reliable (no publisher yet; re-decided when one appears)")
    counts = f"{n_reliable} reliable, {n_best} best-effort publisher(s)"
    if n_best:
        return ImageQoS(ReliabilityPolicy.BEST_EFFORT, f"auto: best effort ({counts})")
    return ImageQoS(ReliabilityPolicy.RELIABLE, f"auto: reliable ({counts})")


def publishers_signature(publishers: Sequence[Any]) -> Tuple[Tuple[str, bool], ...]:
    """What the auto decision depends on, comparable between two polls: each publisher's GID
    and whether it is best effort."""
    return tuple(sorted((bytes(p.endpoint_gid).hex(), _is_best_effort(p)) for p in publishers))


def _policy_name(kind: Any) -> str:
    try:
        return QoSPolicyKind(int(kind)).name
    except (ValueError, TypeError):
        return str(kind)


def describe_incompatible_qos(topic: str, requested: str, info: Any) -> str:
    """One line about a requested-incompatible-QoS event (`QoSRequestedIncompatibleQoSInfo`)."""
    return (f"incompatible QoS on {topic}: a publisher does not offer what this subscription requests "
            f"({requested}; policy {_policy_name(info.last_policy_kind)}, {info.total_count} time(s)); "
            "frames from it are not received (set image_qos to auto or best_effort)")


def incompatible_qos_callbacks(topic: str, requested: str, report: Callable[[str], None]) -> Any:
    """SubscriptionEventCallbacks whose incompatible-QoS handler calls `report` with one line
    (the node logs it as a warning and counts it in its diagnostics)."""
    return SubscriptionEventCallbacks(
        incompatible_qos=lambda info: report(describe_incompatible_qos(topic, requested, info)))
