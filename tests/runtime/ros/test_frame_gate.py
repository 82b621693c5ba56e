"""`ros.frame_gate`: while the gate is closed the executor takes nothing from the subscription,
the middleware keeps only the newest message, and its sequence number tells how many were
replaced unread. Real rclpy and Fast DDS, publisher and subscription in this process."""
from __future__ import annotations

import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (see scripts/setup_ros.sh)")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from mtl_perception.ros.frame_gate import (  # noqa: E402
    MESSAGE_INFO_CALLBACKS,
    FrameGate,
    publication_sequence,
    with_message_info,
)
from mtl_perception.ros.qos import publishers_signature  # noqa: E402


def test_publication_sequence_needs_a_number_and_a_publisher():
    gid = {"implementation_identifier": "rmw_fastrtps_cpp", "data": b"\x01" * 16}
    assert publication_sequence({"publication_sequence_number": 7, "publisher_gid": gid}) == (b"\x01" * 16, 7)
    assert publication_sequence({"publication_sequence_number": 7, "publisher_gid": gid}, "ab") == (b"\x01" * 16, 7)
    assert publication_sequence(None) is None  # an rclpy without MessageInfo in callbacks
    assert publication_sequence({"publication_sequence_number": None, "publisher_gid": gid}) is None
    assert publication_sequence({"publication_sequence_number": 2 ** 64 - 1, "publisher_gid": gid}) is None
    # Jazzy: numbers without a GID are one publisher's only while the topic has one
    assert publication_sequence({"publication_sequence_number": 7}) is None
    assert publication_sequence({"publication_sequence_number": 7}, sole_publisher="ab") == ("ab", 7)
    assert publication_sequence({"publication_sequence_number": None}, sole_publisher="ab") is None


def test_gate_opens_and_closes():
    gate = FrameGate()
    assert gate.can_execute(None) and not gate.reopen()
    gate.close()
    assert not gate.can_execute(None) and not gate.beginning_execution(None)
    assert gate.reopen() and gate.can_execute(None)


@pytest.mark.skipif(not MESSAGE_INFO_CALLBACKS, reason="this rclpy passes no MessageInfo to callbacks")
@pytest.mark.parametrize("info_has_gid", [True, False], ids=["with publisher GID", "without (Jazzy)"])
def test_a_closed_gate_leaves_messages_unread_and_their_numbers_count_them(info_has_gid):
    context = rclpy.Context()
    rclpy.init(context=context, args=[])
    node = rclpy.create_node("frame_gate_test", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        gate, got = FrameGate(), []

        def on_message(msg, info):
            sole = None
            if not info_has_gid:  # what Jazzy's rclpy gives, keyed by the one publisher in the graph
                info = {key: value for key, value in info.items() if key != "publisher_gid"}
                (sole, _), = publishers_signature(node.get_publishers_info_by_topic("gated"))
            got.append((msg.data, publication_sequence(info, sole)))

        node.create_subscription(String, "gated", with_message_info(on_message), qos, callback_group=gate)
        wake = node.create_guard_condition(lambda: None)
        pub = node.create_publisher(String, "gated", qos)
        deadline = time.monotonic() + 10
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        pub.publish(String(data="first"))
        while not got and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert [data for data, _ in got] == ["first"]
        gid, first = got[0][1]

        gate.close()
        for i in range(5):
            pub.publish(String(data=f"frame {i}"))
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        assert len(got) == 1  # closed: nothing taken

        assert gate.reopen()
        wake.trigger()
        while len(got) < 2 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert got[1][0] == "frame 4"  # only the newest waited in the KEEP_LAST 1 history
        assert got[1][1] == (gid, first + 5)  # so frames 0-3 are the gap in the numbers
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        context.try_shutdown()
