"""Procedural driving world: camera model, scene description and scene sampling.

Coordinate frames
-----------------
World frame (right-handed, metres): ``X`` to the right of the ego vehicle, ``Y`` forward along the
ego heading, ``Z`` up. The ground is the plane ``Z = 0``. The camera sits at
``(0, 0, mount_height)`` and looks along ``+Y``, pitched down by ``pitch_deg`` (positive = nose
down); it has no yaw and no roll (the road itself is given a small random heading and curvature).

Camera frame (OpenCV / REP 103 optical frame): ``x`` right, ``y`` down, ``z`` forward along the
optical axis. With pitch ``p`` the camera axes expressed in the world frame are::

    x_c = ( 1,       0,       0     )
    y_c = ( 0, -sin p,  -cos p      )
    z_c = ( 0,  cos p,  -sin p      )

(the columns of :meth:`Camera.rotation`). Depth everywhere in this package is the *planar* depth
``z_c`` (distance along the optical axis, as in KITTI depth maps and REP 118 depth images), not the
length of the ray.

Pixel convention
----------------
Intrinsics use the *pixel-corner* origin: pixel ``(col, row)`` covers ``[col, col+1) x [row,
row+1)`` and the renderer samples the ray through its centre ``(col + 0.5, row + 0.5)``, so a 3-D
point in the camera frame projects to ``u = fx * x / z + cx``. In this convention resizing an image
by ``s`` scales the intrinsics exactly as ``fx*s, fy*s, cx*s, cy*s`` (the formula image_proc's
resize applies), and 2-D boxes ``[x1, y1, x2, y2]`` with exclusive ``x2 = last column + 1`` scale
by ``s`` too. OpenCV and ROS ``CameraInfo`` put the centre of the first pixel at 0;
:meth:`Camera.K_opencv` returns that matrix (``cx - 0.5, cy - 0.5``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

SEMANTIC_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "lane_marking",
    "building",
    "vegetation",
    "sky",
    "pole",
    "traffic_sign",
    "vehicle",
    "pedestrian",
)
"""Semantic class names; a class id is the index into this tuple."""

DETECTION_CLASSES: tuple[str, ...] = ("vehicle", "pedestrian", "traffic_sign")
"""Object categories with instances and 2-D boxes; a label is the index into this tuple."""

UNLABELLED = 255
"""Semantic id of pixels with no label (never produced by the renderer; user data may use it)."""

MAX_DEPTH = 80.0
"""Depth beyond this range (metres) and the sky are invalid (NaN)."""

SEMANTIC_COLORS: np.ndarray = np.array(
    [
        (128, 64, 128),   # road
        (244, 35, 232),   # sidewalk
        (255, 255, 255),  # lane_marking
        (70, 70, 70),     # building
        (107, 142, 35),   # vegetation
        (70, 130, 180),   # sky
        (153, 153, 153),  # pole
        (220, 220, 0),    # traffic_sign
        (0, 0, 142),      # vehicle
        (220, 20, 60),    # pedestrian
    ],
    dtype=np.uint8,
)
"""RGB colour per semantic class (Cityscapes-like), for visualisation."""

ROAD, SIDEWALK, LANE_MARKING, BUILDING, VEGETATION, SKY, POLE, TRAFFIC_SIGN, VEHICLE, PEDESTRIAN = (
    range(len(SEMANTIC_CLASSES))
)
DET_VEHICLE, DET_PEDESTRIAN, DET_TRAFFIC_SIGN = range(len(DETECTION_CLASSES))

# Appearance keys of the primitives (interpreted by render.py).
MATERIALS: tuple[str, ...] = (
    "facade", "wall", "roof", "paint", "cabin", "tyre", "cloth", "skin", "metal", "sign", "bark",
    "lamp", "foliage",
)


# --------------------------------------------------------------------------------------- camera
@dataclass(frozen=True)
class Camera:
    """Pinhole camera (no distortion) mounted on the ego vehicle; see the module docstring for the
    frames and the pixel-corner convention of the intrinsics."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    mount_height: float = 1.5
    pitch_deg: float = 0.0

    @classmethod
    def default(cls, width: int = 384, height: int = 256) -> "Camera":
        """A camera with a 70 degree horizontal field of view, square pixels, centred principal
        point, 1.5 m above the ground, level."""
        f = (width / 2.0) / math.tan(math.radians(35.0))
        return cls(int(width), int(height), f, f, width / 2.0, height / 2.0)

    def scaled(self, factor: float) -> "Camera":
        """The camera of this image resized by ``factor`` (e.g. 0.5 for the network input).

        The new size is ``round(width * factor) x round(height * factor)`` and the intrinsics are
        multiplied by the per-axis ratios of the new to the old size (``fx*sx, cx*sx, fy*sy,
        cy*sy``), which is exact in the pixel-corner convention used here (and is image_proc's
        resize formula). Pose (mount height, pitch) is unchanged.
        """
        if not factor > 0:
            raise ValueError(f"scale factor must be positive, got {factor}")
        w = max(1, int(round(self.width * factor)))
        h = max(1, int(round(self.height * factor)))
        sx, sy = w / self.width, h / self.height
        return dataclasses.replace(
            self, width=w, height=h, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy
        )

    def K(self) -> np.ndarray:
        """3x3 intrinsic matrix in the pixel-corner convention (float64)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def K_opencv(self) -> np.ndarray:
        """3x3 intrinsic matrix in the OpenCV / ROS CameraInfo convention (first pixel centre at 0)."""
        k = self.K()
        k[0, 2] -= 0.5
        k[1, 2] -= 0.5
        return k

    def rotation(self) -> np.ndarray:
        """World-from-camera rotation: its columns are the camera axes in the world frame."""
        p = math.radians(self.pitch_deg)
        s, c = math.sin(p), math.cos(p)
        return np.array([[1.0, 0.0, 0.0], [0.0, -s, c], [0.0, -c, -s]])

    @property
    def position(self) -> np.ndarray:
        """Camera centre in the world frame."""
        return np.array([0.0, 0.0, self.mount_height])

    def ray_directions(self) -> np.ndarray:
        """(H, W, 3) float32 world-frame ray directions through the pixel centres, scaled so that
        the camera-frame z component is 1: a hit at ray parameter ``t`` has planar depth ``t``."""
        return _ray_directions(self)

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world points -> (..., 3) camera-frame points."""
        return (np.asarray(points, np.float64) - self.position) @ self.rotation()

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world points -> (..., 3) array of (u, v, depth), pixel-corner convention."""
        pc = self.world_to_camera(points)
        z = pc[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.fx * pc[..., 0] / z + self.cx
            v = self.fy * pc[..., 1] / z + self.cy
        return np.stack([u, v, z], axis=-1)


def ray_components(camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Separable ray directions (the camera has no yaw or roll): the world direction of pixel
    (row, col) is ``(dx[col], dy[row], dz[row])``, scaled so that its camera-frame z is 1.
    Returns float32 arrays of lengths W, H, H."""
    p = math.radians(camera.pitch_deg)
    s, c = math.sin(p), math.cos(p)
    x = (np.arange(camera.width, dtype=np.float64) + 0.5 - camera.cx) / camera.fx
    y = (np.arange(camera.height, dtype=np.float64) + 0.5 - camera.cy) / camera.fy
    return x.astype(np.float32), (c - s * y).astype(np.float32), (-c * y - s).astype(np.float32)


