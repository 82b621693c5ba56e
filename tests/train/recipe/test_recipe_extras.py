"""Recipe sections for SAM, SWA and distillation: validated like every recipe key."""
import pytest

from training.recipe.config import ConfigError, build
from training.recipe.extras import DistillConfig, SAMConfig, SWAConfig


def test_sections_build_with_defaults_and_reject_bad_values():
    assert build(SAMConfig, {"rho": 0.1, "adaptive": True}, "sam").adaptive
    swa = build(SWAConfig, {"start_epoch": 4, "every": "step", "lr": 5e-4}, "swa")
    assert swa.every == "step" and swa.lr == 5e-4
    with pytest.raises(ValueError, match="leaves nothing to average"):
        swa.check_epochs(4)
    distill = build(DistillConfig, {"teachers": {"depth": "runs/d/last.pt"}, "weights": {"depth": 0.5}}, "distill")
    assert distill.weight("depth") == 0.5 and distill.temperature == 2.0
    with pytest.raises(ValueError, match="teachers.depth: not a task"):
        distill.check_tasks(["segmentation"])
    for cls, data, message in [
        (SAMConfig, {"rho": 0.0}, "sam: rho must be positive"),
        (SAMConfig, {"rhoo": 0.1}, "sam.rhoo: unknown key"),
        (SWAConfig, {"every": "batch"}, "swa.every: expected one of"),
        (DistillConfig, {}, "distill: teachers: at least one"),
        (DistillConfig, {"teachers": {"depth": "a.pt"}, "weights": {"segmentation": 1.0}},
         "distill: weights.segmentation: no teacher"),
        (DistillConfig, {"teachers": {"depth": "a.pt"}, "feature_levels": ["s8"]}, "unknown level 's8'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build(cls, data, cls.__name__[:-6].lower())
