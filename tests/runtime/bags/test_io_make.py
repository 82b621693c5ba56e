"""Bags written by `mtl-perception make-bag` (through rosbags) in both storage formats, read back
with rosbags' own AnyReader (not our reader), and every way a bag can be unusable."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from mtl_perception.bags.io import (
    VISION_MSGS_DEFINITIONS,
    BagError,
    TopicInfo,
    camera_image,
    find_camera_topic,
    open_bag,
    typestore,
)
from mtl_perception.bags.make import DEFAULT_START_NS, make_bag
from mtl_perception.data.synthetic import DETECTION_CLASSES, Camera, is_night, render_frame
from tests import REPO as ROOT

W, H = 64, 48


def read_all(path):
    """{topic: [(log time, message)]} through rosbags.highlevel.AnyReader (bag's own definitions)."""
    from rosbags.highlevel import AnyReader

    out = {}
    with AnyReader([Path(path)], default_typestore=typestore()) as reader:
        for conn, timestamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((timestamp, reader.deserialize(raw, conn.msgtype)))
    return out


def test_vision_msgs_definitions_are_ros_interfaces_and_upstream():
    for name, text in VISION_MSGS_DEFINITIONS.items():
        source = (ROOT / "ros_interfaces" / "vision_msgs" / "msg" / f"{name}.msg").read_text()
        lines = [line.split("#", 1)[0].strip() for line in source.splitlines()]
        assert [line for line in lines if line] == text.strip().splitlines(), name
    store = typestore()
    # RIHS01 hashes of upstream vision_msgs 4.1.1 (also checked against the built package in
    # test_vision_msgs_interface.py): what Jazzy/Kilted tools compare when they read our bags.
    assert store.hash_rihs01("vision_msgs/msg/Detection2DArray") == (
        "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968")
    assert store.hash_rihs01("vision_msgs/msg/LabelInfo") == (
        "RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783")


@pytest.mark.parametrize("storage,suffix", [("sqlite3", ".db3"), ("mcap", ".mcap")])
def test_synthetic_bag_round_trip(tmp_path, storage, suffix):
    bag = tmp_path / "bag"
    summary = make_bag(bag, frames=4, width=W, height=H, seed=5, night_fraction=0.5, storage=storage, rate=20.0)
    assert summary["frames"] == 4
    assert (bag / "metadata.yaml").is_file() and len(list(bag.glob(f"*{suffix}"))) == 1
    assert f"storage_identifier: {storage}" in (bag / "metadata.yaml").read_text()

    topics = read_all(bag)
    assert {t: len(v) for t, v in topics.items()} == {
        "/camera/image_raw": 4, "/camera/camera_info": 4, "/ground_truth/segmentation": 4,
        "/ground_truth/depth": 4, "/ground_truth/detections": 4}
    camera = Camera.default(W, H)
    for i in range(4):
        frame = render_frame(5, i, camera, night=is_night(5, i, 0.5))
        stamp = DEFAULT_START_NS + i * 50_000_000
        msgs = {t: v[i] for t, v in topics.items()}
        for topic, (log_ns, msg) in msgs.items():
            assert log_ns == stamp, topic
            assert msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec == stamp
            assert msg.header.frame_id == "camera_optical_frame"
        image = msgs["/camera/image_raw"][1]
        assert (image.encoding, image.width, image.height, image.step) == ("bgr8", W, H, W * 3)
        np.testing.assert_array_equal(image.data.reshape(H, W, 3), frame.image[..., ::-1])
        seg = msgs["/ground_truth/segmentation"][1]
        assert seg.encoding == "mono8"
        np.testing.assert_array_equal(seg.data.reshape(H, W), frame.semantic)
        depth = msgs["/ground_truth/depth"][1]
        assert depth.encoding == "32FC1" and depth.is_bigendian == 0
        np.testing.assert_array_equal(depth.data.view("<f4").reshape(H, W), frame.depth.astype(np.float32))
        dets = msgs["/ground_truth/detections"][1].detections
        assert len(dets) == len(frame.boxes)
        for det, box, label in zip(dets, frame.boxes, frame.labels):
            x1, y1, x2, y2 = box
            assert det.results[0].hypothesis.class_id == DETECTION_CLASSES[label]
            assert det.bbox.center.position.x == pytest.approx((x1 + x2) / 2)
            assert det.bbox.size_y == pytest.approx(y2 - y1)
        info = msgs["/camera/camera_info"][1]
        assert (info.width, info.height, info.distortion_model) == (W, H, "plumb_bob")
        np.testing.assert_allclose(info.k.reshape(3, 3), frame.camera.K_opencv())
        np.testing.assert_allclose(info.p.reshape(3, 4)[:, :3], frame.camera.K_opencv())

    # our reader sees the same, and reads the storage file on its own (no metadata.yaml needed)
    with open_bag(next(bag.glob(f"*{suffix}"))) as reader:
        assert reader.topics["/camera/image_raw"] == TopicInfo("/camera/image_raw", "sensor_msgs/msg/Image", 4)


def test_png_compressed_bag_is_lossless_and_jpeg_close(tmp_path):
    make_bag(tmp_path / "png", frames=2, width=W, height=H, storage="mcap", compressed="png")
    make_bag(tmp_path / "jpg", frames=2, width=W, height=H, storage="sqlite3", compressed="jpeg")
    frame = render_frame(0, 1, Camera.default(W, H), night=is_night(0, 1, 0.25))
    for name in ("png", "jpg"):
        msgs = read_all(tmp_path / name)
        assert "/camera/image_raw" not in msgs
        msg = msgs["/camera/image_raw/compressed"][1][1]
        assert msg.format.startswith("bgr8; ") and ("png" in msg.format if name == "png" else "jpeg" in msg.format)
        rgb = camera_image(msg, "sensor_msgs/msg/CompressedImage", "rgb")
        if name == "png":
            np.testing.assert_array_equal(rgb, frame.image)
        else:
            assert np.abs(rgb.astype(int) - frame.image).mean() < 8


def test_bag_from_dataset_image_folder_and_video(tmp_path):
    from mtl_perception.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "ds", 3, seed=2, camera=Camera.default(W, H), workers=1, progress=False)
    make_bag(tmp_path / "b_ds", str(tmp_path / "ds"), storage="mcap")
    msgs = read_all(tmp_path / "b_ds")
    assert {t: len(v) for t, v in msgs.items()} == {
        "/camera/image_raw": 3, "/camera/camera_info": 3, "/ground_truth/segmentation": 3,
        "/ground_truth/depth": 3, "/ground_truth/detections": 3}

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((H, W, 3), 40 * i, np.uint8))
    (folder / "notes.txt").write_text("not an image")
    summary = make_bag(tmp_path / "b_img", str(folder), storage="sqlite3", rate=5.0)
    assert summary["topics"] == {"/camera/image_raw": 3}
    msgs = read_all(tmp_path / "b_img")["/camera/image_raw"]
    assert [m.data[0] for _, m in msgs] == [0, 40, 80]
    assert msgs[1][0] - msgs[0][0] == 200_000_000

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (W, H))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot write MJPG video here")
    for i in range(5):
        writer.write(np.full((H, W, 3), 30 * i, np.uint8))
    writer.release()
    summary = make_bag(tmp_path / "b_vid", str(video), storage="mcap")
    assert summary["frames"] == 5 and summary["rate_hz"] == pytest.approx(25.0)


