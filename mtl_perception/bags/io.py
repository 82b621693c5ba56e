"""rosbag2 reading and writing without ROS (through `rosbags`), for bag tools and replay.

- `open_bag(path)` opens a rosbag2 folder (sqlite3 `.db3` or `.mcap` storage, found from its
  `metadata.yaml`) or a single `.db3` / `.mcap` file, and deserialises with a typestore made of
  ROS 2 Humble's standard messages, vision_msgs 4.x (declared here, identical to
  `ros_interfaces/vision_msgs`) and whatever message definitions the bag itself carries.
- `BagWriter` writes a bag in either storage format; `image_msg`, `compressed_image_msg`,
  `camera_info_msg` and `detections_msg` build the rosbags message objects it serialises.
- `camera_image(msg, msgtype)` decodes a sensor_msgs/Image or CompressedImage into an RGB array;
  `detections_from_msg` reads a Detection2DArray back into boxes, scores and class indices.
- `find_camera_topic(topics)` picks the camera topic of a bag, or says why it cannot.

Every problem with a bag as a whole (missing, not a bag, truncated or corrupt, no camera topic)
is a `BagError` whose one-line message names the path and the problem. Problems with one message
are `ImageConversionError`s (or `MessageError`s) that callers count and skip.
"""
from __future__ import annotations

import functools
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

from mtl_perception.kinds import registry
from mtl_perception.messages.compressed import compressed_to_array
from mtl_perception.messages.image import ImageConversionError, array_to_image, to_color
from mtl_perception.messages.outputs import detections_from_msg
from mtl_perception.messages.types import (
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    DETECTIONS,
    IMAGE,
)

__all__ = [
    "BagError", "MessageError", "IMAGE", "COMPRESSED_IMAGE", "CAMERA_INFO", "DETECTIONS", "CAMERA_TYPES",
    "DEFAULT_TOPICS", "GROUND_TRUTH_TOPICS", "OUTPUT_TOPICS", "STORAGES", "TopicInfo", "BagReader", "BagWriter",
    "open_bag", "typestore", "vision_msgs_types", "storage_of", "make_header",
    "camera_image", "image_msg", "compressed_image_msg", "camera_info_msg", "detections_msg",
    "detections_from_msg", "find_camera_topic", "camera_info_topic_for",
]

CAMERA_TYPES = (IMAGE, COMPRESSED_IMAGE)
STORAGES = ("sqlite3", "mcap")

#: The topic convention of the sample bags (and the defaults of eval-bag / replay).
DEFAULT_TOPICS = {
    "image": "/camera/image_raw",
    "compressed": "/camera/image_raw/compressed",
    "camera_info": "/camera/camera_info",
}
GROUND_TRUTH_TOPICS = {
    "segmentation": "/ground_truth/segmentation",  # sensor_msgs/Image mono8 class ids, 255 unlabelled
    "depth": "/ground_truth/depth",  # sensor_msgs/Image 32FC1 metres, NaN invalid
    "detections": "/ground_truth/detections",  # vision_msgs/Detection2DArray, class_id = class name
}
#: Model outputs in a bag, relative to a namespace (the node's per-frame topics).
OUTPUT_TOPICS: Tuple[str, ...] = tuple(t.name for t in registry.topics(per_frame=True))

# vision_msgs 4.1 as in ros_interfaces/vision_msgs/msg/*.msg (comments dropped); the test suite
# checks they are the same and that their RIHS01 hashes are upstream's.
VISION_MSGS_DEFINITIONS = {
    "BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "Detection2D": ("std_msgs/Header header\nObjectHypothesisWithPose[] results\nBoundingBox2D bbox\n"
                    "string id\n"),
    "Detection2DArray": "std_msgs/Header header\nDetection2D[] detections\n",
    "LabelInfo": "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n",
    "ObjectHypothesis": "string class_id\nfloat64 score\n",
    "ObjectHypothesisWithPose": "ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n",
    "Point2D": "float64 x\nfloat64 y\n",
    "Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "VisionClass": "uint16 class_id\nstring class_name\n",
}


class BagError(ValueError):
    """A bag cannot be used; str() is one line naming the path and the problem."""


