"""depth/camera_info and points: the depth image's CameraInfo against a hand computation
(image_proc's resize convention), and points of synthetic planes against their closed form,
read back from the PointCloud2 bytes with a NumPy dtype built from the message's own fields."""
from __future__ import annotations

import numpy as np
import pytest

sensor_msgs_msg = pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs is not installed")

from mtl_perception.inference.preprocess import FrameMapping  # noqa: E402
from mtl_perception.messages.outputs import mapped_camera_info, mapped_intrinsics  # noqa: E402
from mtl_perception.messages.pointcloud import depth_points, pointcloud2  # noqa: E402

FX, FY, CX, CY = 500.0, 510.0, 320.5, 239.5


def camera_info(width=640, height=480):
    info = sensor_msgs_msg.CameraInfo()
    info.width, info.height = width, height
    info.k = [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]
    info.p = [FX, 0.0, CX, -25.0, 0.0, FY, CY, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.d = [0.1, -0.05, 0.0, 0.0, 0.0]
    info.distortion_model = "plumb_bob"
    info.header.frame_id = "camera_optical"
    return info


def header(sec=7):
    h = sensor_msgs_msg.Image().header
    h.frame_id, h.stamp.sec = "camera_optical", sec
    return h


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "crop"])
def test_points_intrinsics_are_the_depth_camera_infos(mode):
    """`points` back-projects through K alone (no CameraInfo copy per frame): the same K that
    `depth/camera_info` publishes, through every resize mode."""
    mapping = FrameMapping((640, 480), (64, 48 if mode == "stretch" else 32), mode)
    np.testing.assert_array_equal(mapped_intrinsics(camera_info(), mapping),
                                  np.asarray(mapped_camera_info(camera_info(), header(), mapping).k))


def test_depth_camera_info_is_scaled_to_the_depth_image():
    out = mapped_camera_info(camera_info(), header(9), FrameMapping((640, 480), (64, 32)))
    # By hand: sx = 64/640 = 0.1, sy = 32/480 = 1/15.
    np.testing.assert_allclose(out.k, [50.0, 0, 32.05, 0, 34.0, 239.5 / 15, 0, 0, 1], rtol=1e-12)
    np.testing.assert_allclose(out.p, [50.0, 0, 32.05, -2.5, 0, 34.0, 239.5 / 15, 0, 0, 0, 1, 0], rtol=1e-12)
    assert (out.width, out.height) == (64, 32)
    assert out.header.stamp.sec == 9 and out.header.frame_id == "camera_optical"
    np.testing.assert_array_equal(out.d, [0.1, -0.05, 0.0, 0.0, 0.0])
    assert out.distortion_model == "plumb_bob"


def fields_dtype(msg) -> np.dtype:
    """The point layout the message declares (an independent reading of its fields)."""
    kinds = {7: "<f4", 6: "<u4"}
    return np.dtype({"names": [f.name for f in msg.fields], "formats": [kinds[f.datatype] for f in msg.fields],
                     "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})


def read_back(msg) -> np.ndarray:
    assert msg.row_step == msg.point_step * msg.width and not msg.is_bigendian
    return np.frombuffer(msg.data, dtype=fields_dtype(msg)).reshape(msg.height, msg.width)


def depth_k(width, height):
    return np.asarray(mapped_camera_info(camera_info(), header(), FrameMapping((640, 480), (width, height))).k)


def test_fronto_parallel_plane_at_2_m():
    width, height = 64, 32
    k = depth_k(width, height)
    depth = np.full((height, width), 2.0, np.float32)
    depth[3, 5] = depth[10, 40] = np.nan
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    msg = pointcloud2(header(), depth_points(depth, k), rgb=rgb)
    cloud = read_back(msg)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb"] and msg.point_step == 16
    assert (msg.height, msg.width) == (height, width) and msg.is_dense is False
    valid = np.isfinite(depth)
    assert np.isnan(cloud["x"][~valid]).all() and np.isnan(cloud["z"][~valid]).all()
    v, u = np.mgrid[0:height, 0:width]
    np.testing.assert_allclose(cloud["z"][valid], 2.0)
    np.testing.assert_allclose(cloud["x"][valid], ((u - k[2]) * 2.0 / k[0])[valid], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cloud["y"][valid], ((v - k[5]) * 2.0 / k[4])[valid], rtol=1e-6, atol=1e-6)
    packed = cloud["rgb"].view(np.uint32)
    unpacked = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], -1)
    np.testing.assert_array_equal(unpacked, rgb)
    assert (packed >> 24 == 0).all()


def test_tilted_plane_points_lie_on_it():
    """Depth of the plane n.X = d seen through K: z = d / (n . ((u-cx)/fx, (v-cy)/fy, 1))."""
    width, height = 80, 40
    k = depth_k(width, height)
    n = np.array([0.2, -0.5, 1.0])
    n /= np.linalg.norm(n)
    d = 3.0
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([(u - k[2]) / k[0], (v - k[5]) / k[4], np.ones_like(u)], -1)
    depth = (d / (rays @ n)).astype(np.float32)
    assert (depth > 0).all()
    labels = (u.astype(np.int64) // 10) % 19
    msg = pointcloud2(header(), depth_points(depth, k), labels=labels)
    cloud = read_back(msg)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "label"] and msg.fields[3].datatype == 6
    points = np.stack([cloud["x"], cloud["y"], cloud["z"]], -1).astype(np.float64)
    np.testing.assert_allclose(points @ n, d, rtol=2e-6)
    np.testing.assert_allclose(points / points[..., 2:], rays, atol=1e-6)  # each on its pixel's ray
    np.testing.assert_array_equal(cloud["label"], labels)
    assert msg.is_dense is True


def test_cloud_survives_cdr_serialisation():
    from rclpy.serialization import deserialize_message, serialize_message

    k = depth_k(16, 8)
    msg = pointcloud2(header(3), depth_points(np.full((8, 16), 1.5, np.float32), k))
    back = deserialize_message(serialize_message(msg), sensor_msgs_msg.PointCloud2)
    assert back.header.stamp.sec == 3 and back.header.frame_id == "camera_optical"
    np.testing.assert_array_equal(read_back(back)["z"], 1.5)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="focal length"):
        depth_points(np.ones((2, 2), np.float32), [0.0] * 9)
    with pytest.raises(ValueError, match="does not match"):
        pointcloud2(header(), np.zeros((2, 3, 3), np.float32), rgb=np.zeros((3, 2, 3), np.uint8))
