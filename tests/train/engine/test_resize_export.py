"""data.resize end to end on the training side: a tiny letterbox run trains on the node's own
input for each photo, and its exported model says letterbox in the contract."""
import numpy as np
import pytest

from mtl_perception.contract import RESIZE_MODES
from mtl_perception.inference.loader import load_model
from mtl_perception.inference.preprocess import PAD_VALUE, model_input
from tests.train.tiny_mtl import tiny_recipe
from training.engine.export import export_checkpoint
from training.engine.trainer import LAST, Trainer

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.tiny_data(train=8, val=2)]


def test_letterbox_recipe_trains_on_the_node_input_and_exports_letterbox(tiny_data, tmp_path):
    """The 128x64 camera into a 64x64 input: scale 1/2, 16 rows of padding above and below."""
    recipe = tiny_recipe(tiny_data, tmp_path, optim={"epochs": 1, "batch_size": 4, "warmup_steps": 1},
                         data={"train": str(tiny_data / "train"), "val": str(tiny_data / "val"),
                               "input_size": [64, 64], "resize": "letterbox"},
                         tasks={"segmentation": {}, "depth": {}, "super_resolution": {}}, threads=1)
    trainer = Trainer(recipe, progress=False)
    photo = trainer.val_source.load(0)
    base = trainer.val_set.base(0)
    node = model_input(photo.image, "rgb8", (64, 64), "rgb", "letterbox")
    np.testing.assert_array_equal(base["image"], node.image)  # what the node feeds the model
    assert (base["image"][:16] == PAD_VALUE).all() and (base["semantic"][:16] == 255).all()
    assert np.isnan(base["depth"][48:]).all() and base["hr_image"].shape == (128, 128, 3)
    trainer.fit()
    export_checkpoint(tmp_path / LAST, tmp_path / "letterbox.onnx")
    meta = load_model(tmp_path / "letterbox.onnx").metadata
    assert meta.input.resize == "letterbox" and meta.input.dense_outputs == RESIZE_MODES["letterbox"]
    assert (meta.input.width, meta.input.height) == (64, 64)