class MessageError(ValueError):
    """One message cannot be used (bad CDR, malformed fields); callers skip and count it."""


# ------------------------------------------------------------------------------ type system
def vision_msgs_types() -> Dict[str, Any]:
    """rosbags field definitions of the vision_msgs 4.x messages."""
    from rosbags.typesys import get_types_from_msg

    types: Dict[str, Any] = {}
    for name, text in VISION_MSGS_DEFINITIONS.items():
        types.update(get_types_from_msg(text, f"vision_msgs/msg/{name}"))
    return types


@functools.lru_cache(maxsize=1)
def _base_fielddefs() -> Dict[str, Any]:
    from rosbags.typesys import Stores, get_typestore

    defs = dict(get_typestore(Stores.ROS2_HUMBLE).fielddefs)
    for name, value in vision_msgs_types().items():
        defs.setdefault(name, value)
    return defs


def typestore(extra: Optional[Mapping[str, Any]] = None):
    """A rosbags Typestore: Humble's standard messages, vision_msgs 4.x, then `extra` field
    definitions (e.g. a bag's own), which replace same-named ones."""
    from rosbags.typesys import Stores, get_typestore

    defs = dict(_base_fielddefs())
    if extra:
        defs.update(extra)
    store = get_typestore(Stores.EMPTY)
    store.register(defs)
    return store


@functools.lru_cache(maxsize=1)
def _default_store():
    return typestore()


def _bag_definitions(connections: Sequence[Any]) -> Dict[str, Any]:
    """Field definitions that the bag carries (mcap schemas, sqlite3 message_definitions)."""
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.typesys import get_types_from_idl, get_types_from_msg

    types: Dict[str, Any] = {}
    for conn in connections:
        msgdef = getattr(conn, "msgdef", None)
        if msgdef is None or msgdef.format == MessageDefinitionFormat.NONE or not msgdef.data:
            continue
        try:
            if msgdef.format == MessageDefinitionFormat.MSG:
                types.update(get_types_from_msg(msgdef.data, conn.msgtype))
            else:
                sep = "=" * 80 + "\n"
                parts = msgdef.data.split(sep)[1:] if msgdef.data.startswith(f"{sep}IDL: ") else [msgdef.data]
                for part in parts:
                    types.update(get_types_from_idl(part.split("\n", 1)[1] if part.startswith("IDL: ") else part))
        except Exception:  # an unparsable definition: fall back to the built-in one, if any
            continue
    return types


