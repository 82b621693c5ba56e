"""data.resize in the recipe: default stretch, the three modes, a bad value is one line."""

import pytest

from tests import REPO
from training.recipe.config import ConfigError
from training.recipe.core import load_recipe

QUICK = REPO / "config" / "quick.yaml"


def test_resize_defaults_to_stretch_and_takes_the_three_modes():
    assert load_recipe(QUICK).data.resize == "stretch"
    for mode in ("stretch", "letterbox", "crop"):
        assert load_recipe(QUICK, [f"data.resize={mode}"]).data.resize == mode


def test_a_bad_resize_is_one_line_naming_file_and_key():
    with pytest.raises(ConfigError) as err:
        load_recipe(QUICK, ["data.resize=fit"])
    assert str(err.value) == f"{QUICK}: data.resize: expected one of ['stretch', 'letterbox', 'crop'], got 'fit'"
