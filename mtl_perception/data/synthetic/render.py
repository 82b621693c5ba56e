"""Vectorised numpy ray casting of a :class:`~mtl_perception.data.synthetic.world.Scene`, shading, and
the labels of a frame.

One ray per pixel through the pixel centre; the ground plane, oriented boxes (slab test) and
ellipsoids are intersected and the nearest hit wins, so occlusion and depth are exact. Each
primitive is tested only on the pixels of its projected screen rectangle. Labels (semantic ids,
planar depth, instance ids, boxes) are read from the same hits as the image, so they line up with
it pixel for pixel. Appearance: procedural textures, Lambertian sun + sky light with cast
shadows on the ground (day), or ambient + ego headlights + street lamps + emissive lights (night),
aerial haze, optical blur, vignetting, signal-dependent sensor noise and a tone curve.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from mtl_perception.data.synthetic.world import (
    GROUND_CURB,
    GROUND_GRASS,
    GROUND_MARKING,
    GROUND_PAVEMENT,
    GROUND_YELLOW,
    MATERIALS,
    MAX_DEPTH,
    SKY,
    Camera,
    Frame,
    Scene,
    ground_layout,
    ray_components,
    sample_scene,
)

MIN_VISIBLE_PIXELS = 20
"""An instance gets a box only with at least this many visible pixels (full resolution) ..."""
MIN_VISIBLE_FRACTION = 0.1
"""... and at least this fraction of its unoccluded projection visible."""

NEAR = 0.05
_GROUND = 0
_SKY = -1
_MAT = {name: i for i, name in enumerate(MATERIALS)}
_FACE_CURVED = 6


# ------------------------------------------------------------------------------------ textures
_TEX: dict[str, np.ndarray] = {}
_TEX_SIZE = 512


def _textures() -> dict[str, np.ndarray]:
    """Two tileable noise textures (zero mean, unit std): 'fine' (1/f) and 'smooth' (1/f^2).
    Built once per process from a fixed seed, so they are identical everywhere."""
    if not _TEX:
        rng = np.random.default_rng(20240611)
        n = _TEX_SIZE
        f = np.fft.fftfreq(n)
        fr = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
        fr[0, 0] = 1.0
        for name, beta in (("fine", 0.9), ("smooth", 2.0)):
            spec = np.fft.fft2(rng.standard_normal((n, n)))
            tex = np.real(np.fft.ifft2(spec / fr**beta))
            tex = (tex - tex.mean()) / tex.std()
            _TEX[name] = tex.astype(np.float32)
    return _TEX


def _tex(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Nearest-texel lookup at texture coordinates (a, b) (texels, wrapping; |a|, |b| < 2**31)."""
    t = _textures()[name]
    m = _TEX_SIZE - 1
    return t[b.astype(np.int32) & m, a.astype(np.int32) & m]


# ---------------------------------------------------------------------------------- primitives
@dataclass
class _Prims:
    center: np.ndarray    # (P, 3)
    half: np.ndarray      # (P, 3) half sizes (boxes) / radii (ellipsoids)
    cos: np.ndarray       # (P,)
    sin: np.ndarray
    curved: np.ndarray    # (P,) bool
    semantic: np.ndarray  # (P,) uint8
    instance: np.ndarray  # (P,) int32
    material: np.ndarray  # (P,) int16
    color: np.ndarray     # (3, P) float32 (channel-first)
    params: np.ndarray    # (P, 10) float32
    corners: list         # per primitive, (8, 3) world corners (of the bounding box)
    cos32: np.ndarray = field(init=False)
    sin32: np.ndarray = field(init=False)
    cx32: np.ndarray = field(init=False)
    cy32: np.ndarray = field(init=False)
    cz32: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.cos32 = self.cos.astype(np.float32)
        self.sin32 = self.sin.astype(np.float32)
        self.cx32, self.cy32, self.cz32 = (np.ascontiguousarray(self.center[:, j], np.float32) for j in range(3))


def _prims(scene: Scene) -> _Prims:
    items = list(scene.boxes) + list(scene.ellipsoids)
    n = len(items)
    center = np.zeros((n, 3))
    half = np.zeros((n, 3))
    yaw = np.zeros(n)
    curved = np.zeros(n, bool)
    params = np.zeros((n, 10), np.float32)
    for i, p in enumerate(items):
        center[i] = p.center
        if hasattr(p, "size"):
            half[i] = np.array(p.size) / 2.0
            yaw[i] = p.yaw
        else:
            half[i] = p.radii
            curved[i] = True
        params[i, : len(p.params)] = p.params
    return _Prims(
        center=center,
        half=half.astype(np.float32),
        cos=np.cos(yaw),
        sin=np.sin(yaw),
        curved=curved,
        semantic=np.array([p.semantic for p in items], np.uint8),
        instance=np.array([p.instance for p in items], np.int32),
        material=np.array([_MAT[p.material] for p in items], np.int16),
        color=np.ascontiguousarray(np.array([p.color for p in items], np.float32).reshape(n, 3).T),
        params=params,
        corners=[p.corners() for p in items],
    )


def _screen_rect(points: np.ndarray, camera: Camera, margin: int = 1):
    """Pixel rectangle (r0, r1, c0, c1) (exclusive ends) whose pixel-centre rays may hit the
    convex hull of ``points`` (world), clipped to the image; None when it is empty or behind the
    camera. Parts behind the near plane are clipped away exactly (segment intersections)."""
    pc = camera.world_to_camera(points)
    z = pc[:, 2]
    front = z > NEAR
    if not front.any():
        return None
    pts = pc[front]
    if not front.all():
        f = pc[front]
        b = pc[~front]
        a = (NEAR - b[:, None, 2]) / (f[None, :, 2] - b[:, None, 2])
        inter = b[:, None, :] + a[..., None] * (f[None, :, :] - b[:, None, :])
        pts = np.concatenate([pts, inter.reshape(-1, 3)])
    u = camera.fx * pts[:, 0] / pts[:, 2] + camera.cx
    v = camera.fy * pts[:, 1] / pts[:, 2] + camera.cy
    c0 = max(0, int(math.ceil(u.min() - 0.5)) - margin)
    c1 = min(camera.width, int(math.floor(u.max() - 0.5)) + 1 + margin)
    r0 = max(0, int(math.ceil(v.min() - 0.5)) - margin)
    r1 = min(camera.height, int(math.floor(v.max() - 0.5)) + 1 + margin)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def _intersect(prims: _Prims, k: int, origin, dx, dy, dz) -> np.ndarray:
    """Ray parameter (float32) of the entry hit of rays ``origin + t*d`` with primitive ``k``;
    inf where there is none or it is nearer than ``NEAR``. ``origin`` is a 3-sequence of scalars
    or of arrays; the direction components broadcast against each other."""
    c0, c1, c2 = (float(v) for v in prims.center[k])
    h0, h1, h2 = (float(v) for v in prims.half[k])
    ox, oy, oz = origin[0] - c0, origin[1] - c1, origin[2] - c2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if prims.curved[k]:
            qx, qy, qz = ox / h0, oy / h1, oz / h2
            ex, ey, ez = dx / h0, dy / h1, dz / h2
            a = ex * ex + ey * ey + ez * ez
            b = qx * ex + qy * ey + qz * ez
            cc = qx * qx + qy * qy + qz * qz - 1.0
            disc = b * b - a * cc
            t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
            ok = (disc >= 0) & (t > NEAR)
            return np.where(ok, t, np.float32(np.inf)).astype(np.float32, copy=False)
        ca, sa = float(prims.cos[k]), float(prims.sin[k])
        lox = ca * ox + sa * oy
        loy = -sa * ox + ca * oy
        ldx = ca * dx + sa * dy
        ldy = -sa * dx + ca * dy
        ix, iy, iz = 1.0 / ldx, 1.0 / ldy, 1.0 / dz
        t1, t2 = (-h0 - lox) * ix, (h0 - lox) * ix
        tn, tf = np.minimum(t1, t2), np.maximum(t1, t2)
        t1, t2 = (-h1 - loy) * iy, (h1 - loy) * iy
        tn = np.maximum(tn, np.minimum(t1, t2))
        tf = np.minimum(tf, np.maximum(t1, t2))
        t1, t2 = (-h2 - oz) * iz, (h2 - oz) * iz
        tn = np.maximum(tn, np.minimum(t1, t2))
        tf = np.minimum(tf, np.maximum(t1, t2))
        ok = (tn <= tf) & (tn > NEAR)
        return np.where(ok, tn, np.float32(np.inf)).astype(np.float32, copy=False)