# ---------------------------------------------------------------------------------- reading
def storage_of(path: os.PathLike | str) -> str:
    """'sqlite3' or 'mcap' for a bag folder (from its metadata.yaml) or a storage file."""
    p = Path(path)
    if p.is_file():
        return {".db3": "sqlite3", ".mcap": "mcap"}.get(p.suffix, "")
    meta = p / "metadata.yaml"
    if meta.is_file():
        for line in meta.read_text(errors="replace").splitlines():
            if line.strip().startswith("storage_identifier:"):
                return line.split(":", 1)[1].strip().strip("'\"")
    files = sorted(p.glob("*.mcap")) + sorted(p.glob("*.db3"))
    return storage_of(files[0]) if files else ""


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class BagReader:
    """An open rosbag2 bag (use `open_bag`); a context manager."""

    def __init__(self, path: os.PathLike | str):
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        p = self.path
        if not p.exists():
            raise BagError(f"{p}: no such bag (neither a rosbag2 folder nor a .db3/.mcap file)")
        if p.is_dir() and not (p / "metadata.yaml").is_file():
            files = sorted(p.glob("*.db3")) + sorted(p.glob("*.mcap"))
            hint = (f"; to read the storage file without it, pass {files[0]}" if len(files) == 1
                    else "" if not files else f"; storage files: {', '.join(f.name for f in files)}")
            raise BagError(f"{p}: not a rosbag2 bag: metadata.yaml is missing{hint}")
        if p.is_file() and p.suffix not in (".db3", ".mcap"):
            raise BagError(f"{p}: not a rosbag2 bag (expected a folder with metadata.yaml, a .db3 or an .mcap file)")
        self.storage = storage_of(p)
        try:
            self._reader = Reader(p)
            self._reader.open()
        except BagError:
            raise
        except Exception as exc:
            what = "bag is truncated or corrupt" if _looks_corrupt(exc) else "cannot open bag"
            raise BagError(f"{p}: {what} ({self.storage or 'unknown storage'}): {_describe_error(exc)}") from None
        self._open = True
        try:
            connections = list(self._reader.connections)
            self.store = typestore(_bag_definitions(connections))
        except Exception as exc:
            self.close()
            raise BagError(f"{p}: cannot read the bag's message definitions: {_one_line(exc)}") from None
        self._connections = connections
        counts: Dict[str, List[Any]] = {}
        for conn in connections:
            counts.setdefault(conn.topic, []).append(conn)
        self.topics: Dict[str, TopicInfo] = {
            name: TopicInfo(name, conns[0].msgtype, sum(int(c.msgcount) for c in conns))
            for name, conns in sorted(counts.items())
        }

    # context manager
    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_open", False):
            self._open = False
            try:
                self._reader.close()
            except Exception:
                pass

    @property
    def start_ns(self) -> int:
        return int(self._reader.start_time)

    @property
    def duration_ns(self) -> int:
        return int(self._reader.duration)

    def topic_summary(self) -> str:
        return ", ".join(f"{t.name} ({t.msgtype})" for t in self.topics.values()) or "none"

    def messages(self, topics: Sequence[str]) -> Iterator[Tuple[str, str, int, bytes]]:
        """(topic, msgtype, log time ns, serialised bytes) of `topics`, in log-time order. A storage
        that breaks while being read (truncated or corrupt) raises BagError."""
        wanted = [c for c in self._connections if c.topic in set(topics)]
        if not wanted:
            return
        try:
            for conn, timestamp, raw in self._reader.messages(connections=wanted):
                yield conn.topic, conn.msgtype, int(timestamp), raw
        except BagError:
            raise
        except GeneratorExit:
            raise
        except Exception as exc:
            raise BagError(f"{self.path}: bag is truncated or corrupt ({self.storage}): "
                           f"{_describe_error(exc)}") from None

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        """A rosbags message object; MessageError when the bytes do not decode."""
        try:
            return self.store.deserialize_cdr(raw, msgtype)
        except Exception as exc:
            raise MessageError(f"cannot deserialise {msgtype}: {_one_line(exc)}") from None


#: Errors at open that are not damage to the storage file (everything else from the storage is).
_NOT_CORRUPT_HINTS = ("not supported", "unsupported", "missing", "permission", "does not exist", "version",
                      "unrecognized")


def _looks_corrupt(exc: BaseException) -> bool:
    text = str(exc).lower()
    if isinstance(exc, (PermissionError, FileNotFoundError)):
        return False
    if isinstance(exc, sqlite3.DatabaseError) or "missing tables" in text or "malformed" in text:
        return True
    return not any(h in text for h in _NOT_CORRUPT_HINTS)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, sqlite3.DatabaseError):
        return f"sqlite3: {_one_line(exc)}"
    return _one_line(exc)


def open_bag(path: os.PathLike | str) -> BagReader:
    """Opens a rosbag2 folder or a single .db3/.mcap file for reading (BagError if it cannot)."""
    return BagReader(path)


