"""camera_source as a separate process: synthetic world, image folder and video file."""
from __future__ import annotations

import math
import subprocess
import sys
import time
from typing import List

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (see scripts/setup_ros.sh)")

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from mtl_perception.messages.image import image_to_array  # noqa: E402
from mtl_perception.ros.spin import spin_in_background  # noqa: E402
from tests.conftest import ros_env  # noqa: E402


class Listener:
    """Subscribes to <ns>/image and <ns>/camera_info in this process."""

    def __init__(self, namespace: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, args=[])
        self.node = rclpy.create_node("listener", namespace=namespace, context=self.context)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.images: List[Image] = []
        self.infos: List[CameraInfo] = []
        self.node.create_subscription(Image, "image", self.images.append, qos)
        self.node.create_subscription(CameraInfo, "camera_info", self.infos.append, qos)
        self.executor, self.thread = spin_in_background(self.node, self.context)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.images) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.images) >= count, f"got {len(self.images)} images, wanted {count}"

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self.thread.join(timeout=5.0)


def start_source(namespace: str, *params: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "mtl_perception.ros.camera_source", "--ros-args", "-r", f"__ns:={namespace}"]
    for p in params:
        args += ["-p", p]
    return subprocess.Popen(args, env=ros_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.communicate()[0]


def test_synthetic_source_publishes_rendered_frames_with_exact_intrinsics():
    from mtl_perception.data.synthetic import Camera, render_frame

    listener = Listener("/cam_synthetic")
    proc = start_source("/cam_synthetic", "source:=synthetic", "rate:=20.0", "width:=160", "height:=120",
                        "synthetic_frames:=2", "frame_id:=front")
    try:
        listener.wait_for(4)
    finally:
        output = stop(proc)
        listener.close()
    assert "Traceback" not in output
    camera = Camera.default(160, 120)
    renders = [render_frame(0, i, camera).image[..., ::-1] for i in range(2)]
    for msg in listener.images[:4]:
        assert (msg.encoding, msg.width, msg.height, msg.step, msg.header.frame_id) == ("bgr8", 160, 120, 480, "front")
        pixels = image_to_array(msg)
        assert any(np.array_equal(pixels, r) for r in renders)
    stamps = [m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec for m in listener.images]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    info = listener.infos[-1]
    f = 80.0 / math.tan(math.radians(35.0))
    np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), [[f, 0, 79.5], [0, f, 59.5], [0, 0, 1]])
    np.testing.assert_allclose(np.asarray(info.p).reshape(3, 4)[:, :3], np.asarray(info.k).reshape(3, 3))
    assert (info.width, info.height, info.header.frame_id) == (160, 120, "front")


def test_folder_source_publishes_the_images_in_order_and_exits_without_loop(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i, colour in enumerate(colours):
        cv2.imwrite(str(tmp_path / f"frame_{i:02d}.png"), np.full((30, 40, 3), colour, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    listener = Listener("/cam_folder")
    proc = start_source("/cam_folder", f"source:={tmp_path}", "rate:=10.0")
    try:
        listener.wait_for(4)
    finally:
        stop(proc)
        listener.close()
    seen = [tuple(int(v) for v in image_to_array(m)[0, 0]) for m in listener.images]
    first = colours.index(seen[0])
    assert seen[:4] == [colours[(first + i) % 3] for i in range(4)]  # name order, looping
    assert (listener.images[0].width, listener.images[0].height) == (40, 30)

    once = subprocess.run([sys.executable, "-m", "mtl_perception.ros.camera_source", "--ros-args", "-r",
                           "__ns:=/cam_folder_once", "-p", f"source:={tmp_path}", "-p", "rate:=50.0", "-p",
                           "loop:=false", "-p", "width:=20", "-p", "height:=16"],
                          env=ros_env(), capture_output=True, text=True, timeout=60)
    assert once.returncode == 0, once.stderr
    assert "publishing 20x16 bgr8" in once.stderr and "source exhausted after 3 frames" in once.stderr


def test_video_source_and_a_missing_source(tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    result = subprocess.run([sys.executable, "-m", "mtl_perception.ros.camera_source", "--ros-args", "-r",
                             "__ns:=/cam_video", "-p", f"source:={video}", "-p", "rate:=50.0", "-p", "loop:=false"],
                            env=ros_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "publishing 64x48 bgr8" in result.stderr and "source exhausted after 5 frames" in result.stderr

    missing = subprocess.run([sys.executable, "-m", "mtl_perception.ros.camera_source", "--ros-args", "-p",
                              f"source:={tmp_path / 'nothing'}"], env=ros_env(), capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 1
    assert "no such folder or video file" in missing.stderr and "Traceback" not in missing.stderr


def test_raw_sensor_encodings_bayer_and_yuv(tmp_path):
    """encoding:=bayer_rggb8 sends the mosaic a raw RGGB sensor would (red at even rows and
    columns, blue at odd ones, written here by hand); uyvy / yuyv need an even width, nv12 even
    sides, and an unknown encoding is refused, each with one line."""
    cv2.imwrite(str(tmp_path / "frame.png"), np.full((30, 40, 3), (10, 90, 250), np.uint8))  # BGR
    listener = Listener("/cam_bayer")
    proc = start_source("/cam_bayer", f"source:={tmp_path}", "rate:=10.0", "encoding:=bayer_rggb8")
    try:
        listener.wait_for(1)
    finally:
        output = stop(proc)
        listener.close()
    msg = listener.images[0]
    assert (msg.encoding, msg.width, msg.height, msg.step) == ("bayer_rggb8", 40, 30, 40)
    mosaic = image_to_array(msg)
    expected = np.empty((30, 40), np.uint8)
    expected[0::2, 0::2], expected[0::2, 1::2], expected[1::2, 0::2], expected[1::2, 1::2] = 250, 90, 90, 10
    np.testing.assert_array_equal(mosaic, expected)
    assert "publishing 40x30 bayer_rggb8" in output

    for params, message in ((["encoding:=uyvy", "width:=41", "height:=30"], "width 41 is odd, but uyvy"),
                            (["encoding:=nv12", "width:=40", "height:=31"], "40x31 has an odd side, but nv12"),
                            (["encoding:=nv24"], "encoding must be one of bgr8, rgb8, mono8")):
        result = subprocess.run([sys.executable, "-m", "mtl_perception.ros.camera_source", "--ros-args", "-p",
                                 f"source:={tmp_path}"] + [a for p in params for a in ("-p", p)],
                                env=ros_env(), capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
