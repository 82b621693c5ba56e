"""`camera_source`: publishes sensor_msgs/Image + CameraInfo at a set rate from a folder of
images, a video file, or the built-in synthetic driving world.

    camera_source --ros-args -p source:=synthetic -p rate:=10.0 -p width:=640 -p height:=480
    camera_source --ros-args -p source:=/data/frames -p rate:=5.0 -r image:=/camera/image_raw
    camera_source --ros-args -p source:=drive.mp4 -p loop:=false

Topics (relative, remappable): `image`, `camera_info`; publisher QoS reliable KEEP_LAST 1 (a
reliable KEEP_LAST 1 publisher never blocks on a slow subscriber). Stamps are the node clock at
publish time; frame_id is the `frame_id` parameter.

Sources: `synthetic` renders frames of `mtl_perception.data.synthetic` (exact intrinsics) in a
background thread and cycles through the first `synthetic_frames` of them, so publishing starts
at once and keeps its rate; a folder publishes its images in name order (png, jpg, jpeg, bmp,
tif, tiff, webp); anything else is opened as a video with OpenCV. `width`/`height` resize the
frames (0: the source's own size; synthetic default 640x480). Folder and video sources have no
calibration: CameraInfo is a pinhole with the horizontal field of view `fov_deg`, centred
principal point and no distortion. With `loop` false the node exits after the last frame.
`encoding` (default bgr8) sends the frames as a given camera would: rgb8, mono8, a Bayer mosaic
(bayer_rggb8, bayer_bggr8, bayer_gbrg8, bayer_grbg8), 4:2:2 YUV (uyvy, yuyv; even widths) or
4:2:0 YUV (nv12, nv21; even sides).
"""
from __future__ import annotations

import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, List, Optional, Tuple

import cv2
import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from mtl_perception.inference.pixels import (
    WRITABLE_ENCODINGS,
    ImageConversionError,
    check_size,
    color_to_array,
    encoding_info,
)
from mtl_perception.messages.image import array_to_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SYNTHETIC_DEFAULT_SIZE = (640, 480)


class SourceError(RuntimeError):
    """The source cannot be opened; str() is one line."""


def pinhole_k(width: int, height: int, fov_deg: float) -> np.ndarray:
    """K (ROS convention, first pixel centre at 0) for a centred pinhole with a horizontal FOV."""
    f = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def camera_info_msg(k: np.ndarray, width: int, height: int, frame_id: str) -> CameraInfo:
    info = CameraInfo()
    info.header.frame_id = frame_id
    info.width, info.height = int(width), int(height)
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = np.asarray(k, np.float64).reshape(9)
    info.r = np.eye(3).reshape(9)
    p = np.zeros((3, 4))
    p[:, :3] = k
    info.p = p.reshape(12)
    return info


