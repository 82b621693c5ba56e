"""Recipe validation: every mistake is one line naming the file and the dotted key."""

import pytest

from tests import REPO
from training.recipe.config import ConfigError
from training.recipe.core import load_recipe

QUICK = REPO / "config" / "quick.yaml"


def test_shipped_recipes_load():
    for path in sorted((REPO / "config").glob("*.yaml")) + sorted((REPO / "config" / "real").glob("*.yaml")):
        if path.name.startswith("perception"):
            continue  # node parameters, not a recipe
        recipe = load_recipe(path)
        assert recipe.tasks and recipe.optim.epochs > 0


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "optim.lrr: unknown key (known: accumulate, amp, batch_size"),
    ("optim.lr=abc", "optim.lr: expected a number, got str 'abc'"),
    ("optim.epochs=2.5", "optim.epochs: expected an integer, got float 2.5"),
    ("data.cache=yes please", "data.cache: expected true/false"),
    ("data.input_size=[100,64]", "data: input_size 100x64 must be positive multiples of 32"),
    ("data.input_size=[64]", "data.input_size: expected 2 values, got 1"),
    ("tasks.lidar={}", "tasks.lidar: unknown task (registered: depth, detection, segmentation, super_resolution)"),
    ("tasks.depth.min_depth=-1", "tasks.depth: depth needs 0 < min_depth < max_depth"),
    ("tasks.detection.topk=5", "tasks.detection.topk: unknown key"),
    ("balancer.name=magic", "balancer.name: unknown balancer 'magic'"),
    ("optim.optimizer=lion", "optim.optimizer: expected one of ['adamw', 'sgd'], got 'lion'"),
    ("model.channels=[8,8]", "model: channels needs 5 entries"),
])
def test_invalid_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(QUICK, [override])
    text = str(err.value)
    assert text.startswith(f"{QUICK}: ") and message in text and "\n" not in text


def test_overrides_are_parsed_as_yaml():
    recipe = load_recipe(QUICK, ["optim.epochs=3", "data.input_size=[64, 32]", "tasks={depth: {max_depth: 50}}"])
    assert recipe.optim.epochs == 3 and recipe.data.input_size == (64, 32)
    assert list(recipe.tasks) == ["depth"] and recipe.task_options()["depth"].max_depth == 50.0


def test_real_recipes_and_list_index_overrides():
    """config/real: Cityscapes' 19 train classes and 8 instance classes, a pretrained ResNet-18,
    scale augmentation; `--set data.train.1.root=...` reaches the second source."""
    from mtl_perception.data.readers.cityscapes_labels import INSTANCE_CLASSES, TRAIN_CLASSES

    single = load_recipe(REPO / "config/real/cityscapes_resnet18.yaml")
    mixed = load_recipe(REPO / "config/real/cityscapes_bdd_images.yaml", ["data.train.1.root=/elsewhere/bdd",
                                                                          "data.train.2.weight=0.4"])
    for recipe in (single, mixed):
        assert tuple(recipe.data.semantic_classes) == TRAIN_CLASSES
        assert tuple(recipe.data.detection_classes) == INSTANCE_CLASSES
        assert recipe.model.backbone == "resnet18" and recipe.model.pretrained is True
        assert recipe.data.augment.geometric and recipe.data.input_size == (512, 256)
    assert [(s.format, s.root, s.weight, s.tasks) for s in mixed.data.train] == [
        ("cityscapes", "data/cityscapes", 0.5, ["segmentation", "depth", "detection", "super_resolution"]),
        ("bdd100k", "/elsewhere/bdd", 0.3, ["detection"]), ("images", "data/photos", 0.4, ["super_resolution"])]
    assert mixed.data.train[1].class_map == {"pedestrian": "person"}
    with pytest.raises(ConfigError, match="'7' is not an index of a list of 3"):
        load_recipe(REPO / "config/real/cityscapes_bdd_images.yaml", ["data.train.7.root=x"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_recipe(bad)
    top = tmp_path / "top.yaml"
    top.write_text("epochs: 3\n")
    with pytest.raises(ConfigError, match="top.yaml: epochs: unknown key"):
        load_recipe(top)
