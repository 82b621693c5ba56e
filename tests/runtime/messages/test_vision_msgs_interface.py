"""The installed vision_msgs is the 4.x interface (Humble/Jazzy), and it crosses processes.

Whichever vision_msgs the environment has (the distro's, or ours from ros_interfaces/ built by
scripts/setup_ros.sh) must declare exactly these fields, in this order, with these types: the
order and types are the wire format. Where the ROS distribution records type hashes (Iron and
later), they must equal the RIHS01 hashes of upstream vision_msgs 4.1.1's definitions, which
makes the "same wire type" claim independent of this file's field table.
"""
from __future__ import annotations

import json
import os
import sys

import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed (see scripts/setup_ros.sh)")
vision_msgs_msg = pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not installed")

EXPECTED_FIELDS = {
    "Detection2DArray": [("header", "std_msgs/Header"),
                         ("detections", "sequence<vision_msgs/Detection2D>")],
    "Detection2D": [("header", "std_msgs/Header"),
                    ("results", "sequence<vision_msgs/ObjectHypothesisWithPose>"),
                    ("bbox", "vision_msgs/BoundingBox2D"),
                    ("id", "string")],
    "BoundingBox2D": [("center", "vision_msgs/Pose2D"),
                      ("size_x", "double"),
                      ("size_y", "double")],
    "Pose2D": [("position", "vision_msgs/Point2D"), ("theta", "double")],
    "Point2D": [("x", "double"), ("y", "double")],
    "ObjectHypothesis": [("class_id", "string"), ("score", "double")],
    "ObjectHypothesisWithPose": [("hypothesis", "vision_msgs/ObjectHypothesis"),
                                 ("pose", "geometry_msgs/PoseWithCovariance")],
    "LabelInfo": [("header", "std_msgs/Header"),
                  ("class_map", "sequence<vision_msgs/VisionClass>"),
                  ("threshold", "float")],
    "VisionClass": [("class_id", "uint16"), ("class_name", "string")],
}