def image_msg(bgr: np.ndarray, frame_id: str, encoding: str = "bgr8") -> Image:
    """An Image holding `bgr` as a camera sends it in `encoding` (packed rows; a Bayer mosaic
    or YUV for `bayer_*8`, `uyvy`, `yuyv`, `nv12`, `nv21`)."""
    msg = array_to_image(color_to_array(bgr, encoding, "bgr"), encoding, msg_cls=Image)
    msg.header.frame_id = frame_id
    return msg


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if width <= 0 or height <= 0 or image.shape[:2] == (height, width):
        return image
    shrink = image.shape[1] >= width and image.shape[0] >= height
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class _Frames:
    """A source of BGR frames with intrinsics: `next()` gives (key, frame), or None when
    exhausted; frames with the same non-None key are identical (their message is reused)."""

    k: np.ndarray
    width: int
    height: int

    def next(self) -> Optional[Tuple[Optional[int], np.ndarray]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _FolderFrames(_Frames):
    def __init__(self, folder: Path, width: int, height: int, fov: float, loop: bool):
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self.loop, self.index, self.size = loop, 0, (width, height)
        self._cache: dict = {}
        first = self._load(0)
        self.height, self.width = first.shape[:2]
        self.k = pinhole_k(self.width, self.height, fov)

    def _load(self, i: int) -> np.ndarray:
        if i not in self._cache:
            image = cv2.imread(str(self.files[i]), cv2.IMREAD_COLOR)
            if image is None:
                raise SourceError(f"{self.files[i]}: cannot read image")
            image = _fit(image, *self.size)
            if hasattr(self, "width") and image.shape[:2] != (self.height, self.width):
                image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
            if len(self._cache) < 512:  # keep small folders in memory
                self._cache[i] = image
            return image
        return self._cache[i]

    def next(self) -> Optional[Tuple[Optional[int], np.ndarray]]:
        if self.index >= len(self.files):
            if not self.loop:
                return None
            self.index = 0
        i = self.index
        image = self._load(i)
        self.index += 1
        return (i if i in self._cache else None), image


class _VideoFrames(_Frames):
    def __init__(self, path: Path, width: int, height: int, fov: float, loop: bool):
        self.path, self.loop, self.size = path, loop, (width, height)
        self.capture = cv2.VideoCapture(str(path))
        first = self.capture.read()[1] if self.capture.isOpened() else None
        if first is None:
            raise SourceError(f"{path}: cannot open as a video (or it has no frames)")
        self._pending: Optional[np.ndarray] = _fit(first, width, height)
        self.height, self.width = self._pending.shape[:2]
        self.k = pinhole_k(self.width, self.height, fov)

    def next(self) -> Optional[Tuple[Optional[int], np.ndarray]]:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return None, frame
        ok, frame = self.capture.read()
        if not ok:
            if not self.loop:
                return None
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.capture.read()
            if not ok:
                return None
        return None, _fit(frame, *self.size)

    def close(self) -> None:
        self.capture.release()


class _SyntheticFrames(_Frames):
    """Renders frames 0..count-1 of the synthetic world in a thread; cycles through those ready."""

    def __init__(self, width: int, height: int, count: int, seed: int, night: bool, loop: bool):
        from mtl_perception.data.synthetic import Camera, render_frame

        self.width, self.height = width, height
        camera = Camera.default(width, height)
        self.k = np.array(camera.K(), np.float64)
        self.k[0, 2] -= 0.5  # pixel-corner convention -> ROS (first pixel centre at 0)
        self.k[1, 2] -= 0.5
        self.count, self.loop, self.index = max(1, count), loop, 0
        self.frames: List[np.ndarray] = []
        self._ready = threading.Event()
        self._stop = threading.Event()

        def render() -> None:
            for i in range(self.count):
                if self._stop.is_set():
                    return
                rgb = render_frame(seed, i, camera, night=night).image
                self.frames.append(np.ascontiguousarray(rgb[..., ::-1]))
                self._ready.set()

        self._thread = threading.Thread(target=render, name="synthetic_render", daemon=True)
        self._thread.start()

    def next(self) -> Optional[Tuple[Optional[int], np.ndarray]]:
        self._ready.wait()
        if self.index >= self.count:
            if not self.loop:
                return None
            self.index = 0
        i = self.index % len(self.frames)
        self.index += 1
        return i, self.frames[i]

    def close(self) -> None:
        self._stop.set()


def open_source(source: str, width: int, height: int, *, fov_deg: float = 70.0, loop: bool = True,
                synthetic_frames: int = 16, seed: int = 0, night: bool = False) -> _Frames:
    """`synthetic`, a folder of images, or a video file."""
    if source == "synthetic":
        w, h = (width, height) if width > 0 and height > 0 else SYNTHETIC_DEFAULT_SIZE
        return _SyntheticFrames(w, h, synthetic_frames, seed, night, loop)
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        return _FolderFrames(path, width, height, fov_deg, loop)
    if path.is_file():
        return _VideoFrames(path, width, height, fov_deg, loop)
    raise SourceError(f"{source}: no such folder or video file (or use source:=synthetic)")


class CameraSource(Node):
    """Publishes `image` + `camera_info` from a source at `rate` Hz."""

    def __init__(self, node_name: str = "camera_source", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        d = self.declare_parameter
        d("source", "synthetic", ParameterDescriptor(description="'synthetic', a folder of images or a video file"))
        d("rate", 10.0, ParameterDescriptor(description="frames per second"))
        d("width", 0, ParameterDescriptor(description="output width (0: the source's; synthetic: 640)"))
        d("height", 0, ParameterDescriptor(description="output height (0: the source's; synthetic: 480)"))
        d("loop", True, ParameterDescriptor(description="start again at the end (false: exit after the last frame)"))
        d("frame_id", "camera", ParameterDescriptor(description="header.frame_id"))
        d("fov_deg", 70.0, ParameterDescriptor(description="horizontal field of view for folder/video CameraInfo"))
        d("synthetic_frames", 16, ParameterDescriptor(description="synthetic frames rendered and cycled"))
        d("seed", 0, ParameterDescriptor(description="synthetic world seed"))
        d("night", False, ParameterDescriptor(description="synthetic frames at night"))
        d("encoding", "bgr8", ParameterDescriptor(description=f"image encoding: {', '.join(WRITABLE_ENCODINGS)}"))
        p = lambda name: self.get_parameter(name).value  # noqa: E731
        rate = float(p("rate"))
        if not rate > 0:
            raise SourceError(f"rate must be positive, got {rate}")
        self.frames = open_source(str(p("source")), int(p("width")), int(p("height")), fov_deg=float(p("fov_deg")),
                                  loop=bool(p("loop")), synthetic_frames=int(p("synthetic_frames")),
                                  seed=int(p("seed")), night=bool(p("night")))
        self.frame_id = str(p("frame_id"))
        self.encoding = str(p("encoding"))
        if self.encoding not in WRITABLE_ENCODINGS:
            raise SourceError(f"encoding must be one of {', '.join(WRITABLE_ENCODINGS)}, got {self.encoding!r}")
        try:  # the size the frames will have fits the encoding (YUV: even sides)
            check_size(encoding_info(self.encoding), self.frames.height, self.frames.width, self.encoding)
        except ImageConversionError as exc:
            raise SourceError(str(exc)) from None
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.create_publisher(Image, "image", qos)
        self.info_pub = self.create_publisher(CameraInfo, "camera_info", qos)
        self.info = camera_info_msg(self.frames.k, self.frames.width, self.frames.height, self.frame_id)
        self._messages: dict = {}  # frame key -> Image, so cycled frames are converted once
        self.published = 0
        self.done = False
        self.timer = self.create_timer(1.0 / rate, self._tick)
        self.get_logger().info(
            f"publishing {self.frames.width}x{self.frames.height} {self.encoding} from {p('source')} at {rate:g} Hz on "
            f"{self.image_pub.topic_name}")

    def _tick(self) -> None:
        item = self.frames.next()
        if item is None:
            self.get_logger().info(f"source exhausted after {self.published} frames")
            self.done = True
            self.timer.cancel()
            return
        key, frame = item
        msg = self._messages.get(key) if key is not None else None
        if msg is None:
            msg = image_msg(frame, self.frame_id, self.encoding)
            if key is not None:
                self._messages[key] = msg
        stamp = self.get_clock().now().to_msg()
        msg.header.stamp = stamp
        self.info.header.stamp = stamp
        self.image_pub.publish(msg)
        self.info_pub.publish(self.info)
        self.published += 1

    def destroy_node(self) -> None:
        self.frames.close()
        super().destroy_node()


def main(args: Optional[List[str]] = None) -> int:
    """`camera_source` console script / `ros2 run mtl_perception camera_source`."""
    rclpy.init(args=args)
    node: Optional[CameraSource] = None
    try:
        try:
            node = CameraSource()
        except SourceError as exc:
            print(f"camera_source: {exc}", file=sys.stderr)
            return 1
        while rclpy.ok() and not node.done:
            rclpy.spin_once(node, timeout_sec=0.5)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
