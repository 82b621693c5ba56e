"""mtl_perception.ros.qos against real rclpy endpoints in separate processes: the `auto`
decision for reliable, best-effort and mixed publishers, and the incompatible-QoS report of a
reliable subscription to a best-effort publisher."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed (see scripts/setup_ros.sh)")

PUBLISHERS = """
import time
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

rclpy.init()
node = rclpy.create_node("qos_publishers")
rel = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
best = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
pubs = [node.create_publisher(String, "qos_r", rel), node.create_publisher(String, "qos_b", best),
        node.create_publisher(String, "qos_m", rel), node.create_publisher(String, "qos_m", best)]
print("READY", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    for pub in pubs:
        pub.publish(String(data="x"))
    rclpy.spin_once(node, timeout_sec=0.05)
"""

CHECKER = """
import json, time
import rclpy
from std_msgs.msg import String
from mtl_perception.ros.qos import decide_image_qos, incompatible_qos_callbacks, publishers_signature

rclpy.init()
node = rclpy.create_node("qos_checker")
want = {"qos_r": 1, "qos_b": 1, "qos_m": 2}
deadline = time.monotonic() + 30
while time.monotonic() < deadline and any(node.count_publishers(t) < n for t, n in want.items()):
    rclpy.spin_once(node, timeout_sec=0.1)
out = {}
for topic in want:
    info = node.get_publishers_info_by_topic(topic)
    choice = decide_image_qos("auto", info)
    out[topic] = [choice.best_effort, choice.description, len(publishers_signature(info))]
out["none"] = decide_image_qos("auto", node.get_publishers_info_by_topic("qos_nobody")).best_effort
out["forced"] = [decide_image_qos("reliable", node.get_publishers_info_by_topic("qos_b")).best_effort,
                 decide_image_qos("best_effort", node.get_publishers_info_by_topic("qos_r")).best_effort]
reports, received = [], {"qos_m": 0}
reliable = decide_image_qos("reliable", []).profile()
node.create_subscription(String, "qos_b", lambda m: None, reliable,
                         event_callbacks=incompatible_qos_callbacks("/qos_b", "reliable", reports.append))
auto_m = decide_image_qos("auto", node.get_publishers_info_by_topic("qos_m")).profile()
node.create_subscription(String, "qos_m", lambda m: received.__setitem__("qos_m", received["qos_m"] + 1), auto_m)
deadline = time.monotonic() + 20
while time.monotonic() < deadline and not (reports and received["qos_m"] >= 4):
    rclpy.spin_once(node, timeout_sec=0.1)
out["reports"] = reports
out["received_m"] = received["qos_m"]
out["profile"] = [auto_m.depth, int(auto_m.history), int(auto_m.durability)]
print("RESULT " + json.dumps(out), flush=True)
"""


def test_auto_decision_and_incompatible_qos_report(ros_python):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy

    pub = ros_python.start(PUBLISHERS)
    assert pub.stdout.readline().strip() == "READY"
    done = ros_python.run(CHECKER, timeout=90)
    line = next((s for s in done.stdout.splitlines() if s.startswith("RESULT ")), None)
    assert line is not None, done.stdout + done.stderr
    out = json.loads(line[len("RESULT "):])
    assert out["qos_r"][0] is False and "1 reliable, 0 best-effort" in out["qos_r"][1]
    assert out["qos_b"][0] is True and "0 reliable, 1 best-effort" in out["qos_b"][1]
    assert out["qos_m"][0] is True and "1 reliable, 1 best-effort" in out["qos_m"][1]
    assert out["qos_m"][2] == 2
    assert out["none"] is False  # no publisher yet: reliable until one appears
    assert out["forced"] == [False, True]
    # A best-effort subscription (the mixed topic's choice) receives from both publishers' topic.
    assert out["received_m"] >= 4
    assert out["profile"] == [1, int(HistoryPolicy.KEEP_LAST), int(DurabilityPolicy.VOLATILE)]
    assert out["reports"], "no incompatible-QoS event for a reliable subscription to a best-effort publisher"
    assert "incompatible QoS on /qos_b" in out["reports"][0] and "RELIABILITY" in out["reports"][0]


def test_unknown_mode_is_a_one_line_error():
    from mtl_perception.ros.qos import decide_image_qos

    with pytest.raises(ValueError, match="image_qos must be one of auto, reliable, best_effort, got 'fast'"):
        decide_image_qos("fast", [])