def _box_faces(lx, ly, lz, half) -> np.ndarray:
    """Face codes of points on box surfaces (local coordinates): the axis whose coordinate is
    nearest its half size, +3 when on the negative side."""
    ax, ay, az = np.abs(lx) / half[:, 0], np.abs(ly) / half[:, 1], np.abs(lz) / half[:, 2]
    face = np.where((ax >= ay) & (ax >= az), np.where(lx < 0, 3, 0),
                    np.where(ay >= az, np.where(ly < 0, 4, 1), np.where(lz < 0, 5, 2)))
    return face.astype(np.int8)


def _rects_of_points(points: np.ndarray, camera: Camera) -> list:
    """Screen rectangles (see :func:`_screen_rect`) of many convex point sets, (n, m, 3) world
    points; vectorised for the sets entirely in front of the camera."""
    n = len(points)
    if n == 0:
        return []
    pc = camera.world_to_camera(points)
    z = pc[..., 2]
    front = z > NEAR
    allf = front.all(axis=1)
    rects: list = [None] * n
    with np.errstate(divide="ignore", invalid="ignore"):
        u = camera.fx * pc[..., 0] / z + camera.cx
        v = camera.fy * pc[..., 1] / z + camera.cy
    c0 = np.maximum(0, np.ceil(u.min(1) - 0.5) - 1)
    c1 = np.minimum(camera.width, np.floor(u.max(1) - 0.5) + 2)
    r0 = np.maximum(0, np.ceil(v.min(1) - 0.5) - 1)
    r1 = np.minimum(camera.height, np.floor(v.max(1) - 0.5) + 2)
    ok = allf & (c0 < c1) & (r0 < r1)
    for k in np.flatnonzero(ok):
        rects[k] = (int(r0[k]), int(r1[k]), int(c0[k]), int(c1[k]))
    for k in np.flatnonzero(~allf & front.any(axis=1)):
        rects[k] = _screen_rect(points[k], camera)
    return rects


def _screen_rects(prims: _Prims, camera: Camera) -> list:
    """Screen rectangles of all primitives."""
    if not len(prims.corners):
        return []
    return _rects_of_points(np.stack(prims.corners), camera)


@dataclass
class Hits:
    """Result of ray casting: planar depth ``t`` (inf = sky), primitive index ``pid`` (-1 sky,
    0 ground, k+1 = primitive k, boxes first then ellipsoids), and per instance id the pixel
    count of its unoccluded projection."""

    t: np.ndarray
    pid: np.ndarray
    own_pixels: dict[int, int]
    prims: _Prims
    rects: list


def cast(scene: Scene) -> Hits:
    cam = scene.camera
    ux, uy, uz = ray_components(cam)
    W = cam.width
    oz = float(cam.mount_height)
    with np.errstate(divide="ignore"):
        t_row = np.where(uz < 0, np.float32(oz) / -uz, np.float32(np.inf)).astype(np.float32)
    t = np.repeat(t_row[:, None], W, axis=1)
    pid = np.repeat(np.where(np.isfinite(t_row), _GROUND, _SKY).astype(np.int32)[:, None], W, axis=1)
    prims = _prims(scene)
    n = len(prims.semantic)
    rects = _screen_rects(prims, cam)
    # union rectangle per instance, for the unoccluded coverage
    own: dict[int, list] = {}
    for k in range(n):
        iid = int(prims.instance[k])
        if iid and rects[k] is not None:
            r = rects[k]
            if iid in own:
                o = own[iid]
                own[iid] = [min(o[0], r[0]), max(o[1], r[1]), min(o[2], r[2]), max(o[3], r[3])]
            else:
                own[iid] = list(r)
    own_masks = {iid: (r, np.zeros((r[1] - r[0], r[3] - r[2]), bool)) for iid, r in own.items()}
    for k in range(n):
        r = rects[k]
        if r is None:
            continue
        r0, r1, c0, c1 = r
        tk = _intersect(prims, k, (0.0, 0.0, oz), ux[None, c0:c1], uy[r0:r1, None], uz[r0:r1, None])
        tb = t[r0:r1, c0:c1]
        closer = tk < tb
        tb[closer] = tk[closer]
        pid[r0:r1, c0:c1][closer] = k + 1
        iid = int(prims.instance[k])
        if iid:
            (R0, _, C0, _), m = own_masks[iid]
            m[r0 - R0 : r1 - R0, c0 - C0 : c1 - C0] |= np.isfinite(tk)
    own_pixels = {iid: int(m.sum()) for iid, (_, m) in own_masks.items()}
    return Hits(t=t, pid=pid, own_pixels=own_pixels, prims=prims, rects=rects)