def _ray_directions(camera: Camera) -> np.ndarray:
    dx, dy, dz = ray_components(camera)
    rays = np.empty((camera.height, camera.width, 3), np.float32)
    rays[..., 0] = dx[None, :]
    rays[..., 1] = dy[:, None]
    rays[..., 2] = dz[:, None]
    return rays


# ------------------------------------------------------------------------------------ primitives
@dataclass(frozen=True)
class Box:
    """An oriented box standing in the world: ``size = (width, length, height)`` along its local
    ``x, y, z`` axes; ``yaw`` (radians) rotates it about the world ``Z`` axis, counter-clockwise
    seen from above, yaw 0 = length along world ``+Y``. Local ``+y`` is the object's front."""

    center: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float
    semantic: int
    instance: int = 0
    material: str = "metal"
    color: tuple[float, float, float] = (0.3, 0.3, 0.3)
    params: tuple[float, ...] = ()

    def corners(self) -> np.ndarray:
        """(8, 3) world coordinates of the corners."""
        h = np.array(self.size, np.float64) / 2.0
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
        return (signs * h) @ yaw_matrix(self.yaw).T + np.array(self.center)

    def to_local(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world points -> box-local coordinates (origin at the centre)."""
        return (np.asarray(points, np.float64) - np.array(self.center)) @ yaw_matrix(self.yaw)

    def surface_distance(self, points: np.ndarray) -> np.ndarray:
        """Unsigned distance from (..., 3) world points to the box surface."""
        q = np.abs(self.to_local(points)) - np.array(self.size) / 2.0
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        inside = np.minimum(q.max(axis=-1), 0.0)
        return np.abs(outside + inside)


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid (tree crowns)."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    semantic: int
    instance: int = 0
    material: str = "foliage"
    color: tuple[float, float, float] = (0.05, 0.12, 0.03)
    params: tuple[float, ...] = ()

    def corners(self) -> np.ndarray:
        """Corners of the bounding box, (8, 3)."""
        r = np.array(self.radii, np.float64)
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
        return signs * r + np.array(self.center)


def yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation about world ``Z`` by ``yaw`` (world-from-local)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# ------------------------------------------------------------------------------------------ road
@dataclass(frozen=True)
class Road:
    """The ground layout. The road centre line is ``X = offset + slope*Y + curvature*Y**2/2``; the
    signed lateral coordinate of a ground point is ``s = X - centre(Y)`` (positive = right).
    Right-hand traffic: ``lanes_right`` lanes in the ego direction right of the centre line,
    ``lanes_left`` oncoming lanes left of it. Beyond each road edge: a curb strip and a sidewalk
    (class sidewalk), then a verge (sidewalk or grass) up to the building line. A cross street
    ``(y0, width)`` replaces everything beyond the road edges by road for ``y0 <= Y < y0+width``."""

    offset: float = -1.75
    slope: float = 0.0
    curvature: float = 0.0
    lane_width: float = 3.5
    lanes_right: int = 1
    lanes_left: int = 1
    sidewalk_right: float = 3.0
    sidewalk_left: float = 3.0
    verge_right_grass: bool = False
    verge_left_grass: bool = False
    centre_line: str = "dashed"          # "dashed", "solid", "double" or "none"
    yellow_centre: bool = False
    dash_length: float = 3.0
    dash_period: float = 9.0
    dash_phase: float = 0.0
    crossings: tuple[tuple[float, float], ...] = ()
    crosswalks: tuple[float, ...] = ()

    @property
    def right_edge(self) -> float:
        return self.lanes_right * self.lane_width

    @property
    def left_edge(self) -> float:
        return -self.lanes_left * self.lane_width

    def centre(self, y):
        return self.offset + self.slope * y + 0.5 * self.curvature * y * y

    def heading(self, y: float) -> float:
        """Yaw (about Z) of the road direction at ``Y = y``."""
        return -math.atan(self.slope + self.curvature * y)

    def point(self, s: float, y: float) -> tuple[float, float]:
        """World (X, Y) of lateral offset ``s`` at longitudinal ``y``."""
        return self.centre(y) + s, y


# Ground material codes (render.py); semantics are derived from the same geometry.
GROUND_ASPHALT, GROUND_MARKING, GROUND_YELLOW, GROUND_CURB, GROUND_PAVEMENT, GROUND_GRASS = range(6)


def ground_layout(road: Road, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Semantic class ids and ground material codes (both uint8) of ground points ``(x, y)``."""
    s = x - road.centre(y)
    rl, rr = road.left_edge, road.right_edge
    on_road = (s >= rl) & (s < rr)
    in_cross = np.zeros(s.shape, bool)
    for y0, w in road.crossings:
        in_cross |= (y >= y0) & (y < y0 + w)
    sem = np.full(s.shape, SIDEWALK, np.uint8)
    mat = np.full(s.shape, GROUND_PAVEMENT, np.uint8)
    # curb strips
    curb = ((s >= rr) & (s < rr + 0.25)) | ((s < rl) & (s >= rl - 0.25))
    mat[curb] = GROUND_CURB
    # verges beyond the sidewalks
    beyond_r = s >= rr + road.sidewalk_right
    beyond_l = s < rl - road.sidewalk_left
    far = np.abs(s) > 45.0
    if road.verge_right_grass:
        g = beyond_r
    else:
        g = beyond_r & far
    if road.verge_left_grass:
        g = g | beyond_l
    else:
        g = g | (beyond_l & far)
    sem[g] = VEGETATION
    mat[g] = GROUND_GRASS
    road_mask = on_road | (in_cross & ~far)
    sem[road_mask] = ROAD
    mat[road_mask] = GROUND_ASPHALT

    # lane markings on the main road, not inside intersections
    lm = on_road & ~in_cross
    mark = np.zeros(s.shape, bool)
    yellow = np.zeros(s.shape, bool)
    dashed = np.mod(y - road.dash_phase, road.dash_period) < road.dash_length
    hw = 0.075
    if road.lanes_left > 0 and road.centre_line != "none":
        if road.centre_line == "double":
            cl = (np.abs(s - 0.15) < hw) | (np.abs(s + 0.15) < hw)
        elif road.centre_line == "solid":
            cl = np.abs(s) < hw
        else:
            cl = (np.abs(s) < hw) & dashed
        if road.yellow_centre:
            yellow |= cl
        else:
            mark |= cl
    for k in list(range(1, road.lanes_right)) + [-k for k in range(1, road.lanes_left)]:
        mark |= (np.abs(s - k * road.lane_width) < hw) & dashed
    mark |= np.abs(s - (rr - 0.3)) < hw
    mark |= np.abs(s - (rl + 0.3)) < hw
    for y0 in road.crosswalks:
        zebra = (y >= y0) & (y < y0 + 3.0) & (np.mod(s, 1.2) < 0.6) & (s > rl + 0.4) & (s < rr - 0.4)
        stop = (y >= y0 - 1.4) & (y < y0 - 1.0) & (s > 0.1) & (s < rr - 0.3)
        mark |= zebra | stop
    # centre line of a cross street
    for y0, w in road.crossings:
        cm = (np.abs(y - (y0 + w / 2)) < hw) & ~on_road & ~far & (np.mod(s, 9.0) < 3.0)
        mark |= cm
    mark &= lm | (~on_road & in_cross & ~far)
    yellow &= lm
    sem[mark | yellow] = LANE_MARKING
    mat[mark] = GROUND_MARKING
    mat[yellow] = GROUND_YELLOW
    return sem, mat


# ----------------------------------------------------------------------------------------- scene
@dataclass
class Instance:
    """An object instance: id (as in the instance map and the primitives) and detection label."""

    id: int
    label: int


@dataclass
class Scene:
    """Everything the renderer needs to know about the geometry of one frame."""

    camera: Camera
    road: Road = field(default_factory=Road)
    boxes: list[Box] = field(default_factory=list)
    ellipsoids: list[Ellipsoid] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    lamps: list[tuple[float, float, float]] = field(default_factory=list)
    """Positions of street-lamp heads (lit at night)."""

    @classmethod
    def empty(cls, camera: Camera | None = None, road: Road | None = None) -> "Scene":
        """A straight road and nothing else (for tests and constructed scenes)."""
        return cls(camera=camera or Camera.default(), road=road or Road())

    def next_instance_id(self) -> int:
        return 1 + max((i.id for i in self.instances), default=0)

    def add_vehicle(self, x: float, y: float, yaw: float = 0.0, color=(0.4, 0.02, 0.02),
                    kind: str = "car", dims: tuple[float, float, float] | None = None) -> int:
        """Adds a vehicle standing at ground point ``(x, y)``; returns its instance id."""
        iid = self.next_instance_id()
        self.boxes.extend(vehicle_boxes(x, y, yaw, iid, color, kind, dims))
        self.instances.append(Instance(iid, DET_VEHICLE))
        return iid

    def add_pedestrian(self, x: float, y: float, yaw: float = 0.0, height: float = 1.75,
                       shirt=(0.1, 0.1, 0.3), trousers=(0.05, 0.05, 0.06), skin=(0.45, 0.3, 0.22),
                       stride: float = 0.0) -> int:
        iid = self.next_instance_id()
        self.boxes.extend(pedestrian_boxes(x, y, yaw, iid, height, shirt, trousers, skin, stride))
        self.instances.append(Instance(iid, DET_PEDESTRIAN))
        return iid

    def add_sign(self, x: float, y: float, yaw: float = 0.0, height: float = 2.6,
                 plate: tuple[float, float] = (0.7, 0.7), kind: int = 0) -> int:
        """A pole with a sign plate facing ``-Y`` (towards the camera when ``yaw`` is 0)."""
        iid = self.next_instance_id()
        self.boxes.extend(sign_boxes(x, y, yaw, iid, height, plate, kind))
        self.instances.append(Instance(iid, DET_TRAFFIC_SIGN))
        return iid


def _box_at(x, y, z0, size, yaw, sem, inst, mat, color, params=(), local=(0.0, 0.0)) -> Box:
    """A box whose bottom is at height ``z0`` and whose centre is offset by ``local`` (object
    frame) from ``(x, y)``."""
    c, s = math.cos(yaw), math.sin(yaw)
    lx, ly = local
    cx = x + c * lx - s * ly
    cy = y + s * lx + c * ly
    return Box((float(cx), float(cy), float(z0 + size[2] / 2)), tuple(float(v) for v in size), float(yaw),
               sem, inst, mat, tuple(float(v) for v in color), tuple(float(p) for p in params))


def vehicle_boxes(x, y, yaw, iid, color, kind="car", dims=None) -> list[Box]:
    """Boxes of one vehicle: body, cabin (cars and vans), four wheels. ``kind`` is car, van, bus
    or truck; ``dims = (width, length, height)`` overrides the default size."""
    defaults = {"car": (1.8, 4.4, 1.45), "van": (1.95, 4.9, 1.95), "bus": (2.5, 11.0, 3.1),
                "truck": (2.45, 8.0, 3.3)}
    w, length, h = dims or defaults[kind]
    clearance = 0.28 if kind in ("car", "van") else 0.45
    boxes: list[Box] = []
    if kind == "car":
        body_h = 0.42 * h
        boxes.append(_box_at(x, y, clearance, (w, length, body_h), yaw, VEHICLE, iid, "paint", color, (0.0,)))
        cab_l = 0.5 * length
        boxes.append(_box_at(x, y, clearance + body_h, (w - 0.12, cab_l, h - clearance - body_h), yaw,
                             VEHICLE, iid, "cabin", color, (), local=(0.0, -0.08 * length)))
    elif kind == "van":
        body_h = 0.45 * h
        boxes.append(_box_at(x, y, clearance, (w, length, body_h), yaw, VEHICLE, iid, "paint", color, (0.0,)))
        boxes.append(_box_at(x, y, clearance + body_h, (w - 0.06, 0.78 * length, h - clearance - body_h), yaw,
                             VEHICLE, iid, "cabin", color, (), local=(0.0, -0.1 * length)))
    elif kind == "bus":
        boxes.append(_box_at(x, y, clearance, (w, length, h - clearance), yaw, VEHICLE, iid, "paint", color, (1.0,)))
    else:  # truck: cab in front, cargo box behind
        cab_l = 2.2
        boxes.append(_box_at(x, y, clearance, (w, cab_l, 2.6 - clearance), yaw, VEHICLE, iid, "paint", color,
                             (2.0,), local=(0.0, length / 2 - cab_l / 2)))
        boxes.append(_box_at(x, y, clearance + 0.3, (w + 0.05, length - cab_l - 0.2, h - clearance - 0.3), yaw,
                             VEHICLE, iid, "paint", (0.6, 0.6, 0.58), (3.0,), local=(0.0, -cab_l / 2 - 0.1)))
    r = 0.33 if kind in ("car", "van") else 0.5
    for sx in (-1, 1):
        for sy in (-1, 1):
            wy = sy * (length / 2 - (0.8 if kind in ("car", "van") else 1.4))
            boxes.append(_box_at(x, y, 0.0, (0.24, 2 * r, 2 * r), yaw, VEHICLE, iid, "tyre", (0.02, 0.02, 0.02),
                                 local=(sx * (w / 2 - 0.13), wy)))
    return boxes


def pedestrian_boxes(x, y, yaw, iid, height, shirt, trousers, skin, stride=0.0) -> list[Box]:
    """Legs, torso, arms and head of a pedestrian of the given height (local +y = facing)."""
    k = height / 1.75
    leg_h, torso_h, head_h = 0.82 * k, 0.62 * k, 0.25 * k
    boxes = []
    for side in (-1, 1):
        boxes.append(_box_at(x, y, 0.0, (0.15 * k, 0.2 * k, leg_h), yaw, PEDESTRIAN, iid, "cloth", trousers,
                             local=(side * 0.1 * k, side * stride)))
    boxes.append(_box_at(x, y, leg_h, (0.44 * k, 0.25 * k, torso_h), yaw, PEDESTRIAN, iid, "cloth", shirt))
    for side in (-1, 1):
        boxes.append(_box_at(x, y, leg_h + 0.02 * k, (0.1 * k, 0.13 * k, torso_h - 0.04 * k), yaw, PEDESTRIAN,
                             iid, "cloth", shirt, local=(side * 0.28 * k, -side * stride * 0.6)))
    boxes.append(_box_at(x, y, leg_h + torso_h + 0.04 * k, (0.2 * k, 0.23 * k, head_h), yaw, PEDESTRIAN, iid,
                         "skin", skin))
    # neck (keeps the head attached)
    boxes.append(_box_at(x, y, leg_h + torso_h, (0.1 * k, 0.1 * k, 0.05 * k), yaw, PEDESTRIAN, iid, "skin", skin))
    return boxes


def sign_boxes(x, y, yaw, iid, height, plate, kind) -> list[Box]:
    """A sign pole (class pole) and a thin plate (class traffic_sign, instance ``iid``) on top;
    the plate's front faces local ``-y``."""
    pw, ph = plate
    pole_h = height - ph / 2
    boxes = [
        _box_at(x, y, 0.0, (0.07, 0.07, pole_h + 0.1), yaw, POLE, 0, "metal", (0.25, 0.25, 0.25)),
        _box_at(x, y, pole_h - ph / 2, (pw, 0.04, ph), yaw, TRAFFIC_SIGN, iid, "sign", (0.6, 0.6, 0.6),
                (float(kind),), local=(0.0, -0.06)),
    ]
    return boxes


# ------------------------------------------------------------------------------------- sampling
_CAR_COLOURS = np.array([
    (0.70, 0.70, 0.70), (0.02, 0.02, 0.02), (0.35, 0.36, 0.38), (0.12, 0.12, 0.13), (0.45, 0.02, 0.02),
    (0.02, 0.06, 0.25), (0.05, 0.15, 0.45), (0.40, 0.33, 0.22), (0.03, 0.15, 0.06), (0.60, 0.45, 0.02),
    (0.55, 0.55, 0.56), (0.20, 0.03, 0.05),
])
_CAR_COLOUR_P = np.array([18, 14, 14, 10, 7, 6, 6, 5, 4, 3, 8, 4], np.float64)
_FACADE_COLOURS = np.array([
    (0.45, 0.38, 0.28), (0.30, 0.12, 0.07), (0.35, 0.35, 0.34), (0.55, 0.53, 0.48), (0.20, 0.20, 0.21),
    (0.50, 0.42, 0.30), (0.25, 0.18, 0.12), (0.40, 0.30, 0.25), (0.32, 0.36, 0.38), (0.60, 0.55, 0.40),
])
_CLOTH_COLOURS = np.array([
    (0.02, 0.02, 0.02), (0.05, 0.05, 0.08), (0.02, 0.04, 0.12), (0.25, 0.25, 0.25), (0.45, 0.03, 0.03),
    (0.05, 0.15, 0.05), (0.50, 0.45, 0.35), (0.10, 0.06, 0.04), (0.60, 0.60, 0.60), (0.45, 0.30, 0.02),
    (0.04, 0.10, 0.30), (0.30, 0.05, 0.20),
])
_SKIN = np.array([(0.55, 0.38, 0.28), (0.45, 0.30, 0.22), (0.30, 0.18, 0.12), (0.15, 0.09, 0.06),
                  (0.50, 0.36, 0.25)])


class _Occupancy:
    """Rejects overlapping footprints (discs in road coordinates)."""

    def __init__(self) -> None:
        self.items: list[tuple[float, float, float, float]] = []

    def free(self, s: float, y: float, half_w: float, half_l: float) -> bool:
        for s2, y2, w2, l2 in self.items:
            if abs(s - s2) < half_w + w2 and abs(y - y2) < half_l + l2:
                return False
        return True

    def add(self, s: float, y: float, half_w: float, half_l: float) -> None:
        self.items.append((s, y, half_w, half_l))


def _pick(rng: np.random.Generator, table: np.ndarray, p: np.ndarray | None = None) -> tuple[float, ...]:
    i = rng.choice(len(table), p=None if p is None else p / p.sum())
    return tuple(float(v) for v in table[i])


def _jitter_colour(rng: np.random.Generator, c, amount=0.08) -> tuple[float, float, float]:
    c = np.asarray(c) * (1.0 + amount * rng.standard_normal(3))
    return tuple(float(v) for v in np.clip(c, 0.005, 0.9))


def sample_road(rng: np.random.Generator) -> Road:
    lane_w = float(rng.uniform(3.0, 3.8))
    lanes_right = int(rng.choice([1, 2, 2, 3]))
    lanes_left = int(rng.choice([0, 1, 1, 2, 2])) if lanes_right < 3 else int(rng.choice([0, 2, 3]))
    ego_lane = int(rng.integers(0, lanes_right))
    s_cam = (ego_lane + 0.5) * lane_w + float(rng.normal(0.0, 0.25))
    curvature = 0.0 if rng.random() < 0.5 else float(rng.uniform(-1 / 180, 1 / 180))
    slope = float(np.tan(np.radians(rng.normal(0.0, 1.5))))
    crossings: list[tuple[float, float]] = []
    crosswalks: list[float] = []
    if rng.random() < 0.4:
        y0 = float(rng.uniform(14.0, 55.0))
        crossings.append((y0, float(rng.uniform(8.0, 14.0))))
        if rng.random() < 0.7:
            crosswalks.append(y0 - 3.5)
    if rng.random() < 0.15:
        crosswalks.append(float(rng.uniform(8.0, 40.0)))
    return Road(
        offset=-s_cam,
        slope=slope,
        curvature=curvature,
        lane_width=lane_w,
        lanes_right=lanes_right,
        lanes_left=lanes_left,
        sidewalk_right=float(rng.uniform(2.0, 4.5)),
        sidewalk_left=float(rng.uniform(2.0, 4.5)),
        verge_right_grass=bool(rng.random() < 0.25),
        verge_left_grass=bool(rng.random() < 0.25),
        centre_line=str(rng.choice(["dashed", "dashed", "solid", "double"])),
        yellow_centre=bool(rng.random() < 0.3),
        dash_length=float(rng.uniform(2.0, 4.0)),
        dash_period=float(rng.uniform(8.0, 13.0)),
        dash_phase=float(rng.uniform(0.0, 13.0)),
        crossings=tuple(crossings),
        crosswalks=tuple(crosswalks),
    )


def _in_crossing(road: Road, y: float, margin: float = 0.0) -> bool:
    return any(y0 - margin <= y < y0 + w + margin for y0, w in road.crossings)


def sample_scene(rng: np.random.Generator, camera: Camera | None = None, jitter: bool = True) -> Scene:
    """Samples the geometry of one frame (road, buildings, trees, poles and signs, vehicles,
    pedestrians). With ``jitter`` the camera's mount height is perturbed by -0.1..+0.2 m and its
    pitch by -1.5..+2.5 degrees; the scene's camera holds the values used."""
    camera = camera or Camera.default()
    if jitter:
        camera = dataclasses.replace(
            camera,
            mount_height=float(camera.mount_height + rng.uniform(-0.1, 0.2)),
            pitch_deg=float(camera.pitch_deg + rng.uniform(-1.5, 2.5)),
        )
    road = sample_road(rng)
    scene = Scene(camera=camera, road=road)
    occ = _Occupancy()
    _add_buildings(rng, scene)
    _add_far_background(rng, scene)
    _add_street_furniture(rng, scene, occ)
    _add_trees(rng, scene, occ)
    _add_vehicles(rng, scene, occ)
    _add_pedestrians(rng, scene, occ)
    return scene


def _add_buildings(rng: np.random.Generator, scene: Scene) -> None:
    road = scene.road
    for side in (-1, 1):
        edge = road.right_edge + road.sidewalk_right if side > 0 else road.left_edge - road.sidewalk_left
        grass = road.verge_right_grass if side > 0 else road.verge_left_grass
        if grass and rng.random() < 0.5:
            continue  # open land on this side
        y = float(rng.uniform(-25.0, -5.0))
        while y < 150.0:
            if _in_crossing(road, y, margin=0.5):
                y0, w = next(c for c in road.crossings if c[0] - 0.5 <= y < c[0] + c[1] + 0.5)
                y = y0 + w + 0.5
                continue
            length = float(rng.uniform(6.0, 26.0))
            nxt = next((c[0] for c in road.crossings if c[0] > y), None)
            if nxt is not None and y + length > nxt - 0.5:
                length = nxt - 0.5 - y
            if length < 3.0:
                y += length + 0.1
                continue
            if rng.random() < 0.2:  # gap (open lot or low wall)
                if rng.random() < 0.4:
                    yc = y + length / 2
                    setback = float(rng.uniform(0.0, 1.0))
                    s = edge + side * (setback + 0.15)
                    x, yy = road.point(s, yc)
                    scene.boxes.append(_box_at(x, yy, 0.0, (0.3, length, float(rng.uniform(0.8, 2.2))),
                                               road.heading(yc), BUILDING, 0, "wall",
                                               _jitter_colour(rng, _pick(rng, _FACADE_COLOURS), 0.15)))
                y += length + float(rng.uniform(0.0, 2.0))
                continue
            yc = y + length / 2
            depth = float(rng.uniform(8.0, 20.0))
            setback = float(rng.uniform(0.0, 2.5)) if rng.random() < 0.5 else 0.0
            height = float(np.clip(rng.gamma(3.0, 4.0), 4.0, 35.0))
            s = edge + side * (setback + depth / 2)
            x, yy = road.point(s, yc)
            colour = _jitter_colour(rng, _pick(rng, _FACADE_COLOURS), 0.12)
            floor_h = float(rng.uniform(2.8, 3.6))
            params = (
                floor_h,                                  # 0 floor height
                float(rng.uniform(1.8, 4.0)),             # 1 window spacing
                float(rng.uniform(0.35, 0.7)),            # 2 window width fraction
                float(rng.uniform(0.35, 0.6)),            # 3 window height fraction
                float(rng.uniform(3.0, 4.5)),             # 4 ground floor height
                float(rng.random() < 0.5),                # 5 shop windows on the ground floor
                float(rng.uniform(0.1, 0.55)),            # 6 lit window fraction at night
                float(rng.integers(0, 1 << 20)),          # 7 hash seed
                float(rng.random() < 0.15),               # 8 no windows (blank wall / warehouse)
            )
            scene.boxes.append(_box_at(x, yy, 0.0, (depth, length - 0.05, height), road.heading(yc), BUILDING, 0,
                                       "facade", colour, params))
            y += length + (float(rng.uniform(0.0, 0.3)) if rng.random() < 0.8 else 0.0)


def _add_far_background(rng: np.random.Generator, scene: Scene) -> None:
    """Distant buildings / tree lines beyond the depth range, outside the road corridor."""
    road = scene.road
    for _ in range(int(rng.integers(2, 7))):
        y = float(rng.uniform(130.0, 260.0))
        side = 1 if rng.random() < 0.5 else -1
        s = side * float(rng.uniform(25.0, 90.0))
        x, yy = road.point(s, y)
        if rng.random() < 0.5:
            scene.boxes.append(_box_at(x, yy, 0.0, (float(rng.uniform(20, 50)), float(rng.uniform(15, 40)),
                                                    float(rng.uniform(10, 45))), float(rng.uniform(-0.3, 0.3)),
                                       BUILDING, 0, "facade", _jitter_colour(rng, _pick(rng, _FACADE_COLOURS)),
                                       (3.2, 3.0, 0.5, 0.5, 4.0, 0.0, 0.3, float(rng.integers(0, 1 << 20)), 0.0)))
        else:
            r = float(rng.uniform(6, 15))
            scene.ellipsoids.append(Ellipsoid((float(x), float(yy), r * 0.8), (r * 1.5, r, r), VEGETATION, 0,
                                              "foliage", _jitter_colour(rng, (0.04, 0.09, 0.025), 0.2)))


def _add_street_furniture(rng: np.random.Generator, scene: Scene, occ: _Occupancy) -> None:
    road = scene.road
    n = int(rng.integers(2, 7))
    lamp_side = 1 if rng.random() < 0.6 else -1
    lamp_spacing = float(rng.uniform(18.0, 32.0))
    lamp_phase = float(rng.uniform(3.0, 3.0 + lamp_spacing))
    y = lamp_phase
    n_lamps = 0
    while y < 110.0 and n_lamps < n:
        if not _in_crossing(road, y, 2.0):
            s = (road.right_edge + 0.5) if lamp_side > 0 else (road.left_edge - 0.5)
            x, yy = road.point(s, y)
            yaw = road.heading(y)
            h = float(rng.uniform(6.5, 9.0))
            arm = float(rng.uniform(1.2, 2.5))
            scene.boxes.append(_box_at(x, yy, 0.0, (0.18, 0.18, h), yaw, POLE, 0, "metal", (0.3, 0.3, 0.3)))
            scene.boxes.append(_box_at(x, yy, h - 0.12, (arm, 0.1, 0.1), yaw, POLE, 0, "metal", (0.3, 0.3, 0.3),
                                       local=(-lamp_side * arm / 2, 0.0)))
            scene.boxes.append(_box_at(x, yy, h - 0.3, (0.6, 0.3, 0.2), yaw, POLE, 0, "lamp", (0.5, 0.5, 0.5),
                                       local=(-lamp_side * (arm - 0.1), 0.0)))
            lx, ly = road.point(s - lamp_side * (arm - 0.1), y)
            scene.lamps.append((float(lx), float(ly), h - 0.35))
            occ.add(s, y, 0.3, 0.3)
            n_lamps += 1
        y += lamp_spacing
    # traffic signs on their own poles
    for _ in range(int(rng.integers(0, 4)) + (1 if rng.random() < 0.5 else 0)):
        side = 1 if rng.random() < 0.7 else -1
        y = float(rng.uniform(5.0, 60.0))
        off = float(rng.uniform(0.4, 1.2))
        s = road.right_edge + off if side > 0 else road.left_edge - off
        if not occ.free(s, y, 0.6, 0.6):
            continue
        x, yy = road.point(s, y)
        kind = int(rng.integers(0, 5))
        if kind == 3:
            plate = (float(rng.uniform(0.8, 1.3)), float(rng.uniform(0.3, 0.5)))
        else:
            d = float(rng.uniform(0.55, 0.85))
            plate = (d, d)
        scene.add_sign(x, yy, road.heading(y) + float(rng.normal(0.0, 0.15)), float(rng.uniform(2.2, 3.2)),
                       plate, kind)
        occ.add(s, y, 0.6, 0.6)
    # bare poles / bollards
    for _ in range(int(rng.integers(0, 3))):
        side = 1 if rng.random() < 0.5 else -1
        y = float(rng.uniform(4.0, 50.0))
        off = float(rng.uniform(0.3, 1.5))
        s = road.right_edge + off if side > 0 else road.left_edge - off
        if not occ.free(s, y, 0.4, 0.4):
            continue
        x, yy = road.point(s, y)
        h = float(rng.uniform(1.0, 4.5))
        w = float(rng.uniform(0.08, 0.25))
        scene.boxes.append(_box_at(x, yy, 0.0, (w, w, h), road.heading(y), POLE, 0, "metal",
                                   _jitter_colour(rng, (0.3, 0.3, 0.3), 0.3)))
        occ.add(s, y, 0.4, 0.4)


def _add_trees(rng: np.random.Generator, scene: Scene, occ: _Occupancy) -> None:
    road = scene.road
    for side in (-1, 1):
        if rng.random() < 0.45:
            continue
        sw = road.sidewalk_right if side > 0 else road.sidewalk_left
        edge = road.right_edge if side > 0 else road.left_edge
        spacing = float(rng.uniform(8.0, 18.0))
        y = float(rng.uniform(2.0, 2.0 + spacing))
        while y < 90.0:
            s = edge + side * min(sw - 0.6, float(rng.uniform(0.9, 1.6)))
            if not _in_crossing(road, y, 3.0) and occ.free(s, y, 0.8, 0.8):
                x, yy = road.point(s, y)
                trunk_h = float(rng.uniform(1.8, 3.2))
                scene.boxes.append(_box_at(x, yy, 0.0, (0.25, 0.25, trunk_h + 0.5), float(rng.uniform(0, 1.5)),
                                           VEGETATION, 0, "bark", _jitter_colour(rng, (0.12, 0.08, 0.05), 0.2)))
                rx, rz = float(rng.uniform(1.3, 2.8)), float(rng.uniform(1.5, 3.0))
                leaf = _jitter_colour(rng, (0.05, 0.11, 0.03), 0.25)
                cz = trunk_h + rz * 0.8
                scene.ellipsoids.append(Ellipsoid((float(x), float(yy), cz), (rx, rx, rz), VEGETATION, 0, "foliage",
                                                  leaf))
                for _ in range(int(rng.integers(1, 4))):  # lumps
                    ang = float(rng.uniform(0, 2 * math.pi))
                    r2 = rx * float(rng.uniform(0.45, 0.7))
                    d = rx * float(rng.uniform(0.45, 0.7))
                    dz = float(rng.uniform(-0.3, 0.6)) * rz
                    scene.ellipsoids.append(Ellipsoid(
                        (float(x + d * math.cos(ang)), float(yy + d * math.sin(ang)), cz + dz),
                        (r2, r2, r2 * float(rng.uniform(0.8, 1.2))), VEGETATION, 0, "foliage",
                        _jitter_colour(rng, leaf, 0.1)))
                occ.add(s, y, 0.5, 0.5)
            y += spacing * float(rng.uniform(0.8, 1.2))


def _add_vehicles(rng: np.random.Generator, scene: Scene, occ: _Occupancy) -> None:
    road = scene.road
    target = int(rng.integers(2, 9))
    placed = 0
    for _ in range(target * 6):
        if placed >= target:
            break
        kind = str(rng.choice(["car", "car", "car", "car", "car", "car", "van", "van", "bus", "truck"]))
        u = rng.random()
        lw = road.lane_width
        if u < 0.45:      # same direction
            lane = int(rng.integers(0, road.lanes_right))
            s = (lane + 0.5) * lw + float(rng.normal(0, 0.25))
            yaw_off = 0.0
        elif u < 0.75 and road.lanes_left > 0:  # oncoming
            lane = int(rng.integers(0, road.lanes_left))
            s = -(lane + 0.5) * lw + float(rng.normal(0, 0.25))
            yaw_off = math.pi
        elif u < 0.92:    # parked along a road edge
            if kind in ("bus", "truck"):
                kind = "car"
            if road.lanes_left > 0 and rng.random() < 0.4:
                s, yaw_off = road.left_edge + 1.15, math.pi
            else:
                s, yaw_off = road.right_edge - 1.15, 0.0
        else:             # cross traffic
            if not road.crossings:
                continue
            y0, w = road.crossings[0]
            y = y0 + w / 2 + float(rng.choice([-1.0, 1.0])) * w / 4
            s = float(rng.uniform(-25.0, 25.0))
            if road.left_edge - 3 < s < road.right_edge + 3:
                continue
            dims = {"car": (1.8, 4.4), "van": (1.95, 4.9), "bus": (2.5, 11.0), "truck": (2.45, 8.0)}[kind]
            if not occ.free(s, y, dims[1] / 2 + 0.5, dims[0] / 2 + 0.5):
                continue
            x, yy = road.point(s, y)
            scene.add_vehicle(x, yy, road.heading(y) + (math.pi / 2 if y > y0 + w / 2 else -math.pi / 2),
                              _vehicle_colour(rng, kind), kind, _vehicle_dims(rng, kind))
            occ.add(s, y, dims[1] / 2 + 0.5, dims[0] / 2 + 0.5)
            placed += 1
            continue
        dims = _vehicle_dims(rng, kind)
        y_min = 7.0 if (0 < s < road.right_edge and abs(s + road.offset) < lw * 0.6) else 3.0
        y = float(rng.uniform(y_min, 60.0))
        if not occ.free(s, y, dims[0] / 2 + 0.4, dims[1] / 2 + 1.0):
            continue
        x, yy = road.point(s, y)
        scene.add_vehicle(x, yy, road.heading(y) + yaw_off + float(rng.normal(0, 0.03)), _vehicle_colour(rng, kind),
                          kind, dims)
        occ.add(s, y, dims[0] / 2 + 0.4, dims[1] / 2 + 1.0)
        placed += 1


def _vehicle_dims(rng: np.random.Generator, kind: str) -> tuple[float, float, float]:
    if kind == "car":
        return float(rng.uniform(1.7, 1.9)), float(rng.uniform(3.8, 4.9)), float(rng.uniform(1.35, 1.6))
    if kind == "van":
        return float(rng.uniform(1.85, 2.05)), float(rng.uniform(4.6, 5.4)), float(rng.uniform(1.8, 2.2))
    if kind == "bus":
        return 2.5, float(rng.uniform(10.0, 12.5)), float(rng.uniform(2.9, 3.3))
    return float(rng.uniform(2.3, 2.5)), float(rng.uniform(6.5, 9.0)), float(rng.uniform(3.0, 3.6))


def _vehicle_colour(rng: np.random.Generator, kind: str) -> tuple[float, float, float]:
    if kind == "bus" and rng.random() < 0.6:
        return _jitter_colour(rng, _pick(rng, np.array([(0.6, 0.5, 0.05), (0.5, 0.05, 0.03), (0.05, 0.2, 0.45),
                                                        (0.6, 0.6, 0.6)])), 0.05)
    return _jitter_colour(rng, _pick(rng, _CAR_COLOURS, _CAR_COLOUR_P), 0.06)


def _add_pedestrians(rng: np.random.Generator, scene: Scene, occ: _Occupancy) -> None:
    road = scene.road
    target = int(rng.integers(0, 7))
    placed = 0
    for _ in range(target * 6):
        if placed >= target:
            break
        u = rng.random()
        if u < 0.75 or not (road.crosswalks or road.crossings):
            side = 1 if rng.random() < 0.5 else -1
            sw = road.sidewalk_right if side > 0 else road.sidewalk_left
            edge = road.right_edge if side > 0 else road.left_edge
            s = edge + side * float(rng.uniform(0.4, sw - 0.3))
            y = float(rng.uniform(3.0, 45.0))
            yaw = road.heading(y) + (0.0 if rng.random() < 0.5 else math.pi) + float(rng.normal(0, 0.3))
        else:
            if road.crosswalks and rng.random() < 0.7:
                y = road.crosswalks[int(rng.integers(0, len(road.crosswalks)))] + float(rng.uniform(0.3, 2.7))
            else:
                y = float(rng.uniform(5.0, 40.0))
            s = float(rng.uniform(road.left_edge + 0.5, road.right_edge - 0.5))
            yaw = road.heading(y) + (math.pi / 2 if rng.random() < 0.5 else -math.pi / 2) + float(rng.normal(0, 0.2))
        if not occ.free(s, y, 0.4, 0.4):
            continue
        x, yy = road.point(s, y)
        height = float(rng.uniform(1.55, 1.95)) if rng.random() < 0.9 else float(rng.uniform(1.1, 1.4))
        scene.add_pedestrian(x, yy, yaw, height, _jitter_colour(rng, _pick(rng, _CLOTH_COLOURS), 0.15),
                             _jitter_colour(rng, _pick(rng, _CLOTH_COLOURS[:8]), 0.15),
                             _jitter_colour(rng, _pick(rng, _SKIN), 0.1), float(rng.uniform(-0.15, 0.15)))
        occ.add(s, y, 0.4, 0.4)
        placed += 1


# ----------------------------------------------------------------------------------------- frame
@dataclass
class Frame:
    """One rendered frame with exact labels for all four tasks.

    ``boxes`` are ``[x1, y1, x2, y2]`` in full-resolution pixels with exclusive right/bottom edges
    (``x2 = last visible column + 1``), tight around the *visible* pixels of the instance;
    ``visible_fraction`` = visible pixels / pixels the instance would cover in this image if
    nothing were in front of it (truncation by the image border is not occlusion).
    """

    image: np.ndarray
    semantic: np.ndarray
    depth: np.ndarray
    instances: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    instance_ids: np.ndarray
    visible_fraction: np.ndarray
    camera: Camera
    night: bool = False
