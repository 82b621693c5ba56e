"""Hand-built contract models and bags for the runtime's tests, with answers known in closed form.

Needs onnx and the runtime only (no torch): the runtime-only test run uses it too. Models exported
through training's exporter are in tests/train/exported_models.py."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from mtl_perception.contract import METADATA_KEY, InputSpec, ModelMetadata

ALL_TASKS = ("segmentation", "depth", "detection", "super_resolution")
SEMANTIC = ("road", "sidewalk", "lane_marking", "building", "sky", "pole", "traffic_sign", "vehicle", "pedestrian")
DETECTION = ("vehicle", "pedestrian", "traffic_sign")


BRIGHT_BOX_CLASSES = ("background", "bright")
#: The second, fixed detection of the bright-box model: (x1, y1, x2, y2) in model pixels, score, class.
FIXED_BOX, FIXED_SCORE, FIXED_CLASS = (0.0, 0.0, 8.0, 8.0), 0.4, 1
BRIGHT_SCORE, BRIGHT_CLASS = 0.9, 0


def export_bright_box_model(path: Path, input_size=(64, 48), metadata: bool = True,
                            tasks: Sequence[str] = ALL_TASKS, name: str = "bright-box", color_order: str = "rgb",
                            resize: str = "stretch"):
    """A hand-built contract model whose answers are known in closed form (RGB input, W x H):

    - segmentation: 1 ("bright") where R > 127, else 0 ("background");
    - depth: R / 32 metres (min_depth 0.5, max_depth 8.0, so R = 0 is invalid);
    - detection (top_k 2): the tight box of the R > 127 pixels, x2/y2 exclusive, score 0.9,
      class 0 ("vehicle"); then FIXED_BOX with score 0.4, class 1 ("pedestrian");
    - super_resolution (scale 2): the input enlarged by pixel repetition.

    The metadata is the contract's document under `METADATA_KEY`, as the exporter writes it;
    `metadata=False` leaves it out. `tasks` keeps only those tasks' outputs (graph and metadata),
    e.g. to build bundle members. `color_order="bgr"` only declares BGR input in the metadata (the
    graph still reads channel 0), for models that disagree with their bundle. `resize` is the
    metadata's `input.resize` (how callers fit camera frames to the input). Returns the
    ModelMetadata.
    """
    import onnx
    from onnx import TensorProto, helper

    from mtl_perception.contract import TaskSpec

    width, height = input_size
    f32 = lambda name, values, dims: helper.make_tensor(name, TensorProto.FLOAT, dims, values)  # noqa: E731
    i64 = lambda name, values: helper.make_tensor(name, TensorProto.INT64, [len(values)], values)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["image", "c0", "c1", "c3"], ["r_u8"]),
        helper.make_node("Cast", ["r_u8"], ["r4"], to=TensorProto.FLOAT),
        helper.make_node("Squeeze", ["r4", "c3"], ["r"]),
        helper.make_node("Greater", ["r", "half"], ["mask"]),
        helper.make_node("Cast", ["mask"], ["segmentation"], to=TensorProto.UINT8),
        helper.make_node("Div", ["r", "thirty_two"], ["depth"]),
        helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["maskf", "c1"], ["cols"], keepdims=0),  # [1, W]
        helper.make_node("ReduceMax", ["maskf", "c2"], ["rows"], keepdims=0),  # [1, H]
        helper.make_node("ArgMax", ["cols"], ["x1"], axis=1, keepdims=1),
        helper.make_node("ArgMax", ["cols"], ["x2m"], axis=1, keepdims=1, select_last_index=1),
        helper.make_node("ArgMax", ["rows"], ["y1"], axis=1, keepdims=1),
        helper.make_node("ArgMax", ["rows"], ["y2m"], axis=1, keepdims=1, select_last_index=1),
        helper.make_node("Add", ["x2m", "one_i"], ["x2"]),
        helper.make_node("Add", ["y2m", "one_i"], ["y2"]),
        helper.make_node("Concat", ["x1", "y1", "x2", "y2"], ["box_i"], axis=1),  # [1, 4]
        helper.make_node("Cast", ["box_i"], ["box_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["box_f", "c1"], ["box"]),  # [1, 1, 4]
        helper.make_node("Concat", ["box", "fixed_box"], ["detection_boxes"], axis=1),  # [1, 2, 4]
        helper.make_node("Identity", ["scores_c"], ["detection_scores"]),
        helper.make_node("Identity", ["classes_c"], ["detection_classes"]),
        helper.make_node("Resize", ["image", "", "sr_scales"], ["super_resolution"], mode="nearest",
                         nearest_mode="floor", coordinate_transformation_mode="asymmetric"),
    ]
    inits = [
        i64("c0", [0]), i64("c1", [1]), i64("c2", [2]), i64("c3", [3]), i64("one_i", [1]),
        f32("half", [127.0], []), f32("thirty_two", [32.0], []),
        f32("fixed_box", list(FIXED_BOX), [1, 1, 4]),
        f32("scores_c", [BRIGHT_SCORE, FIXED_SCORE], [1, 2]),
        helper.make_tensor("classes_c", TensorProto.INT32, [1, 2], [BRIGHT_CLASS, FIXED_CLASS]),
        f32("sr_scales", [1.0, 2.0, 2.0, 1.0], [4]),
    ]
    outputs = {
        "segmentation": [helper.make_tensor_value_info("segmentation", TensorProto.UINT8, [1, height, width])],
        "depth": [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1, height, width])],
        "detection": [helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, [1, 2, 4]),
                      helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, [1, 2]),
                      helper.make_tensor_value_info("detection_classes", TensorProto.INT32, [1, 2])],
        "super_resolution": [helper.make_tensor_value_info("super_resolution", TensorProto.UINT8,
                                                           [1, 2 * height, 2 * width, 3])],
    }
    graph = helper.make_graph(
        nodes, "bright_box", [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, height, width, 3])],
        [info for task in ALL_TASKS if task in tasks for info in outputs[task]], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = ModelMetadata(
        name=name, input=InputSpec(name="image", height=height, width=width, color_order=color_order, resize=resize),
        tasks={
            "depth": TaskSpec(kind="depth", outputs={"depth": "depth"}, min_depth=0.5, max_depth=8.0),
            "detection": TaskSpec(kind="detection", outputs={
                "boxes": "detection_boxes", "scores": "detection_scores", "classes": "detection_classes"},
                class_names=DETECTION, top_k=2),
            "segmentation": TaskSpec(kind="segmentation", outputs={"class_map": "segmentation"},
                                     class_names=BRIGHT_BOX_CLASSES),
            "super_resolution": TaskSpec(kind="super_resolution", outputs={"image": "super_resolution"}, scale=2),
        },
        provenance={"test": "bright_box"},
    )
    meta.tasks = {t: spec for t, spec in meta.tasks.items() if t in tasks}
    meta.validate()
    if metadata:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, meta.to_json()
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return meta


# ------------------------------------------------------------------ bags for the bright-box model
#: Hand-made bag scene for `export_bright_box_model` (model 64x48, camera 128x96 = exactly 2x):
#: in model pixels, the red rectangle (R = 255) covers x 20..40, y 10..30; labels below.
BRIGHT_BAG_CAMERA = (128, 96)
BRIGHT_BAG_RECT = (20, 10, 40, 30)  # model pixels, x2/y2 exclusive
BRIGHT_BAG_GT_RECT = (20, 10, 45, 30)  # segmentation label 1 ("bright"), model pixels
BRIGHT_BAG_IGNORED_ROWS = 4  # model rows 0..3 are unlabelled (255)
BRIGHT_BAG_DEPTH_ROWS = (36, 48)  # model rows labelled 4 m (besides 8 m inside the rectangle)
BRIGHT_BAG_PEDESTRIAN = (0.0, 0.0, 8.0, 16.0)  # model pixels: IoU 0.5 with FIXED_BOX


def bright_box_frame():
    """(camera RGB, segmentation, depth, boxes, class names) of the hand-made scene, camera pixels."""
    w, h = BRIGHT_BAG_CAMERA
    s = 2  # camera pixels per model pixel
    rgb = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = BRIGHT_BAG_RECT
    rgb[y1 * s:y2 * s, x1 * s:x2 * s] = (255, 0, 0)
    seg = np.zeros((h, w), np.uint8)
    gx1, gy1, gx2, gy2 = BRIGHT_BAG_GT_RECT
    seg[gy1 * s:gy2 * s, gx1 * s:gx2 * s] = 1
    seg[: BRIGHT_BAG_IGNORED_ROWS * s] = 255
    depth = np.full((h, w), np.nan, np.float32)
    depth[y1 * s:y2 * s, x1 * s:x2 * s] = 8.0
    r0, r1 = BRIGHT_BAG_DEPTH_ROWS
    depth[r0 * s:r1 * s] = 4.0
    boxes = np.array([[x1 * s, y1 * s, x2 * s, y2 * s], [v * s for v in BRIGHT_BAG_PEDESTRIAN], [100, 70, 120, 90]],
                     np.float64)
    names = ["vehicle", "pedestrian", "bicycle"]  # the model has no "bicycle": ignored and counted
    return rgb, seg, depth, boxes, names


def write_bright_box_bag(path: Path, storage: str = "sqlite3", frames: int = 20, rate: float = 10.0,
                         bad: dict = None, start_ns: int = 1_704_067_200_000_000_000):
    """Writes the hand-made scene `frames` times (camera bgr8 + camera_info + all three labels,
    one stamp per frame) with rosbags. `bad` maps frame index -> "encoding" (an nv24 image, not converted) or
    "short" (data shorter than height*step). Returns the stamps (ns)."""
    from mtl_perception.bags.io import BagWriter, camera_info_msg, detections_msg, image_msg, make_header

    rgb, seg, depth, boxes, names = bright_box_frame()
    h, w = seg.shape
    k = np.array([[100.0, 0, 63.5], [0, 100.0, 47.5], [0, 0, 1]])
    stamps = []
    with BagWriter(path, storage) as writer:
        store = writer.store
        for i in range(frames):
            stamp = start_ns + int(round(i * 1e9 / rate))
            stamps.append(stamp)
            header = make_header(stamp, "camera_optical_frame", store)
            image = image_msg(np.ascontiguousarray(rgb[..., ::-1]), "bgr8", header, store)
            kind = (bad or {}).get(i)
            if kind == "encoding":
                image.encoding = "nv24"
                image.step = w * 2
                image.data = image.data[: h * w * 2].copy()
            elif kind == "short":
                image.data = image.data[: len(image.data) // 2].copy()
            # labels first, then the image: matching must not depend on the order
            writer.write("/ground_truth/segmentation", stamp, image_msg(seg, "mono8", header, store))
            writer.write("/camera/image_raw", stamp, image)
            writer.write("/camera/camera_info", stamp, camera_info_msg(header, w, h, k, store))
            writer.write("/ground_truth/depth", stamp, image_msg(depth, "32FC1", header, store))
            writer.write("/ground_truth/detections", stamp,
                         detections_msg(header, boxes, [1.0] * len(names), names, store))
    return stamps
