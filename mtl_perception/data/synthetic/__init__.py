"""Procedural synthetic driving world: the project's embedded default data.

``render_frame(seed, index, camera, night)`` returns one :class:`Frame` (RGB image, semantic
ids, planar depth, instance ids, occlusion-aware 2-D boxes) as a pure function of its arguments;
``generate_dataset`` writes many of them in the on-disk format of :mod:`mtl_perception.data.dataset`.
Needs numpy and OpenCV only.
"""
from mtl_perception.data.synthetic.render import (
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    render_frame,
    render_scene,
    scene_for,
)
from mtl_perception.data.synthetic.world import (
    DETECTION_CLASSES,
    MAX_DEPTH,
    SEMANTIC_CLASSES,
    SEMANTIC_COLORS,
    UNLABELLED,
    Box,
    Camera,
    Ellipsoid,
    Frame,
    Instance,
    Road,
    Scene,
    sample_scene,
)


def __getattr__(name: str):
    # generate_dataset / is_night are imported lazily so that `python -m
    # mtl_perception.data.synthetic.generate` does not find its module already imported.
    if name in ("generate_dataset", "is_night"):
        from mtl_perception.data.synthetic import generate

        return getattr(generate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DETECTION_CLASSES",
    "MAX_DEPTH",
    "MIN_VISIBLE_FRACTION",
    "MIN_VISIBLE_PIXELS",
    "SEMANTIC_CLASSES",
    "SEMANTIC_COLORS",
    "UNLABELLED",
    "Box",
    "Camera",
    "Ellipsoid",
    "Frame",
    "Instance",
    "Road",
    "Scene",
    "generate_dataset",
    "is_night",
    "render_frame",
    "render_scene",
    "sample_scene",
    "scene_for",
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
