"""The kinds under letterbox and crop models: what render publishes (boxes in camera pixels,
padding and unseen camera pixels invalid, intrinsics through the mapping) and that the output
bag's messages decode back to the model's outputs, at both output resolutions."""
from __future__ import annotations

import numpy as np
import pytest

from mtl_perception.contract import TaskSpec
from mtl_perception.inference.preprocess import model_input
from mtl_perception.kinds import registry
from mtl_perception.kinds.base import RenderSettings

TASKS = {
    "seg": TaskSpec("segmentation", {}, class_names=("road", "car", "sky")),
    "depth": TaskSpec("depth", {}, min_depth=0.5, max_depth=8.0),
    "det": TaskSpec("detection", {}, class_names=("car", "person"), top_k=2),
}
#: camera 128x72 into 32x24: letterbox scale 1/4, image rows 3..21; crop scale 1/3, camera columns 16..112
CAMERA_BOXES = {"letterbox": [[16, 0, 48, 28], [64, 20, 120, 68]], "crop": [[28, 6, 52, 30], [64, 24, 106, 60]]}


def _outputs():
    class_map = np.ones((24, 32), np.uint8)
    depth = np.full((24, 32), 4.0, np.float32)
    return {"seg": {"class_map": class_map}, "depth": {"depth": depth},
            "det": {"boxes": np.array([[4, 2, 12, 10], [16, 8, 30, 20]], np.float32),
                    "scores": np.array([0.9, 0.6], np.float32), "classes": np.array([0, 1], np.int32)}}


@pytest.mark.parametrize("mode", ["letterbox", "crop"])
def test_render_publishes_camera_pixels_and_marks_what_is_not_image(mode):
    camera = np.random.default_rng(0).integers(0, 256, (72, 128, 3), dtype=np.uint8)
    frame = model_input(camera, "rgb8", (32, 24), "rgb", mode)
    for resolution in ("model", "input"):
        out = registry.render(TASKS, _outputs(), frame, RenderSettings(output_resolution=resolution))
        np.testing.assert_allclose(out["detections"].detections.boxes, CAMERA_BOXES[mode], atol=1e-9)
        ids, depth = out["segmentation"].array, out["depth"].array
        image = np.zeros(ids.shape, bool)
        if resolution == "model":  # letterbox: the padded rows are not image
            rows = slice(3, 21) if mode == "letterbox" else slice(None)
            image[rows] = True
        else:  # crop: camera columns outside the crop were not seen
            columns = slice(16, 112) if mode == "crop" else slice(None)
            image[:, columns] = True
        assert (ids[image] == 1).all() and (ids[~image] == 255).all()
        assert (depth[image] == 4.0).all() and np.isnan(depth[~image]).all()


@pytest.mark.parametrize("mode", ["letterbox", "crop"])
@pytest.mark.parametrize("resolution", ["model", "input"])
def test_output_bag_decodes_back_to_the_outputs(tmp_path, mode, resolution):
    from mtl_perception.bags.evaluate import OutputBag, RecordedOutputs
    from mtl_perception.bags.io import make_header

    camera = np.random.default_rng(1).integers(0, 256, (72, 128, 3), dtype=np.uint8)
    frame = model_input(camera, "rgb8", (32, 24), "rgb", mode)
    bag = OutputBag(str(tmp_path / "out"), "sqlite3", "/p", TASKS, RenderSettings(output_resolution=resolution))
    stamp = 1_700_000_000_000_000_000
    bag.write(make_header(stamp, "cam"), stamp, _outputs(), frame)
    bag.close()
    recorded = RecordedOutputs(tmp_path / "out", "/p")
    back = registry.decode(TASKS, recorded.take(stamp), frame.mapping, "rgb")
    recorded.close()
    padding = np.zeros((24, 32), bool)
    if mode == "letterbox":
        padding[:3] = padding[21:] = True
    assert (back["seg"]["class_map"][~padding] == 1).all() and (back["seg"]["class_map"][padding] == 255).all()
    assert (back["depth"]["depth"][~padding] == 4.0).all() and np.isnan(back["depth"]["depth"][padding]).all()
    # boxes: clipped to the image's rows in the letterbox, else exactly the model's
    expected = [[4, 3, 12, 10], [16, 8, 30, 20]] if mode == "letterbox" else _outputs()["det"]["boxes"]
    np.testing.assert_allclose(back["det"]["boxes"], expected, atol=1e-4)