_PIXELS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _pixel_rc(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of every flat pixel index."""
    v = _PIXELS.get((h, w))
    if v is None:
        v = (np.repeat(np.arange(h, dtype=np.int32), w), np.tile(np.arange(w, dtype=np.int32), h))
        if len(_PIXELS) > 8:
            _PIXELS.clear()
        _PIXELS[(h, w)] = v
    return v


def _flat_rays(camera: Camera, idx: np.ndarray):
    """World ray directions (dx, dy, dz) of flat pixel indices ``idx``."""
    ux, uy, uz = ray_components(camera)
    rows, cols = _pixel_rc(camera.height, camera.width)
    r = rows[idx]
    return ux[cols[idx]], uy[r], uz[r]


# -------------------------------------------------------------------------------------- labels
def labels_from_hits(scene: Scene, hits: Hits):
    """Semantic ids (uint8), planar depth (float32, NaN invalid), instance ids (int32), and the
    ground layout (semantic, material) of ground pixels."""
    cam = scene.camera
    t, pid = hits.t, hits.pid
    sem = np.full(t.shape, SKY, np.uint8)
    inst = np.zeros(t.shape, np.int32)
    g = pid == _GROUND
    gi = np.flatnonzero(g)
    dx, dy, _ = _flat_rays(cam, gi)
    tg = t.ravel()[gi]
    P_g = np.zeros((len(gi), 3), np.float32)
    P_g[:, 0] = tg * dx
    P_g[:, 1] = tg * dy
    gsem, gmat = ground_layout(scene.road, P_g[:, 0].astype(np.float64), P_g[:, 1].astype(np.float64))
    sem[g] = gsem
    o = pid > 0
    k = pid[o] - 1
    sem[o] = hits.prims.semantic[k]
    inst[o] = hits.prims.instance[k]
    depth = np.where((pid >= 0) & (t <= MAX_DEPTH), t, np.nan).astype(np.float32)
    return sem, depth, inst, (g, gsem, gmat, P_g)


def boxes_from_instances(instances: np.ndarray, scene: Scene, own_pixels: dict[int, int]):
    """Tight exclusive-edge xyxy boxes of the visible pixels of every instance that passes the
    visibility rule; returns (boxes, labels, instance_ids, visible_fraction)."""
    ids = np.flatnonzero(np.bincount(instances.ravel())) if instances.any() else np.zeros(0, np.int64)
    ids = ids[ids > 0]
    label_of = {i.id: i.label for i in scene.instances}
    boxes, labels, iids, fracs = [], [], [], []
    if len(ids):
        rows = np.flatnonzero(instances.any(axis=1))
        sub = instances[rows[0] : rows[-1] + 1]
        counts = np.bincount(sub.ravel(), minlength=int(ids.max()) + 1)
        for iid in ids:
            iid = int(iid)
            vis = int(counts[iid])
            frac = vis / max(own_pixels.get(iid, vis), vis, 1)
            if vis < MIN_VISIBLE_PIXELS or frac < MIN_VISIBLE_FRACTION:
                continue
            m = sub == iid
            ys = np.flatnonzero(m.any(axis=1))
            xs = np.flatnonzero(m.any(axis=0))
            y0 = rows[0] + ys[0]
            boxes.append((xs[0], y0, xs[-1] + 1, rows[0] + ys[-1] + 1))
            labels.append(label_of[iid])
            iids.append(iid)
            fracs.append(frac)
    return (
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(labels, np.int64),
        np.array(iids, np.int32),
        np.array(fracs, np.float32),
    )


# -------------------------------------------------------------------------------------- look
@dataclass
class Look:
    """Appearance parameters of one frame (lighting, materials' global tints, camera response)."""

    night: bool
    sun_dir: np.ndarray
    sun: np.ndarray
    ambient: np.ndarray
    sky_zenith: np.ndarray
    sky_horizon: np.ndarray
    clouds: float
    haze: np.ndarray
    haze_dist: float
    asphalt: np.ndarray
    pavement: np.ndarray
    exposure: float
    """Target sensor value of the median scene luminance (auto exposure) ..."""
    exposure_range: tuple[float, float]
    """... within these gain limits."""
    white_balance: np.ndarray
    blur: float
    vignetting: float
    shot_noise: float
    read_noise: float
    headlight: float
    lamp_colour: np.ndarray
    lamp_power: float
    window_glow: np.ndarray
    bloom: float


def _f32(*v) -> np.ndarray:
    return np.array(v, np.float32)


def sample_look(rng: np.random.Generator, night: bool) -> Look:
    """Samples the appearance of a frame: sun, sky, material tints, exposure, optics, noise."""
    overcast = rng.random() < 0.3
    elev = math.radians(rng.uniform(12.0, 65.0))
    azim = rng.uniform(0.0, 2 * math.pi)
    sun_dir = _f32(math.cos(elev) * math.sin(azim), math.cos(elev) * math.cos(azim), math.sin(elev))
    warm = rng.uniform(0.0, 1.0) * (1.0 - min(1.0, elev / math.radians(40)))
    sun_col = _f32(1.0, 0.93 - 0.1 * warm, 0.85 - 0.25 * warm)
    asphalt = float(rng.uniform(0.07, 0.16)) * _f32(1.0, 1.0, 1.0 + rng.uniform(-0.05, 0.08))
    pav = float(rng.uniform(0.18, 0.34)) * _f32(1.0, rng.uniform(0.95, 1.02), rng.uniform(0.88, 1.0))
    wb = (1.0 + rng.normal(0, 0.05 if night else 0.03, 3)).astype(np.float32)
    if night:
        return Look(
            night=True,
            sun_dir=sun_dir,
            sun=_f32(0, 0, 0),
            ambient=_f32(0.010, 0.012, 0.020) * float(rng.uniform(0.5, 2.0)),
            sky_zenith=_f32(0.002, 0.003, 0.008) * float(rng.uniform(0.5, 2.0)),
            sky_horizon=_f32(0.022, 0.016, 0.013) * float(rng.uniform(0.4, 2.0)),
            clouds=0.0,
            haze=_f32(0.008, 0.007, 0.006),
            haze_dist=float(rng.uniform(120.0, 400.0)),
            asphalt=asphalt,
            pavement=pav,
            exposure=float(0.012 * 2.0 ** rng.normal(0.0, 0.3)),
            exposure_range=(0.8, 4.0),
            white_balance=wb,
            blur=float(rng.uniform(0.55, 0.9)),
            vignetting=float(rng.uniform(0.15, 0.4)),
            shot_noise=float(rng.uniform(0.004, 0.012)),
            read_noise=float(rng.uniform(0.008, 0.02)),
            headlight=float(rng.uniform(500.0, 900.0)),
            lamp_colour=_f32(1.0, 0.62, 0.28) if rng.random() < 0.5 else _f32(0.9, 0.95, 1.0),
            lamp_power=float(rng.uniform(20.0, 45.0)),
            window_glow=_f32(1.0, 0.75, 0.45) * float(rng.uniform(0.08, 0.25)),
            bloom=float(rng.uniform(0.2, 0.5)),
        )
    if overcast:
        sun = sun_col * float(rng.uniform(0.1, 0.4))
        ambient = _f32(0.95, 0.97, 1.0) * float(rng.uniform(1.3, 1.9))
        zen = _f32(0.75, 0.78, 0.82) * float(rng.uniform(2.8, 3.6))
        hor = _f32(0.9, 0.9, 0.92) * float(rng.uniform(3.5, 4.5))
        clouds = 0.0
    else:
        sun = sun_col * float(rng.uniform(2.6, 3.4))
        ambient = _f32(0.55, 0.65, 0.85) * float(rng.uniform(0.7, 1.1))
        zen = _f32(0.15, 0.32, 0.85) * float(rng.uniform(2.2, 3.2))
        hor = _f32(0.7, 0.8, 0.95) * float(rng.uniform(3.0, 4.0))
        clouds = float(rng.uniform(0.0, 1.0))
    return Look(
        night=False,
        sun_dir=sun_dir,
        sun=sun,
        ambient=ambient,
        sky_zenith=zen,
        sky_horizon=hor,
        clouds=clouds,
        haze=hor * 0.9,
        haze_dist=float(rng.uniform(150.0, 700.0)),
        asphalt=asphalt,
        pavement=pav,
        exposure=float(0.13 * 2.0 ** rng.normal(0.0, 0.3)),
        exposure_range=(0.05, 0.6),
        white_balance=wb,
        blur=float(rng.uniform(0.45, 0.8)),
        vignetting=float(rng.uniform(0.05, 0.3)),
        shot_noise=float(rng.uniform(0.0005, 0.002)),
        read_noise=float(rng.uniform(0.002, 0.006)),
        headlight=0.0,
        lamp_colour=_f32(0, 0, 0),
        lamp_power=0.0,
        window_glow=_f32(0, 0, 0),
        bloom=0.0,
    )


# ------------------------------------------------------------------------------------- shading
# Colour arrays are channel-first, (3, N): numpy is much faster with long inner loops.
def _hash01(*ints: np.ndarray) -> np.ndarray:
    """Deterministic per-cell random numbers in [0, 1) from integer-valued arrays."""
    h = np.uint32(2166136261)
    for v in ints:
        h = (h ^ np.asarray(v).astype(np.int64).astype(np.uint32)) * np.uint32(16777619)
        h ^= h >> np.uint32(15)
        h *= np.uint32(2246822519)
        h ^= h >> np.uint32(13)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _c(v) -> np.ndarray:
    """(3,) colour -> (3, 1) float32 column for broadcasting against (3, N)."""
    return np.asarray(v, np.float32).reshape(3, 1)


def _sky(dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, look: Look) -> np.ndarray:
    """Radiance (3, N) of the sky in world directions (dx, dy, dz) (any length)."""
    inv = 1.0 / np.sqrt(dx * dx + dy * dy + dz * dz)
    ez = dz * inv
    w = (1.0 - np.clip(ez, 0.0, 1.0)) ** 3
    col = _c(look.sky_zenith) + _c(look.sky_horizon - look.sky_zenith) * w
    if look.clouds > 0:
        zz = 40.0 / np.maximum(ez, 0.03)
        a, b = dx * inv * zz, dy * inv * zz
        c = _tex("smooth", a, b) * 0.6 + _tex("fine", a * 3, b * 3) * 0.15 + (look.clouds - 0.5) * 1.6
        c = np.clip(c, 0.0, 1.0) * np.clip((ez - 0.01) * 8.0, 0.0, 1.0)
        col += (_c(look.sky_horizon * 1.15) - col) * c
    return col


def _shade_ground(x, y, gmat, road, look: Look, off):
    """Albedo (3, n) of ground points (x, y)."""
    s = (x.astype(np.float64) - road.centre(y.astype(np.float64))).astype(np.float32)
    ox, oy = off
    n = 1.0 + 0.16 * _tex("fine", x * 22 + ox, y * 22 + oy) + 0.22 * _tex("smooth", x * 0.8 + oy, y * 0.8 + ox)
    q = np.abs(np.mod(s, road.lane_width) - road.lane_width / 2)
    n *= 1.0 - 0.12 * np.exp(-(((q - 0.85) / 0.3) ** 2))
    n = np.where(_tex("smooth", x * 0.12 + 77 + ox, y * 0.12 + 13) > 1.3, n * 0.72, n)
    alb = _c(look.asphalt) * np.clip(n, 0.3, 2.0)
    m = np.flatnonzero(gmat == GROUND_MARKING)
    if len(m):
        xm, ym = x[m], y[m]
        wear = np.clip(0.5 + 0.5 * _tex("smooth", xm * 3 + 5, ym * 3 + ox), 0.0, 1.0)
        mk = 0.6 * (1.0 + 0.08 * _tex("fine", xm * 30, ym * 30))
        alb[:, m] += (mk - alb[:, m]) * (0.45 + 0.55 * wear)
    m = np.flatnonzero(gmat == GROUND_YELLOW)
    if len(m):
        alb[:, m] = _c((0.55, 0.38, 0.04)) * (1.0 + 0.08 * _tex("fine", x[m] * 30, y[m] * 30))
    m = np.flatnonzero(gmat == GROUND_CURB)
    if len(m):
        alb[:, m] = 0.3 * (1.0 + 0.1 * _tex("fine", x[m] * 20, y[m] * 20))
    m = np.flatnonzero(gmat == GROUND_PAVEMENT)
    if len(m):
        tile = 0.6
        xm, ym, sm = x[m], y[m], s[m]
        joint = (np.mod(sm, tile) < 0.03) | (np.mod(ym, tile) < 0.03)
        nn = 1.0 + 0.1 * _tex("fine", xm * 25 + ox, ym * 25) + 0.12 * _tex("smooth", xm * 0.5, ym * 0.5 + oy)
        cell = _hash01(np.floor(sm / tile), np.floor(ym / tile)) * 0.2 + 0.9
        alb[:, m] = _c(look.pavement) * (nn * cell * np.where(joint, 0.6, 1.0))
    m = np.flatnonzero(gmat == GROUND_GRASS)
    if len(m):
        xm, ym = x[m], y[m]
        nn = 1.0 + 0.35 * _tex("fine", xm * 12 + ox, ym * 12) + 0.3 * _tex("smooth", xm * 0.4, ym * 0.4)
        dry = np.clip(_tex("smooth", xm * 0.2 + 31, ym * 0.2), 0, 1)
        base = _c((0.05, 0.11, 0.025)) + _c((0.08, 0.0, 0.025)) * dry
        alb[:, m] = base * np.clip(nn, 0.2, 2.5)
    return alb


def _put(dst: np.ndarray, idx: np.ndarray, mask: np.ndarray, value) -> None:
    """dst[:, idx[mask]] = value (a (3,) colour or a (3, n) array aligned with idx)."""
    sel = idx[mask]
    if len(sel):
        v = np.asarray(value, np.float32)
        dst[:, sel] = v.reshape(3, 1) if v.ndim == 1 else v[:, mask]


_GLASS = (0.015, 0.018, 0.024)


@dataclass
class _Surface:
    """What the per-material shaders read (object pixels, box-local hit coordinates) and write
    (albedo, emission, gloss, retro-reflection), all aligned with the hit pixels."""

    mat: np.ndarray
    half: np.ndarray
    alb: np.ndarray
    emi: np.ndarray
    gloss: np.ndarray
    retro: np.ndarray
    axis: np.ndarray
    a: np.ndarray  # horizontal coordinate along the face
    hz: np.ndarray
    zr: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    koff: np.ndarray
    ptex: np.ndarray
    pz: np.ndarray
    lx: np.ndarray
    ly: np.ndarray
    lz: np.ndarray
    face: np.ndarray
    k: np.ndarray
    prims: _Prims
    look: Look
    night: bool


def _shade_facade(s: _Surface, i: np.ndarray) -> None:
    """Buildings: storeys of windows (lit at night), ledges, doors, shop fronts, roofs."""
    half, alb, emi, gloss, axis, a, hz = s.half, s.alb, s.emi, s.gloss, s.axis, s.a, s.hz
    top, ptex, pz, k, prims, look, night = s.top, s.ptex, s.pz, s.k, s.prims, s.look, s.night
    p = prims.params[k[i]]
    fh, sp, wf, hf, gf, shop, lit, seed, blank = (p[:, j] for j in range(9))
    hgt = pz[i]
    ai = a[i]
    aa = ai + 500.0
    half_a = np.where(axis[i] == 0, half[i, 1], half[i, 0])
    inner = np.abs(ai) < half_a - 0.6
    col = alb[:, i] * (1.0 + 0.1 * ptex[i] + 0.1 * _tex("smooth", aa * 0.6, hgt * 0.6))
    colu = np.floor(aa / sp)
    fa = aa / sp - colu
    rel = (hgt - gf) / fh
    floor_i = np.floor(rel)
    fv = rel - floor_i
    ledge = (fv < 0.06) & (hgt > gf - 0.1)
    win = ((np.abs(fa - 0.5) < wf / 2) & (fv > 0.3) & (fv < 0.3 + hf) & (hgt > gf) & (hgt < 2 * hz[i] - 0.7)
           & inner & (blank < 0.5))
    shopw = (shop > 0.5) & (hgt > 0.4) & (hgt < gf - 0.7) & (np.abs(fa - 0.5) < 0.42) & inner
    door = (shop < 0.5) & (hgt < 2.3) & (np.abs(fa - 0.5) < 0.18) & (_hash01(colu, seed) < 0.25) & inner
    roof = top[i]
    glass = (win | shopw) & ~roof
    col *= np.where(ledge, 0.8, 1.0)
    col = np.where(door, alb[:, i] * 0.3, col)
    gshade = 0.7 + 0.6 * _hash01(colu, floor_i, seed)
    col = np.where(glass, _c((0.03, 0.035, 0.045)) * gshade, col)
    col = np.where(roof, 0.12 * (1 + 0.1 * ptex[i]), col)
    alb[:, i] = col
    gloss[i] = np.where(glass, 0.35, 0.0)
    if night:
        lit_w = glass & (_hash01(colu, floor_i, seed + 1) < np.where(shopw, 0.8, lit))
        bright = (0.4 + 1.2 * _hash01(colu, floor_i, seed + 2)) * lit_w
        tint = np.stack([np.ones_like(hgt), 0.8 + 0.2 * _hash01(colu, seed + 3),
                         0.55 + 0.45 * _hash01(floor_i, seed)])
        emi[:, i] = _c(look.window_glow) * bright * tint


def _shade_wall(s: _Surface, i: np.ndarray) -> None:
    """Plain walls: two octaves of texture, darker tops."""
    alb, a, top, koff, ptex, lz = s.alb, s.a, s.top, s.koff, s.ptex, s.lz
    f = (1.0 + 0.15 * ptex[i] + 0.15 * _tex("smooth", a[i] * 2 + koff[i], lz[i] * 2)) * np.where(top[i], 0.7, 1.0)
    alb[:, i] *= f


def _shade_paint(s: _Surface, i: np.ndarray) -> None:
    """Vehicle bodies: bumpers, plates, head/tail lights (lit at night), grilles, windows."""
    half, alb, emi, gloss, axis, zr, top = s.half, s.alb, s.emi, s.gloss, s.axis, s.zr, s.top
    ptex, lx, ly, face, k, prims, night = s.ptex, s.lx, s.ly, s.face, s.k, s.prims, s.night
    kind = prims.params[k[i], 0]
    xr = lx[i] / half[i, 0]
    lyb = ly[i]
    zri = zr[i]
    fi = face[i]
    front, back, side, topi = fi == 1, fi == 4, axis[i] == 0, top[i]
    is_car = kind < 0.5
    is_bus = (kind > 0.5) & (kind < 1.5)
    is_cab = (kind > 1.5) & (kind < 2.5)
    lorry = kind < 2.5
    g = np.full(len(i), 0.22, np.float32)
    bumper = (zri < -0.55) & ~topi & lorry
    plate = (front | back) & (np.abs(lx[i]) < 0.26) & (zri > -0.75) & (zri < -0.35) & lorry
    hl = front & (np.abs(xr) > 0.55) & (np.abs(xr) < 0.92) & np.where(is_car, (zri > 0.1) & (zri < 0.7),
                                                                      (zri > -0.5) & (zri < -0.25))
    grille = front & is_car & (np.abs(xr) < 0.45) & (zri > -0.2) & (zri < 0.55)
    tl = back & (np.abs(xr) > 0.6) & (np.abs(xr) < 0.95) & np.where(is_car, (zri > 0.15) & (zri < 0.7),
                                                                    (zri > -0.5) & (zri < -0.2))
    win = (is_bus & side & (zri > 0.05) & (zri < 0.72) & (np.mod(lyb + 50.0, 1.4) > 0.12)
           & (np.abs(lyb) < half[i, 1] - 0.4))
    win |= is_bus & (front | back) & (zri > -0.05) & (zri < 0.8) & (np.abs(xr) < 0.9)
    win |= is_cab & front & (zri > 0.15) & (zri < 0.8) & (np.abs(xr) < 0.9)
    win |= is_cab & side & (zri > 0.15) & (zri < 0.75) & (lyb > -0.2) & (lyb < half[i, 1] - 0.25)
    _put(alb, i, bumper | grille, (0.035, 0.035, 0.035))
    _put(alb, i, plate, (0.6, 0.6, 0.58))
    _put(alb, i, hl, (0.55, 0.55, 0.55))
    _put(alb, i, tl, (0.35, 0.01, 0.01))
    _put(alb, i, win, _GLASS)
    g[bumper] = 0.0
    g[hl | tl] = 0.5
    g[win] = 0.55
    alb[:, i] *= 1.0 + 0.05 * ptex[i]
    gloss[i] = g
    if night:
        _put(emi, i, hl, (40.0, 38.0, 32.0))
        _put(emi, i, tl, (6.0, 0.15, 0.1))


def _shade_cabin(s: _Surface, i: np.ndarray) -> None:
    """Vehicle cabins: glass on the sides and ends."""
    half, alb, gloss, axis, zr, lx, ly = s.half, s.alb, s.gloss, s.axis, s.zr, s.lx, s.ly
    xr = lx[i] / half[i, 0]
    yr = ly[i] / half[i, 1]
    zri = zr[i]
    glass = (axis[i] == 0) & (zri > -0.8) & (zri < 0.72) & (np.abs(yr) < 0.88) & (np.abs(ly[i]) > 0.06)
    glass |= (axis[i] == 1) & (zri > -0.85) & (zri < 0.78) & (np.abs(xr) < 0.88)
    _put(alb, i, glass, _GLASS)
    gloss[i] = np.where(glass, 0.6, 0.22)


def _shade_tyre(s: _Surface, i: np.ndarray) -> None:
    """Tyres: dark rubber with a lighter hub."""
    alb, axis, hz, ly, lz = s.alb, s.axis, s.hz, s.ly, s.lz
    hub = (axis[i] == 0) & (ly[i] ** 2 + lz[i] ** 2 < (0.55 * hz[i]) ** 2)
    alb[:, i] = np.where(hub, 0.15, 0.02)


def _shade_cloth(s: _Surface, i: np.ndarray) -> None:
    """Clothing: textured albedo."""
    alb, ptex = s.alb, s.ptex
    alb[:, i] *= 1.0 + 0.12 * ptex[i]


def _shade_skin(s: _Surface, i: np.ndarray) -> None:
    """Heads: hair on top and at the back."""
    alb, zr, top, face = s.alb, s.zr, s.top, s.face
    hair = top[i] | (zr[i] > 0.35) | ((face[i] == 4) & (zr[i] > -0.5))
    _put(alb, i, hair, (0.03, 0.02, 0.015))


def _shade_sign(s: _Surface, i: np.ndarray) -> None:
    """Traffic-sign plates (five kinds) on their front face, retro-reflective."""
    half, alb, retro, hz, ptex, lx, lz = s.half, s.alb, s.retro, s.hz, s.ptex, s.lx, s.lz
    face, k, prims = s.face, s.k, s.prims
    kind = prims.params[k[i], 0]
    fr = face[i] == 4  # the plate's front faces local -y
    u = lx[i] / half[i, 0]
    v = lz[i] / hz[i]
    au, av = np.abs(u), np.abs(v)
    rad2 = u * u + v * v
    grey, white, red = (0.25, 0.25, 0.25), (0.7, 0.7, 0.7), (0.5, 0.02, 0.02)
    blue, yellow, black = (0.02, 0.08, 0.4), (0.65, 0.45, 0.02), (0.02, 0.02, 0.02)
    alb[:, i] = _c(grey)
    k0 = fr & (kind < 0.5)
    _put(alb, i, k0 & (rad2 < 1.0), red)
    _put(alb, i, k0 & (rad2 < 0.52), white)
    _put(alb, i, k0 & (rad2 < 0.52) & (au < 0.38) & (av < 0.3), black)
    _put(alb, i, k0 & (rad2 < 0.52) & (au < 0.3) & (av < 0.22) & (au > 0.06), white)
    k1 = fr & (kind > 0.5) & (kind < 1.5)
    _put(alb, i, k1 & (rad2 < 1.0), blue)
    arrow = ((au < 0.13) & (v > -0.6) & (v < 0.2)) | ((v > 0.1) & (v < 0.65) & (au < 0.6 - (v - 0.1)))
    _put(alb, i, k1 & arrow, white)
    k2 = fr & (kind > 1.5) & (kind < 2.5)
    _put(alb, i, k2 & (au + av < 1.0), black)
    _put(alb, i, k2 & (au + av < 0.88), yellow)
    _put(alb, i, k2 & (au + av < 0.88) & (au < 0.08) & (v > -0.25) & (v < 0.45), black)
    k3 = fr & (kind > 2.5) & (kind < 3.5)
    green_sign = _hash01(np.floor(half[i, 0] * 1000)) < 0.5
    ink = k3 & (av < 0.5) & (au < 0.85) & (np.mod(u * 9 + 20, 1.0) < 0.6) & (av > 0.1)
    border = k3 & ((au > 0.93) | (av > 0.85))
    _put(alb, i, k3 & ~green_sign, white)
    _put(alb, i, k3 & green_sign, (0.02, 0.2, 0.06))
    _put(alb, i, (ink | border) & ~green_sign, black)
    _put(alb, i, (ink | border) & green_sign, white)
    k4 = fr & (kind > 3.5)
    octo = (au < 0.97) & (av < 0.97) & (au + av < 1.4)
    _put(alb, i, k4 & octo, red)
    _put(alb, i, k4 & octo & (av < 0.16) & (au < 0.7), white)
    alb[:, i] *= 1.0 + 0.04 * ptex[i]
    retro[i] = fr & (alb[0, i] + alb[1, i] > 0.1)


def _shade_lamp(s: _Surface, i: np.ndarray) -> None:
    """Street lamps: a bright underside (emitting at night)."""
    alb, emi, bottom, look, night = s.alb, s.emi, s.bottom, s.look, s.night
    alb[:, i] = np.where(bottom[i], 0.6, 0.25)
    if night:
        emi[:, i] = _c(look.lamp_colour * 25.0) * bottom[i]


def _shade_foliage(s: _Surface, i: np.ndarray) -> None:
    """Foliage: two octaves of leaf texture."""
    alb, koff, lx, ly, lz = s.alb, s.koff, s.lx, s.ly, s.lz
    xl, yl, zl = lx[i], ly[i], lz[i]
    t1 = _tex("fine", xl * 7 + zl * 4 + koff[i], yl * 7 - zl * 5)
    t2 = _tex("smooth", xl * 2 + zl + koff[i], yl * 2 - zl * 2)
    alb[:, i] *= np.clip(1.0 + 0.45 * t1 + 0.25 * t2, 0.15, 2.5)


def _shade_grain(s: _Surface, i: np.ndarray, amp: float) -> None:
    """Metal and bark: texture of amplitude `amp` on the albedo."""
    s.alb[:, i] *= 1.0 + amp * s.ptex[i]


#: per-material shaders, in the order they run (each writes only its own material's pixels)
_SHADERS = (("facade", _shade_facade), ("wall", _shade_wall), ("paint", _shade_paint), ("cabin", _shade_cabin),
            ("tyre", _shade_tyre), ("cloth", _shade_cloth), ("skin", _shade_skin),
            ("metal", lambda s, i: _shade_grain(s, i, 0.08)), ("bark", lambda s, i: _shade_grain(s, i, 0.25)),
            ("sign", _shade_sign), ("lamp", _shade_lamp), ("foliage", _shade_foliage))


def _shade_objects(pz, lx, ly, lz, face, k, prims: _Prims, look: Look, night: bool):
    """Albedo (3, n), emission (3, n), gloss (n) and retro-reflection (n) of object pixels;
    ``k`` are primitive indices, (lx, ly, lz) box-local hit coordinates, ``pz`` heights."""
    n = len(k)
    mat = prims.material[k]
    half = prims.half[k]
    alb = prims.color[:, k]
    emi = np.zeros((3, n), np.float32)
    gloss = np.zeros(n, np.float32)
    retro = np.zeros(n, np.float32)
    axis = face % 3
    a = np.where(axis == 0, ly, lx)  # horizontal coordinate along the face
    hz = half[:, 2]
    zr = lz / hz
    top = face == 2
    bottom = face == 5
    koff = (k * 37).astype(np.float32)
    ptex = _tex("fine", a * 9 + koff, lz * 9)
    order = np.argsort(mat, kind="stable")
    bounds = np.searchsorted(mat[order], np.arange(len(MATERIALS) + 1))
    groups = {name: order[bounds[j] : bounds[j + 1]] for j, name in enumerate(MATERIALS)}
    s = _Surface(mat, half, alb, emi, gloss, retro, axis, a, hz, zr, top, bottom, koff, ptex, pz, lx, ly, lz, face, k,
                 prims, look, night)
    for name, shader in _SHADERS:
        i = groups[name]
        if len(i):
            shader(s, i)
    return alb, emi, gloss, retro


def _normals(lx, ly, lz, face: np.ndarray, k: np.ndarray, prims: _Prims):
    """World-frame unit normals (nx, ny, nz) of object hits."""
    axis = face % 3
    sign = np.where(face < 3, np.float32(1.0), np.float32(-1.0))
    qx = np.where(axis == 0, sign, 0.0).astype(np.float32)
    qy = np.where(axis == 1, sign, 0.0).astype(np.float32)
    qz = np.where(axis == 2, sign, 0.0).astype(np.float32)
    curved = np.flatnonzero(face == _FACE_CURVED)
    if len(curved):
        r2 = prims.half[k[curved]] ** 2
        cx, cy, cz = lx[curved] / r2[:, 0], ly[curved] / r2[:, 1], lz[curved] / r2[:, 2]
        inv = 1.0 / (np.sqrt(cx * cx + cy * cy + cz * cz) + 1e-12)
        qx[curved], qy[curved], qz[curved] = cx * inv, cy * inv, cz * inv
    ca, sa = prims.cos32[k], prims.sin32[k]
    return ca * qx - sa * qy, sa * qx + ca * qy, qz


def _ground_shadow(scene: Scene, hits: Hits, look: Look, gidx: np.ndarray, P_g: np.ndarray):
    """Sun visibility (1 = lit) of ground pixels (cast shadows of all primitives) and an ambient
    occlusion factor near vehicles."""
    cam = scene.camera
    H, W = cam.height, cam.width
    vis = np.ones(len(gidx), np.float32)
    ao = np.ones(len(gidx), np.float32)
    if not len(gidx):
        return vis, ao
    where = np.full(H * W, -1, np.int64)
    where[gidx] = np.arange(len(gidx))
    where = where.reshape(H, W)
    sdir = look.sun_dir.astype(np.float64)
    prims = hits.prims
    shadow_on = float(look.sun.max()) > 0.5 and sdir[2] > 0.05
    sd = tuple(np.float32(v) for v in sdir)
    gx, gy, gz = P_g[:, 0], P_g[:, 1], P_g[:, 2]
    n = len(prims.semantic)
    shadow_rects: list = [None] * n
    if shadow_on and n:
        corners = np.stack(prims.corners)  # (n, 8, 3)
        near = np.abs(prims.center[:, 1]) < 120.0
        proj = corners - (corners[..., 2:3] / sdir[2]) * sdir[None, None, :]
        base = corners * np.array([1.0, 1.0, 0.0])
        idx = np.flatnonzero(near)
        for j, r in zip(idx, _rects_of_points(np.concatenate([base[idx], proj[idx]], axis=1), cam)):
            shadow_rects[j] = r
    for k in range(n):
        r = shadow_rects[k]
        if r is not None:
            r0, r1, c0, c1 = r
            sel = where[r0:r1, c0:c1].ravel()
            sel = sel[sel >= 0]
            if len(sel):
                tk = _intersect(prims, k, (gx[sel], gy[sel], gz[sel]), *sd)
                vis[sel[np.isfinite(tk)]] = 0.0
        if prims.material[k] == _MAT["paint"]:
            h = prims.half[k]
            grow = 0.9
            foot = np.array([[sx * (h[0] + grow), sy * (h[1] + grow), 0.0] for sx in (-1, 1) for sy in (-1, 1)])
            ca, sa = float(prims.cos[k]), float(prims.sin[k])
            rot = np.array([[ca, -sa, 0.0], [sa, ca, 0.0], [0.0, 0.0, 1.0]])
            pts = foot @ rot.T + np.array([prims.center[k][0], prims.center[k][1], 0.0])
            r = _screen_rect(pts, cam, margin=1)
            if r is None:
                continue
            r0, r1, c0, c1 = r
            sel = where[r0:r1, c0:c1].ravel()
            sel = sel[sel >= 0]
            if not len(sel):
                continue
            ddx = gx[sel] - float(prims.center[k][0])
            ddy = gy[sel] - float(prims.center[k][1])
            d = np.maximum(np.abs(ca * ddx + sa * ddy) - float(h[0]), np.abs(-sa * ddx + ca * ddy) - float(h[1]))
            ao[sel] = np.minimum(ao[sel], np.clip(0.25 + 0.75 * (d + 0.1) / grow, 0.25, 1.0))
    return vis, ao


_LUT_SIZE = 4096
_LUT_MAX = 4.0
_TONE_LUT: list[np.ndarray] = []
_VIGNETTE: dict[tuple[int, int], np.ndarray] = {}


def _tone_lut() -> np.ndarray:
    """uint8 output for sensor values x = _LUT_MAX * (i / (N-1))**2 (sqrt-spaced so dark tones
    are finely resolved): linear with a soft shoulder, then display gamma 1/2.2."""
    if not _TONE_LUT:
        x = _LUT_MAX * (np.arange(_LUT_SIZE, dtype=np.float64) / (_LUT_SIZE - 1)) ** 2
        y = x / (1.0 + x**4) ** 0.25
        _TONE_LUT.append(np.clip(np.power(y, 1.0 / 2.2) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return _TONE_LUT[0]


def _vignette(h: int, w: int) -> np.ndarray:
    """Squared normalised distance from the image centre (1 at the corners)."""
    v = _VIGNETTE.get((h, w))
    if v is None:
        yy = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / (h / 2)
        xx = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / (w / 2)
        wx, wy = w * w / (w * w + h * h), h * h / (w * w + h * h)
        v = xx[None, :] ** 2 * wx + yy[:, None] ** 2 * wy
        if len(_VIGNETTE) > 8:
            _VIGNETTE.clear()
        _VIGNETTE[(h, w)] = v
    return v


@dataclass
class _Lit:
    """The hit pixels of a frame: where (flat index, ray, distance, point), what (albedo,
    emission, gloss, retro-reflection) and how they face (unit normal)."""

    hit: np.ndarray
    th: np.ndarray
    dxh: np.ndarray
    dyh: np.ndarray
    dzh: np.ndarray
    dnorm: np.ndarray
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    alb: np.ndarray
    emi: np.ndarray | None
    gloss: np.ndarray
    retro: np.ndarray
    nx: np.ndarray
    ny: np.ndarray
    nz: np.ndarray
    gsel: np.ndarray  # hit pixels on the ground, in the order of the ground's own arrays


def shade(scene: Scene, hits: Hits, ground, look: Look, rng: np.random.Generator) -> np.ndarray:
    """Linear radiance -> camera response -> (H, W, 3) uint8 RGB."""
    cam = scene.camera
    H, W = cam.height, cam.width
    pid = hits.pid.ravel()
    gmask, _, gmat, P_g = ground
    gidx = np.flatnonzero(gmask.ravel())
    out = np.empty((3, H * W), np.float32)
    sky = np.flatnonzero(pid < 0)
    if len(sky):
        out[:, sky] = _sky(*_flat_rays(cam, sky), look)
    s = _surfaces(scene, hits, gmat, P_g, look)
    E = _night_light(scene, look, s) if look.night else _daylight(scene, hits, look, s, gidx, P_g)
    r = s.alb * E
    _add_reflections(r, s, look)
    if look.night:
        r += s.emi
    fog = np.exp(s.th * s.dnorm * np.float32(-1.0 / look.haze_dist))
    r = r * fog + _c(look.haze) * (1.0 - fog)
    out[:, s.hit] = r
    return _camera_response(out, H, W, look, rng)


def _surfaces(scene: Scene, hits: Hits, gmat, P_g, look: Look) -> _Lit:
    """Geometry and materials of every hit pixel (ground and objects)."""
    cam = scene.camera
    night = look.night
    t = hits.t.ravel()
    pid = hits.pid.ravel()
    hit = np.flatnonzero(pid >= 0)
    ph = pid[hit]
    th = t[hit]
    dxh, dyh, dzh = _flat_rays(cam, hit)
    dnorm = np.sqrt(dxh * dxh + dyh * dyh + dzh * dzh)
    px, py, pz = th * dxh, th * dyh, np.float32(cam.mount_height) + th * dzh
    N = len(hit)
    alb = np.empty((3, N), np.float32)
    emi = np.zeros((3, N), np.float32) if night else None
    gloss = np.zeros(N, np.float32)
    retro = np.zeros(N, np.float32)
    nx = np.zeros(N, np.float32)
    ny = np.zeros(N, np.float32)
    nz = np.ones(N, np.float32)
    gsel = np.flatnonzero(ph == 0)  # same order as gidx / P_g
    osel = np.flatnonzero(ph > 0)
    if len(gsel):
        off = (float(scene.road.dash_phase * 7.3), float(scene.road.lane_width * 11.1))
        gx = np.clip(P_g[:, 0], -1e5, 1e5)
        gy = np.clip(P_g[:, 1], -1e5, 1e5)
        alb[:, gsel] = _shade_ground(gx, gy, gmat, scene.road, look, off)
        pz[gsel] = 0.0
    if len(osel):
        k = ph[osel] - 1
        prims = hits.prims
        ca, sa = prims.cos32[k], prims.sin32[k]
        ddx, ddy = px[osel] - prims.cx32[k], py[osel] - prims.cy32[k]
        lx, ly, lz = ca * ddx + sa * ddy, ca * ddy - sa * ddx, pz[osel] - prims.cz32[k]
        f = np.where(prims.curved[k], np.int8(_FACE_CURVED), _box_faces(lx, ly, lz, prims.half[k]))
        a, e, g, rt = _shade_objects(pz[osel], lx, ly, lz, f, k, prims, look, night)
        alb[:, osel] = a
        if night:
            emi[:, osel] = e
        gloss[osel] = g
        retro[osel] = rt
        nx[osel], ny[osel], nz[osel] = _normals(lx, ly, lz, f, k, prims)
    return _Lit(hit, th, dxh, dyh, dzh, dnorm, px, py, pz, alb, emi, gloss, retro, nx, ny, nz, gsel)


def _daylight(scene: Scene, hits: Hits, look: Look, s: _Lit, gidx: np.ndarray, P_g) -> np.ndarray:
    """Irradiance by day: the sun (shadowed on the ground) plus sky ambient (occluded on the ground)."""
    amb = 0.6 + 0.4 * s.nz
    vis, ao = _ground_shadow(scene, hits, look, gidx, P_g)
    sx, sy, sz = (float(v) for v in look.sun_dir)
    lam = np.maximum(s.nx * sx + s.ny * sy + s.nz * sz, 0.0)
    lam[s.gsel] *= vis
    amb[s.gsel] *= ao
    return _c(look.sun) * lam + _c(look.ambient) * amb


def _night_light(scene: Scene, look: Look, s: _Lit) -> np.ndarray:
    """Irradiance by night: ambient, the ego car's low beams and the street lamps."""
    nx, ny, nz, px, py, pz = s.nx, s.ny, s.nz, s.px, s.py, s.pz
    amb = 0.6 + 0.4 * nz
    E = _c(look.ambient) * amb
    # ego low beams: one source in front of the camera; beam pattern in tangent space
    Lx, Ly, Lz = px, py - 1.0, pz - 0.65
    hor = np.sqrt(Lx * Lx + Ly * Ly) + 1e-6
    dist2 = hor * hor + Lz * Lz
    tv = Lz / hor
    th_ = Lx / np.maximum(Ly, 1e-3)
    beam = np.exp(-((th_ / 0.45) ** 2)) * (Ly > 0.2)
    cutoff = 0.03 + 0.97 / (1.0 + np.exp(np.clip((tv + 0.012) / 0.008, -30.0, 30.0)))
    pattern = (np.exp(-(((tv + 0.025) / 0.03) ** 2)) + 0.05) * cutoff
    cosl = np.maximum(-(nx * Lx + ny * Ly + nz * Lz), 0.0) / np.sqrt(dist2)
    head = look.headlight * beam * pattern * cosl / np.maximum(dist2, 1.0) * (1.0 + 12.0 * s.retro)
    E += _c((1.0, 0.97, 0.9)) * head
    for q in scene.lamps:
        vx, vy, vz = np.float32(q[0]) - px, np.float32(q[1]) - py, np.float32(q[2]) - pz
        d2 = vx * vx + vy * vy + vz * vz
        inv = 1.0 / np.sqrt(d2)
        cosn = np.maximum((nx * vx + ny * vy + nz * vz) * inv, 0.0)
        down = np.maximum(vz * inv, 0.0)
        E += _c(look.lamp_colour) * (look.lamp_power * cosn * down * np.sqrt(down) / (d2 + 1.0))
    return E


def _add_reflections(r: np.ndarray, s: _Lit, look: Look) -> None:
    """Glossy pixels reflect the sky, more towards grazing angles (Fresnel-like), in place."""
    m = np.flatnonzero(s.gloss > 0)
    if len(m):
        inv = 1.0 / s.dnorm[m]
        ux, uy, uz = s.dxh[m] * inv, s.dyh[m] * inv, s.dzh[m] * inv
        mx, my, mz = s.nx[m], s.ny[m], s.nz[m]
        dn = ux * mx + uy * my + uz * mz
        rx, ry, rz = ux - 2 * dn * mx, uy - 2 * dn * my, uz - 2 * dn * mz
        skyc = _sky(rx, ry, np.abs(rz), look) * np.where(rz > 0, 1.0, 0.25).astype(np.float32)
        r[:, m] += skyc * (s.gloss[m] * (0.1 + 0.9 * (1.0 - np.abs(dn)) ** 3))


def _camera_response(out: np.ndarray, H: int, W: int, look: Look, rng: np.random.Generator) -> np.ndarray:
    """Linear radiance (3, H*W) -> exposure, vignetting, bloom, blur, sensor noise, tone curve ->
    (H, W, 3) uint8."""
    img = out.reshape(3, H, W)
    # auto exposure: scale the median luminance (a subsample of pixels) to the frame's target
    lum = 0.3 * out[0, ::7] + 0.6 * out[1, ::7] + 0.1 * out[2, ::7]
    med = float(np.median(lum)) + 1e-6
    exposure = float(np.clip(look.exposure / med, *look.exposure_range))
    img *= (1.0 - look.vignetting * _vignette(H, W))[None] * _c(exposure * look.white_balance)[:, :, None]
    planes = []
    for ch in range(3):
        x = img[ch]
        if look.bloom > 0:
            bright = np.clip(x - 1.0, 0.0, 20.0)
            if bright.any():
                small = cv2.resize(bright, (max(1, W // 4), max(1, H // 4)), interpolation=cv2.INTER_AREA)
                glow = cv2.GaussianBlur(small, (0, 0), sigmaX=max(W, H) / 320.0)
                glow += 0.5 * cv2.GaussianBlur(small, (0, 0), sigmaX=max(W, H) / 100.0)
                x = x + look.bloom * cv2.resize(glow, (W, H), interpolation=cv2.INTER_LINEAR)
        planes.append(cv2.GaussianBlur(x, (0, 0), sigmaX=look.blur))
    x = np.maximum(np.stack(planes), 0.0)
    # sensor noise: signal-dependent (shot) + read noise, partly correlated across channels
    sigma = np.sqrt(look.shot_noise * np.minimum(x, 1.5) + look.read_noise**2)
    noise = rng.standard_normal((3, H, W), dtype=np.float32)
    noise *= 0.8
    noise += 0.6 * rng.standard_normal((1, H, W), dtype=np.float32)
    x += sigma * noise
    np.clip(x, 0.0, _LUT_MAX, out=x)
    q = np.sqrt(x * np.float32(1.0 / _LUT_MAX)) * np.float32(_LUT_SIZE - 1) + np.float32(0.5)
    return np.ascontiguousarray(_tone_lut()[q.astype(np.int32)].transpose(1, 2, 0))


# ----------------------------------------------------------------------------------- frontend
def render_scene(scene: Scene, night: bool = False, rng: np.random.Generator | None = None) -> Frame:
    """Renders ``scene`` (its own camera) by day or night; ``rng`` drives appearance only
    (lighting, textures' tints, sensor noise): labels depend on the scene alone."""
    rng = rng if rng is not None else np.random.default_rng(0)
    look = sample_look(rng, night)
    hits = cast(scene)
    sem, depth, inst, ground = labels_from_hits(scene, hits)
    boxes, labels, iids, frac = boxes_from_instances(inst, scene, hits.own_pixels)
    image = shade(scene, hits, ground, look, rng)
    return Frame(
        image=image,
        semantic=sem,
        depth=depth,
        instances=inst,
        boxes=boxes,
        labels=labels,
        instance_ids=iids,
        visible_fraction=frac,
        camera=scene.camera,
        night=bool(night),
    )


def scene_for(seed: int, index: int, camera: Camera | None = None) -> Scene:
    """The scene of frame ``index`` of the world with ``seed`` (independent of day/night)."""
    return sample_scene(np.random.default_rng([int(seed), int(index), 0]), camera or Camera.default())


def render_frame(seed: int, index: int, camera: Camera | None = None, night: bool = False) -> Frame:
    """Frame ``index`` of the synthetic world ``seed``: a pure function of its arguments. Day and
    night renderings of the same (seed, index, camera) share the scene and hence all labels."""
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    scene = scene_for(seed, index, camera)
    return render_scene(scene, night, np.random.default_rng([int(seed), int(index), 1, int(bool(night))]))


__all__ = [
    "MIN_VISIBLE_FRACTION",
    "MIN_VISIBLE_PIXELS",
    "Hits",
    "Look",
    "boxes_from_instances",
    "cast",
    "labels_from_hits",
    "render_frame",
    "render_scene",
    "sample_look",
    "scene_for",
]