# ---------------------------------------------------------------------------------- writing
class BagWriter:
    """Writes a rosbag2 bag (rosbag2 format version 8) in 'sqlite3' or 'mcap' storage; a context
    manager. Topics are added on first write; messages are rosbags objects or serialised bytes."""

    def __init__(self, path: os.PathLike | str, storage: str = "sqlite3", store: Any = None):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise BagError(f"{path}: unknown storage {storage!r} (use {' or '.join(STORAGES)})")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path}: already exists; bags are never overwritten")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.storage = storage
        self.store = store if store is not None else _default_store()
        self._writer = Writer(self.path, version=8, storage_plugin=plugin)
        self._connections: Dict[str, Any] = {}
        self._writer.open()

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._writer.close()  # keep what was written readable

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def add_topic(self, topic: str, msgtype: str) -> Any:
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.store)
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise BagError(f"{self.path}: topic {topic} written with {conn.msgtype} and {msgtype}")
        return conn

    def write(self, topic: str, timestamp_ns: int, msg: Any, msgtype: Optional[str] = None) -> None:
        """Writes a rosbags message (its type from `__msgtype__`) or serialised CDR bytes (then
        `msgtype` is needed) with log time `timestamp_ns`."""
        if isinstance(msg, (bytes, bytearray, memoryview)):
            if msgtype is None:
                raise ValueError("serialised messages need their msgtype")
            data = bytes(msg)
        else:
            msgtype = msgtype or msg.__msgtype__
            data = self.store.serialize_cdr(msg, msgtype)
        self._writer.write(self.add_topic(topic, msgtype), int(timestamp_ns), data)


# ------------------------------------------------------------------------- message helpers
def make_header(stamp: int, frame_id: str = "", store: Any = None) -> Any:
    """A rosbags std_msgs/Header with the stamp (ns) and frame id."""
    store = store if store is not None else _default_store()
    Time = store.types["builtin_interfaces/msg/Time"]
    Header = store.types["std_msgs/msg/Header"]
    return Header(stamp=Time(sec=int(stamp // 1_000_000_000), nanosec=int(stamp % 1_000_000_000)),
                  frame_id=str(frame_id))


def image_msg(array: np.ndarray, encoding: str, header: Any, store: Any = None) -> Any:
    """A rosbags sensor_msgs/Image holding `array` in `encoding`."""
    store = store if store is not None else _default_store()
    return array_to_image(array, encoding, header, msg_cls=store.types[IMAGE])


def compressed_image_msg(image: np.ndarray, fmt: str, header: Any, order: str = "rgb", store: Any = None,
                         quality: int = 90) -> Any:
    """A rosbags sensor_msgs/CompressedImage: an HxWx3 image (`order`) as 'jpeg' or 'png'."""
    store = store if store is not None else _default_store()
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"compressed format must be jpeg or png, not {fmt!r}")
    bgr = image[..., ::-1] if order == "rgb" else image
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, data = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", np.ascontiguousarray(bgr), params)
    if not ok:
        raise ValueError(f"could not encode a {image.shape} image as {fmt}")
    return store.types[COMPRESSED_IMAGE](header=header, format=f"bgr8; {fmt} compressed bgr8",
                                         data=np.asarray(data, np.uint8).reshape(-1))


def camera_info_msg(header: Any, width: int, height: int, k: np.ndarray, store: Any = None) -> Any:
    """A rosbags sensor_msgs/CameraInfo of a distortion-free pinhole camera with the 3x3 matrix
    `k` (OpenCV / ROS convention), R = I, P = [K | 0]."""
    store = store if store is not None else _default_store()
    k = np.asarray(k, np.float64).reshape(3, 3)
    p = np.zeros((3, 4), np.float64)
    p[:, :3] = k
    roi = store.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                          do_rectify=False)
    return store.types[CAMERA_INFO](
        header=header, height=int(height), width=int(width), distortion_model="plumb_bob",
        d=np.zeros(5, np.float64), k=k.reshape(-1), r=np.eye(3).reshape(-1), p=p.reshape(-1),
        binning_x=0, binning_y=0, roi=roi)