# RIHS01 type hashes of upstream vision_msgs 4.1.1 (computed by rosidl from its .msg files).
UPSTREAM_TYPE_HASHES = {
    "BoundingBox2D": "RIHS01_008eacbb0cf8f26e83795547bed013eec3675485ef386ec056d80eaaf1c1ce2f",
    "Detection2D": "RIHS01_0d12b69df5c593b3455b7346fac8205437a7d4bcb09b9e0e0b2dde787ded38ea",
    "Detection2DArray": "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968",
    "LabelInfo": "RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783",
    "ObjectHypothesis": "RIHS01_51da43cec11c01957a64d1e05a24acd18aae7745ec30b74348ad5f6d634f7f90",
    "ObjectHypothesisWithPose":
        "RIHS01_41c12344c0396c48b81df12467c192d99b2a0eb1463c5c37194e4223251c80bc",
    "Point2D": "RIHS01_eab0e83f44ab4de92ceaf76dd7d0e7638f2bdd1d16ffbe16c7a136c48e407247",
    "Pose2D": "RIHS01_b0b5d1d7b4c20dd4fcde3ed1d4b289a919290572007d67a97043814db25d3648",
    "VisionClass": "RIHS01_1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_fields_and_types_are_the_4x_interface(name):
    cls = getattr(vision_msgs_msg, name)
    assert list(cls.get_fields_and_field_types().items()) == EXPECTED_FIELDS[name]


def _type_description_dir():
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    for prefix in prefixes:
        path = os.path.join(prefix, "share", "vision_msgs", "msg")
        if os.path.exists(os.path.join(path, "Detection2DArray.json")):
            return path
    return None


@pytest.mark.parametrize("name", sorted(UPSTREAM_TYPE_HASHES))
def test_type_hash_matches_upstream(name):
    directory = _type_description_dir()
    if directory is None:
        pytest.skip("this ROS distribution installs no type descriptions (Humble)")
    with open(os.path.join(directory, f"{name}.json"), encoding="utf-8") as f:
        hashes = json.load(f)["type_hashes"]
    own = [h["hash_string"] for h in hashes if h["type_name"] == f"vision_msgs/msg/{name}"]
    assert own == [UPSTREAM_TYPE_HASHES[name]]


SUBSCRIBER = """
import json, sys, time
import rclpy
from rclpy.qos import QoSProfile, DurabilityPolicy, ReliabilityPolicy
from vision_msgs.msg import Detection2DArray, LabelInfo

rclpy.init()
node = rclpy.create_node("vision_msgs_test_sub")
got = {}
qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)

def on_detections(msg):
    got.setdefault("detections", {
        "frame_id": msg.header.frame_id,
        "stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec],
        "detections": [{
            "id": d.id,
            "frame_id": d.header.frame_id,
            "center": [d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.center.theta],
            "size": [d.bbox.size_x, d.bbox.size_y],
            "results": [[r.hypothesis.class_id, r.hypothesis.score,
                         r.pose.pose.position.x, r.pose.pose.orientation.w,
                         float(r.pose.covariance[35])] for r in d.results],
        } for d in msg.detections],
    })

def on_labels(msg):
    got.setdefault("labels", {
        "frame_id": msg.header.frame_id,
        "threshold": round(msg.threshold, 6),
        "class_map": [[c.class_id, c.class_name] for c in msg.class_map],
    })

node.create_subscription(Detection2DArray, "detections", on_detections, qos)
node.create_subscription(LabelInfo, "label_info", on_labels, latched)
print("READY", flush=True)
deadline = time.monotonic() + 40
while len(got) < 2 and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.1)
print(json.dumps(got), flush=True)
node.destroy_node()
rclpy.shutdown()
sys.exit(0 if len(got) == 2 else 3)
"""

PUBLISHER = """
import sys, time
import rclpy
from rclpy.qos import QoSProfile, DurabilityPolicy, ReliabilityPolicy
from vision_msgs.msg import (Detection2D, Detection2DArray, LabelInfo, ObjectHypothesisWithPose,
                             VisionClass)

rclpy.init()
node = rclpy.create_node("vision_msgs_test_pub")
qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
det_pub = node.create_publisher(Detection2DArray, "detections", qos)
label_pub = node.create_publisher(LabelInfo, "label_info", latched)

# Latched: published once, before any subscriber is known; a late joiner must still get it.
labels = LabelInfo()
labels.header.frame_id = "camera"
labels.threshold = 0.25
labels.class_map = [VisionClass(class_id=0, class_name="road"),
                    VisionClass(class_id=65535, class_name="unlabelled")]
label_pub.publish(labels)

msg = Detection2DArray()
msg.header.frame_id = "camera"
msg.header.stamp.sec = 1700000000
msg.header.stamp.nanosec = 123456789
for i in range(2):
    d = Detection2D()
    d.header = msg.header
    d.id = f"track-{i}"
    d.bbox.center.position.x = 100.5 + i
    d.bbox.center.position.y = 50.25
    d.bbox.center.theta = 0.0
    d.bbox.size_x = 20.0
    d.bbox.size_y = 40.0 + i
    r = ObjectHypothesisWithPose()
    r.hypothesis.class_id = "person"
    r.hypothesis.score = 0.875
    r.pose.pose.position.x = 1.5
    r.pose.pose.orientation.w = 1.0
    cov = [0.0] * 36
    cov[35] = 0.5
    r.pose.covariance = cov
    d.results = [r]
    msg.detections.append(d)

deadline = time.monotonic() + 30
while det_pub.get_subscription_count() == 0 and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.05)
if det_pub.get_subscription_count() == 0:
    print("no subscriber matched", flush=True)
    sys.exit(2)
# Keep publishing (and serving the latched sample) until the subscriber leaves or time is up.
while det_pub.get_subscription_count() > 0 and time.monotonic() < deadline:
    det_pub.publish(msg)
    rclpy.spin_once(node, timeout_sec=0.1)
node.destroy_node()
rclpy.shutdown()
"""


def test_detections_and_latched_label_info_cross_processes(ros_python):
    sub = ros_python.start(SUBSCRIBER)
    assert sub.stdout.readline().strip() == "READY", sub.stderr.read()
    pub = ros_python.start(PUBLISHER)
    try:
        sub_out, sub_err = sub.communicate(timeout=60)
        pub_out, pub_err = pub.communicate(timeout=30)
    except Exception:
        sub.kill()
        pub.kill()
        raise
    assert sub.returncode == 0, f"subscriber: {sub_out}\n{sub_err}\npublisher: {pub_out}\n{pub_err}"
    assert pub.returncode == 0, f"publisher: {pub_out}\n{pub_err}"
    got = json.loads(sub_out.strip().splitlines()[-1])

    assert got["labels"] == {"frame_id": "camera", "threshold": 0.25,
                             "class_map": [[0, "road"], [65535, "unlabelled"]]}
    det = got["detections"]
    assert det["frame_id"] == "camera"
    assert det["stamp"] == [1700000000, 123456789]
    assert det["detections"] == [
        {"id": f"track-{i}", "frame_id": "camera", "center": [100.5 + i, 50.25, 0.0],
         "size": [20.0, 40.0 + i], "results": [["person", 0.875, 1.5, 1.0, 0.5]]}
        for i in range(2)
    ]
