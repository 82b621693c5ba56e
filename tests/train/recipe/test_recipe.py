"""Recipe validation: every mistake is one line naming the file and the dotted key."""

import pytest

from tests import REPO
from training.recipe.config import ConfigError
from training.recipe.core import load_recipe

QUICK = REPO / "config" / "quick.yaml"


def test_shipped_recipes_load():
    for path in sorted((REPO / "config").glob("*.yaml")):
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