def detections_msg(header: Any, boxes: np.ndarray, scores: Sequence[float], class_ids: Sequence[str],
                   store: Any = None) -> Any:
    """A rosbags vision_msgs/Detection2DArray (4.x): xyxy pixel boxes, one hypothesis each whose
    class_id is the given string (a class name)."""
    store = store if store is not None else _default_store()
    t = store.types
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    pose = t["geometry_msgs/msg/PoseWithCovariance"](
        pose=t["geometry_msgs/msg/Pose"](position=t["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
                                         orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
        covariance=np.zeros(36, np.float64))
    detections = []
    for (x1, y1, x2, y2), score, cls in zip(boxes.tolist(), list(scores), list(class_ids)):
        bbox = t["vision_msgs/msg/BoundingBox2D"](
            center=t["vision_msgs/msg/Pose2D"](position=t["vision_msgs/msg/Point2D"](
                x=(x1 + x2) * 0.5, y=(y1 + y2) * 0.5), theta=0.0),
            size_x=x2 - x1, size_y=y2 - y1)
        hyp = t["vision_msgs/msg/ObjectHypothesisWithPose"](
            hypothesis=t["vision_msgs/msg/ObjectHypothesis"](class_id=str(cls), score=float(score)), pose=pose)
        detections.append(t["vision_msgs/msg/Detection2D"](header=header, results=[hyp], bbox=bbox, id=""))
    return t[DETECTIONS](header=header, detections=detections)


def camera_image(msg: Any, msgtype: str, order: str = "rgb") -> np.ndarray:
    """HxWx3 uint8 image (`order`) of a sensor_msgs/Image or CompressedImage; raises
    ImageConversionError naming the problem (unsupported encoding, wrong data length, undecodable
    compressed data)."""
    if msgtype == COMPRESSED_IMAGE:
        decoded, encoding = compressed_to_array(msg)
        return to_color(decoded, encoding, order)
    if msgtype != IMAGE:
        raise ImageConversionError(f"{msgtype} is not a camera image type")
    try:
        return to_color(msg, order=order)
    except ImageConversionError:
        raise
    except Exception as exc:  # malformed fields
        raise ImageConversionError(f"malformed image: {_one_line(exc)}") from None


def find_camera_topic(topics: Mapping[str, TopicInfo], requested: Optional[str] = None,
                      exclude: Sequence[str] = (), path: Any = "bag") -> TopicInfo:
    """The camera topic: `requested` if given (it must be an image topic), otherwise the only
    sensor_msgs/Image or CompressedImage topic that is not ground truth (`exclude` and anything
    under /ground_truth) or a perception node's output (.../segmentation, .../depth, ...). With
    several candidates, a raw Image beats its own /compressed twin and then `/camera/image_raw`-like
    names are preferred; a remaining tie is an error listing them."""
    summary = ", ".join(f"{t.name} ({t.msgtype})" for t in topics.values()) or "none"
    if requested:
        info = topics.get(requested)
        if info is None:
            raise BagError(f"{path}: no topic {requested} in the bag (topics: {summary})")
        if info.msgtype not in CAMERA_TYPES:
            raise BagError(f"{path}: topic {requested} is {info.msgtype}, not sensor_msgs/Image or CompressedImage")
        return info
    excluded = set(exclude)
    outputs = tuple(f"/{rel}" for rel in OUTPUT_TOPICS)  # a perception node's outputs are not cameras
    candidates = [t for t in topics.values() if t.msgtype in CAMERA_TYPES and t.name not in excluded
                  and not t.name.startswith("/ground_truth/") and not t.name.endswith(outputs)]
    if not candidates:
        raise BagError(f"{path}: no camera topic (sensor_msgs/Image or CompressedImage) in the bag "
                       f"(topics: {summary})")
    if len(candidates) > 1:  # drop compressed twins of raw topics
        raw_names = {t.name for t in candidates if t.msgtype == IMAGE}
        candidates = [t for t in candidates if not (t.msgtype == COMPRESSED_IMAGE
                                                    and t.name.rsplit("/", 1)[0] in raw_names)]
    if len(candidates) > 1:
        preferred = [t for t in candidates if t.name.rstrip("/").split("/")[-1] in ("image_raw", "image_rect_color",
                                                                                    "image_color", "image")
                     or t.name.endswith("/image_raw/compressed")]
        if len(preferred) == 1:
            candidates = preferred
    if len(candidates) > 1:
        raise BagError(f"{path}: several camera topics ({', '.join(t.name for t in candidates)}); "
                       "choose one with --image-topic")
    return candidates[0]


def camera_info_topic_for(image_topic: str) -> str:
    """The CameraInfo topic beside an image topic: /ns/image_raw[/compressed] -> /ns/camera_info."""
    name = image_topic[: -len("/compressed")] if image_topic.endswith("/compressed") else image_topic
    parent = name.rsplit("/", 1)[0]
    return f"{parent}/camera_info"