def _truncate(bag: Path, suffix: str, fraction: float) -> Path:
    storage_file = next(bag.glob(f"*{suffix}"))
    size = storage_file.stat().st_size
    with open(storage_file, "r+b") as f:
        f.truncate(int(size * fraction))
    return storage_file


@pytest.fixture(scope="module")
def good_bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    for storage in ("sqlite3", "mcap"):
        make_bag(root / storage, frames=3, width=W, height=H, storage=storage)
    return root


def _copy(good_bags, storage, dst):
    shutil.copytree(good_bags / storage, dst)
    return dst


def _one_line_error(path, *needles):
    with pytest.raises(BagError) as info:
        with open_bag(path) as reader:
            for _ in reader.messages(list(reader.topics)):
                pass
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize("storage,suffix", [("sqlite3", ".db3"), ("mcap", ".mcap")])
@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.9])
def test_truncated_bags_are_one_clear_error(tmp_path, good_bags, storage, suffix, fraction):
    bag = _copy(good_bags, storage, tmp_path / "bag")
    _truncate(bag, suffix, fraction)
    _one_line_error(bag, "truncated or corrupt", storage)


def test_corrupt_middle_of_an_mcap_is_one_clear_error(tmp_path, good_bags):
    bag = _copy(good_bags, "mcap", tmp_path / "bag")
    storage_file = next(bag.glob("*.mcap"))
    data = bytearray(storage_file.read_bytes())
    for i in range(8, len(data) // 2, 3):  # records after the magic, the summary at the end intact
        data[i] ^= 0x5A
    storage_file.write_bytes(bytes(data))
    _one_line_error(bag, "truncated or corrupt")


def test_other_unusable_bags(tmp_path, good_bags):
    _one_line_error(tmp_path / "nowhere", "no such bag")
    bag = _copy(good_bags, "sqlite3", tmp_path / "nometa")
    (bag / "metadata.yaml").unlink()
    message = _one_line_error(bag, "metadata.yaml is missing", "sqlite3.db3")
    assert "pass" in message  # says how to read the storage file directly
    (tmp_path / "notes.txt").write_text("hello")
    _one_line_error(tmp_path / "notes.txt", "not a rosbag2 bag")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(empty, "metadata.yaml is missing")


def test_find_camera_topic():
    image, compressed = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
    t = {n: TopicInfo(n, ty, 1) for n, ty in [("/cam/image_raw", image), ("/cam/image_raw/compressed", compressed),
                                              ("/ground_truth/depth", image), ("/odom", "nav_msgs/msg/Odometry")]}
    assert find_camera_topic(t).name == "/cam/image_raw"  # raw beats its compressed twin; labels excluded
    t2 = dict(t, **{"/left/image_raw": TopicInfo("/left/image_raw", image, 1)})
    with pytest.raises(BagError, match="several camera topics .*/cam/image_raw, /left/image_raw.*--image-topic"):
        find_camera_topic(t2)
    assert find_camera_topic(t2, "/left/image_raw").name == "/left/image_raw"
    with pytest.raises(BagError, match="/odom is nav_msgs/msg/Odometry"):
        find_camera_topic(t, "/odom")
    with pytest.raises(BagError, match=r"no camera topic .*\(topics: /odom \(nav_msgs/msg/Odometry\)\)"):
        find_camera_topic({"/odom": t["/odom"]}, path="x")


def test_cli_make_bag_and_errors(tmp_path, capsys):
    from mtl_perception.cli import main

    assert main(["make-bag", str(tmp_path / "b"), "--frames", "2", "--width", str(W), "--height", str(H),
                 "--storage", "mcap"]) == 0
    assert "2 frames at 10 Hz" in capsys.readouterr().out
    assert main(["make-bag", str(tmp_path / "b"), "--frames", "2"]) == 2  # never overwrites
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "\n" not in err
    # a bag without a camera topic: eval-bag fails in one line before loading any model
    from mtl_perception.bags.io import BagWriter, make_header

    with BagWriter(tmp_path / "nocam", "sqlite3") as writer:
        header = make_header(1, "x")
        writer.write("/ground_truth/depth_info", 1, writer.store.types["std_msgs/msg/Header"](
            stamp=header.stamp, frame_id="x"))
    assert main(["eval-bag", str(tmp_path / "nocam"), "--model", str(tmp_path / "absent.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no camera topic" in err and str(tmp_path / "nocam") in err and "\n" not in err
