"""The large-frame Fast DDS profile: well-formed XML, used only where nothing else is chosen,
and (with real rclpy) a 1280x720 frame crosses processes through it."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import pytest

from mtl_perception.ros.dds_profile import SEGMENT_BYTES, large_frame_env, localhost_only, profile_xml, user_profile

NS = {"d": "http://www.eprosima.com"}


def test_profile_has_a_shared_memory_segment_larger_than_camera_frames():
    root = ET.fromstring(profile_xml())
    shm = [t for t in root.iterfind(".//d:transport_descriptor", NS) if t.findtext("d:type", namespaces=NS) == "SHM"]
    assert len(shm) == 1
    assert int(shm[0].findtext("d:segment_size", namespaces=NS)) == SEGMENT_BYTES > 2 * 1920 * 1080 * 3
    participant = root.find(".//d:participant", NS)
    assert participant.get("is_default_profile") == "true"
    assert root.find(".//d:interfaceWhiteList", NS) is None
    local = ET.fromstring(profile_xml(localhost_only=True))
    assert local.findtext(".//d:interfaceWhiteList/d:address", namespaces=NS) == "127.0.0.1"


def test_environment_choices(tmp_path):
    assert localhost_only({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"})
    assert localhost_only({"ROS_LOCALHOST_ONLY": "1"}) and not localhost_only({})
    mine = {"FASTRTPS_DEFAULT_PROFILES_FILE": "/etc/my.xml"}
    assert large_frame_env(mine, str(tmp_path)) == mine  # the user's profile wins
    cyclone = {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert large_frame_env(cyclone, str(tmp_path)) == cyclone
    env = large_frame_env({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}, str(tmp_path))
    path = user_profile(env)
    assert path and path.startswith(str(tmp_path))
    assert "127.0.0.1" in open(path).read()


RECEIVER = """
import sys, time, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("large_frame_receiver")
got = []
node.create_subscription(Image, "large_frame", got.append,
                         QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE))
print("READY", flush=True)
deadline = time.monotonic() + 40
while not got and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.1)
print("GOT", got[0].width, got[0].height, len(got[0].data) if got else -1, flush=True)
"""

SENDER = """
import array, time, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("large_frame_sender")
qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
pub = node.create_publisher(Image, "large_frame", qos)
msg = Image(width=1280, height=720, encoding="bgr8", step=3840)
msg.data = array.array("B", bytes(1280 * 720 * 3))
deadline = time.monotonic() + 40
while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
    time.sleep(0.05)
while time.monotonic() < deadline:
    pub.publish(msg)
    time.sleep(0.2)
    if pub.get_subscription_count() == 0:
        break
"""


def test_a_large_frame_crosses_processes_with_the_profile(ros_python, tmp_path):
    pytest.importorskip("rclpy", reason="rclpy is not installed")
    base = {k: v for k, v in os.environ.items() if "PROFILES_FILE" not in k}
    env = {k: v for k, v in large_frame_env(base, directory=str(tmp_path)).items() if "PROFILES_FILE" in k}
    assert env, "the profile was not selected"
    receiver = ros_python.start(RECEIVER, env=env)
    assert receiver.stdout.readline().strip() == "READY"
    ros_python.start(SENDER, env=env)
    out, err = receiver.communicate(timeout=60)
    assert receiver.returncode == 0, err
    assert out.strip().splitlines()[-1] == f"GOT 1280 720 {1280 * 720 * 3}", out + err
    assert "XMLPARSER" not in out + err  # Fast DDS accepted the profile
