"""Depth map + camera intrinsics -> sensor_msgs/PointCloud2, with NumPy only.

`depth_points(depth, k)` back-projects every pixel (u, v) with depth z (metres, NaN invalid)
through the 3x3 matrix K as depth_image_proc does: x = (u - cx) z / fx, y = (v - cy) z / fy,
in the camera's optical frame (x right, y down, z forward). `pointcloud2(header, points, ...)`
packs an organised cloud (height x width, NaN points kept, `is_dense` false when there are any) with fields x, y, z
(float32) and either `rgb` (float32 holding 0x00RRGGBB, the PCL / RViz convention) or `label`
(uint32 class id, PCL's PointXYZL). The data is assigned as an `array.array('B')`, which
rclpy's field checks accept without a per-byte loop (DEVELOPERS.md, pitfall 3).
"""
from __future__ import annotations

import array
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["FLOAT32", "UINT32", "cloud_dtype", "depth_points", "pack_rgb", "pointcloud2"]

# sensor_msgs/PointField datatype constants.
FLOAT32 = 7
UINT32 = 6


def depth_points(depth: np.ndarray, k: Sequence[float]) -> np.ndarray:
    """HxWx3 float32 points of an HxW depth map (NaN depth -> NaN point) through K (row-major 3x3)."""
    depth = np.asarray(depth, np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth must be HxW, got shape {depth.shape}")
    k = np.asarray(k, np.float64).reshape(-1)
    if k.size != 9:
        raise ValueError(f"K must have 9 elements, got {k.size}")
    fx, cx, fy, cy = k[0], k[2], k[4], k[5]
    if not (fx > 0 and fy > 0):
        raise ValueError(f"camera intrinsics have no focal length (fx={fx}, fy={fy}): is the CameraInfo calibrated?")
    height, width = depth.shape
    x_per_z = ((np.arange(width, dtype=np.float64) - cx) / fx).astype(np.float32)
    y_per_z = ((np.arange(height, dtype=np.float64) - cy) / fy).astype(np.float32)
    points = np.empty((height, width, 3), np.float32)
    np.multiply(depth, x_per_z[None, :], out=points[..., 0])
    np.multiply(depth, y_per_z[:, None], out=points[..., 1])
    points[..., 2] = depth
    return points


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxW float32 whose bits are 0x00RRGGBB (PCL's packed rgb)."""
    rgb = np.asarray(rgb, np.uint8)
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    return packed.view(np.float32)


def cloud_dtype(extra: Optional[str]) -> np.dtype:
    """Little-endian point layout: x, y, z float32, then `extra` ('rgb' float32, 'label' uint32 or None)."""
    names: List[str] = ["x", "y", "z"]
    formats: List[str] = ["<f4", "<f4", "<f4"]
    if extra == "rgb":
        names.append("rgb")
        formats.append("<f4")
    elif extra == "label":
        names.append("label")
        formats.append("<u4")
    elif extra is not None:
        raise ValueError(f"point field must be 'rgb', 'label' or None, not {extra!r}")
    return np.dtype({"names": names, "formats": formats, "offsets": [4 * i for i in range(len(names))],
                     "itemsize": 4 * len(names)})


def _fields(dtype: np.dtype, field_cls: Any) -> List[Any]:
    out = []
    for name in dtype.names:
        field = field_cls()
        field.name = name
        field.offset = int(dtype.fields[name][1])
        field.datatype = UINT32 if dtype.fields[name][0].kind == "u" else FLOAT32
        field.count = 1
        out.append(field)
    return out


def _packed(points: np.ndarray, rgb: Optional[np.ndarray], labels: Optional[np.ndarray]
            ) -> Tuple[np.ndarray, np.dtype]:
    """The cloud as one HxWxN little-endian 4-byte array (every field is 4 bytes): filled column
    by column, several times faster than assigning the fields of a structured array."""
    if rgb is not None and labels is not None:
        raise ValueError("a cloud carries either rgb or label, not both")
    extra = "rgb" if rgb is not None else "label" if labels is not None else None
    dtype = cloud_dtype(extra)
    height, width = points.shape[:2]
    buf = np.empty((height, width, len(dtype.names)), "<f4")
    buf[..., :3] = points
    if extra == "rgb":
        buf[..., 3] = pack_rgb(rgb)
    elif extra == "label":
        buf.view("<u4")[..., 3] = np.asarray(labels).astype(np.uint32)
    return buf, dtype


def pointcloud2(header: Any, points: np.ndarray, rgb: Optional[np.ndarray] = None,
                labels: Optional[np.ndarray] = None, msg_cls: Any = None, field_cls: Any = None) -> Any:
    """An organised sensor_msgs/PointCloud2 of HxWx3 `points` (NaN kept), with the HxWx3 uint8
    `rgb` colours or HxW class `labels` of the same pixels. `msg_cls`/`field_cls` default to
    rclpy's sensor_msgs classes."""
    points = np.asarray(points, np.float32)
    if points.ndim != 3 or points.shape[2] != 3:
        raise ValueError(f"points must be HxWx3, got shape {points.shape}")
    for name, extra in (("rgb", rgb), ("labels", labels)):
        if extra is not None and np.shape(extra)[:2] != points.shape[:2]:
            raise ValueError(f"{name} of shape {np.shape(extra)} does not match points of shape {points.shape}")
    cloud, dtype = _packed(points, rgb, labels)
    if msg_cls is None or field_cls is None:
        from sensor_msgs.msg import PointCloud2, PointField  # the distro's (or dev wheels') messages

        msg_cls, field_cls = msg_cls or PointCloud2, field_cls or PointField
    height, width = cloud.shape[:2]
    msg = msg_cls()
    msg.header = header
    msg.height, msg.width = height, width
    msg.fields = _fields(dtype, field_cls)
    msg.is_bigendian = False
    msg.point_step = dtype.itemsize
    msg.row_step = dtype.itemsize * width
    msg.is_dense = bool(np.isfinite(points).all())  # PCL: true only without invalid points
    data = array.array("B")
    data.frombytes(cloud.reshape(-1).view(np.uint8))  # from the array's buffer, no intermediate bytes
    msg.data = data
    return msg
