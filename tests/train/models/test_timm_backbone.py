"""timm backbones: training through the real Trainer, export with verification, pretrained weights
files, the backbone's own normalisation inside the graph, frozen stages, depthwise heads and the
combinations refused at recipe load."""
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from mtl_perception.data.dataset import MultiTaskDataset
from mtl_perception.inference.loader import load_model
from mtl_perception.inference.preprocess import resize_sample
from training.engine.checkpoint import load_checkpoint
from training.engine.export import check_compact, export_checkpoint
from training.engine.network import network_from_checkpoint, tasks_from_checkpoint
from training.engine.trainer import LAST, Trainer
from training.models.collapse import apply_overparam, compact_copy, conv_flops
from training.models.light_heads import SeparableConvBNAct, depthwise_heads
from training.models.timm_trunk import BackboneError, TimmTrunk, init_backbone
from training.recipe.config import ConfigError
from training.recipe.core import recipe_from_dict
from training.recipe.model import TrunkConfig
from training.recipe.overparam import OverparamConfig
from training.tasks.segmentation import SegmentationHead

#: TF-ported MobileNetV3: its pretrained_cfg normalises with mean = std = 0.5, not ImageNet's,
#: so a graph that kept the compact trunk's normalisation would be caught
BACKBONE = "tf_mobilenetv3_small_100"


pytestmark = pytest.mark.tiny_data(train=16, val=4)


def timm_recipe(data_root, out_dir, model=None, **overrides):
    doc = {
        "name": "timm", "seed": 7, "out_dir": str(out_dir),
        "data": {"train": str(data_root / "train"), "val": str(data_root / "val"), "input_size": [64, 32]},
        "model": {"backbone": BACKBONE, "fpn_channels": 16, **(model or {})},
        "optim": {"epochs": 1, "batch_size": 8, "warmup_steps": 1, "lr": 0.003},
        "export": {"verify_frames": 2},
    }
    doc.update(overrides)
    return recipe_from_dict(doc)


def other_encoder_state(name=BACKBONE, seed=123):
    """A second encoder of the same architecture with another random init (and random BN
    statistics, so that buffers are compared too)."""
    torch.manual_seed(seed)
    trunk = TimmTrunk(TrunkConfig(backbone=name))
    with torch.no_grad():
        for key, value in trunk.encoder.state_dict().items():
            if key.endswith("running_mean") or key.endswith("running_var"):
                value.copy_(torch.rand_like(value) + 0.5)
    return {k: v.clone().contiguous() for k, v in trunk.encoder.state_dict().items()}


def test_pretrained_file_trains_frozen_stages_hold_and_the_graph_normalises_like_the_backbone(tiny_data, tmp_path):
    weights = other_encoder_state()
    path = tmp_path / "encoder.safetensors"
    save_file(weights, str(path))
    recipe = timm_recipe(tiny_data, tmp_path / "run", model={
        "pretrained": str(path), "freeze_stages": 2, "encoder_lr_scale": 0.1, "head": "depthwise"})
    trainer = Trainer(recipe, progress=False, plots=False)
    encoder = trainer.model.trunk.encoder
    loaded = encoder.state_dict()
    assert set(loaded) == set(weights)
    for key, value in weights.items():  # every tensor, exactly
        assert torch.equal(loaded[key], value), key
    groups = [g for g in trainer.optimizer.param_groups if g.get("name") == "encoder"]
    assert groups and all(g["lr"] == pytest.approx(0.0003) for g in groups)
    encoder_ids = {id(p) for g in groups for p in g["params"]}
    assert encoder_ids == {id(p) for p in encoder.parameters()}

    frozen = trainer.model.trunk.frozen_prefixes
    assert frozen and frozen[-1].startswith("blocks")  # stem and first blocks, through stride 4
    frozen_keys = [k for k in weights if any(k.startswith(p + ".") for p in frozen)]
    trainable_keys = [k for k, p in encoder.named_parameters() if p.requires_grad]
    assert frozen_keys and trainable_keys
    trainer.fit()

    after = load_checkpoint(tmp_path / "run" / LAST)["model"]
    for key in frozen_keys:  # weights and BatchNorm statistics of the frozen stages unchanged
        assert torch.equal(after[f"trunk.encoder.{key}"], weights[key]), key
    assert any(not torch.equal(after[f"trunk.encoder.{k}"], weights[k]) for k in trainable_keys)
    assert any(not torch.equal(after[f"trunk.encoder.{k}"], weights[k])
               for k in weights if k.endswith("running_mean") and k not in frozen_keys)

    worst = export_checkpoint(tmp_path / "run" / LAST, tmp_path / "model.onnx")  # verified: onnxruntime vs torch
    assert worst["depth.max_rel"] <= 1e-3

    # the graph's normalisation is the backbone's: onnxruntime on a uint8 frame vs torch fed
    # with the frame normalised by hand with timm's own mean/std for this backbone
    cfg = timm.create_model(BACKBONE, pretrained=False).pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    assert not torch.allclose(mean, torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
    state = load_checkpoint(tmp_path / "run" / LAST)
    tasks = tasks_from_checkpoint(state)
    net = network_from_checkpoint(state, tasks)
    frame = resize_sample(MultiTaskDataset(tiny_data / "val").load(0), (64, 32), 2)["image"]
    image01 = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0

    def depth_after(m, s):
        with torch.no_grad():
            pred = net.heads["depth"](net.trunk((image01 - m) / s), image01)
            return tasks["depth"].decode(pred, image01)["depth"][0].numpy()

    got = load_model(tmp_path / "model.onnx").run(frame)["depth"]["depth"]
    backbone_error = np.max(np.abs(got - depth_after(mean, std)) / got)
    imagenet = (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
                torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    imagenet_error = np.max(np.abs(got - depth_after(*imagenet)) / got)
    # onnxruntime vs torch of the same arithmetic agree to ~1e-6; the compact trunk's ImageNet
    # normalisation is off by about a hundred times more here (so this tells them apart)
    assert backbone_error < 2e-5 < 10 * 2e-5 < imagenet_error, (backbone_error, imagenet_error)


def test_a_full_timm_checkpoint_loads_into_the_encoder_and_its_classifier_is_ignored(tmp_path):
    torch.manual_seed(5)
    full = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": full.state_dict()}, path)
    trunk = TimmTrunk(TrunkConfig(backbone="resnet18"))
    init_backbone(trunk, TrunkConfig(backbone="resnet18", pretrained=str(path)))
    reference = full.state_dict()
    loaded = trunk.encoder.state_dict()
    assert "fc.weight" in reference and "fc.weight" not in loaded
    for key, value in loaded.items():
        assert torch.equal(value, reference[key]), key


def test_a_mismatching_weights_file_is_refused_naming_the_keys(tmp_path):
    weights = other_encoder_state()
    weights.pop("conv_stem.weight")
    weights["blocks.9.surplus"] = torch.zeros(3)
    weights["bn1.running_mean"] = torch.zeros(7)
    path = tmp_path / "bad.safetensors"
    save_file(weights, str(path))
    trunk = TimmTrunk(TrunkConfig(backbone=BACKBONE))
    before = {k: v.clone() for k, v in trunk.encoder.state_dict().items()}
    with pytest.raises(BackboneError) as err:
        init_backbone(trunk, TrunkConfig(backbone=BACKBONE, pretrained=str(path)))
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "missing (1): conv_stem.weight" in message
    assert "unexpected (1): blocks.9.surplus" in message
    assert "shape mismatch (1): bn1.running_mean (7,) vs (16,)" in message
    assert all(torch.equal(v, before[k]) for k, v in trunk.encoder.state_dict().items())  # nothing loaded
    with pytest.raises(BackboneError, match="no such file"):
        init_backbone(trunk, TrunkConfig(backbone=BACKBONE, pretrained=str(tmp_path / "none.pth")))


def test_pretrained_true_offline_says_how_to_pass_a_file(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    trunk = TimmTrunk(TrunkConfig(backbone="resnet18"))
    with pytest.raises(BackboneError) as err:
        init_backbone(trunk, TrunkConfig(backbone="resnet18", pretrained=True))
    message = str(err.value)
    assert "\n" not in message and message.startswith("model.pretrained: true")
    assert "model.pretrained: /path/to/resnet18.safetensors" in message


def test_depthwise_heads_cost_what_the_closed_form_says_and_fold_exactly():
    head = torch.nn.ModuleDict({"segmentation": SegmentationHead(64, 7)})
    feats, image = {"s4": torch.randn(1, 64, 16, 32)}, torch.rand(1, 3, 64, 128)
    forward = lambda _: head["segmentation"](feats, image)  # noqa: E731
    pixels = 16 * 32
    assert conv_flops(head, image, forward) == pixels * (64 * 64 * 9 + 64 * 7)
    assert depthwise_heads(head) == 1 and isinstance(head["segmentation"].body, SeparableConvBNAct)
    assert conv_flops(head, image, forward) == pixels * (64 * 9 + 64 * 64 + 64 * 7)
    with torch.no_grad():
        for m in head.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    head.eval()
    folded = compact_copy(head)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded["segmentation"](feats, image), head["segmentation"](feats, image),
                                   rtol=1e-4, atol=1e-4)


def test_timm_encoder_layers_overparameterise_and_collapse_exactly(tiny_data, tmp_path):
    from training.engine.network import build_tasks

    recipe = timm_recipe(tiny_data, tmp_path, model={"backbone": "resnet18"})
    from training.models.multitask import build_model

    model = build_model(recipe.model, build_tasks(recipe, MultiTaskDataset(tiny_data / "train")))
    names = apply_overparam(model, OverparamConfig(kind="linear", rate=2, layers=["trunk.encoder"]))
    assert len(names) == 20 and "trunk.encoder.conv1" in names  # every conv of ResNet-18, 7x7 stem included
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    frames = [np.random.default_rng(i).integers(0, 256, (32, 64, 3), dtype=np.uint8) for i in range(2)]
    assert check_compact(model, compact_copy(model), frames) < 1e-4


@pytest.mark.parametrize("model, message", [
    ({"backbone": "resnet18", "architecture": "cross_stitch"}, "model: architecture: cross_stitch is built from"),
    ({"backbone": "resnet18", "architecture": "nddr"}, "model: architecture: nddr is built from"),
    ({"backbone": "resnet18", "architecture": "mtan"}, "model: architecture: mtan is built from"),
    ({"backbone": "compact", "pretrained": True}, "need a timm backbone"),
    ({"backbone": "compact", "freeze_stages": 1}, "need a timm backbone"),
    ({"backbone": "resnet_18"}, "model.backbone: 'resnet_18' is neither 'compact' nor a timm model"),
])
def test_combinations_a_timm_backbone_cannot_serve_are_refused_at_load(tiny_data, tmp_path, model, message):
    with pytest.raises(ConfigError) as err:
        timm_recipe(tiny_data, tmp_path, model=model)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_swa_with_frozen_stages_is_refused_at_load(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="swa: its BatchNorm refresh"):
        timm_recipe(tiny_data, tmp_path, model={"freeze_stages": 1}, swa={"start_epoch": 0})


def test_task_grouping_refuses_half_size_candidates_for_a_timm_backbone(tiny_data, tmp_path):
    from training.grouping.group import group

    path = Path(tmp_path / "r.yaml")
    path.write_text(f"data: {{train: {tiny_data / 'train'}, val: {tiny_data / 'val'}, input_size: [64, 32]}}\n"
                    f"model: {{backbone: resnet18}}\n")
    with pytest.raises(ConfigError, match="--half-scale: half-size candidates"):
        group(str(path), out=str(tmp_path / "g"), half_scale=0.5)


def test_gradnorm_and_mgda_ub_find_their_layer_and_representation_on_a_timm_trunk(tiny_data, tmp_path):
    from training.engine.network import build_tasks
    from training.models.multitask import build_model

    recipe = timm_recipe(tiny_data, tmp_path, model={"freeze_stages": 1})
    model = build_model(recipe.model, build_tasks(recipe, MultiTaskDataset(tiny_data / "train")))
    init_backbone(model.trunk, recipe.model)
    assert {id(p) for p in model.last_shared_parameters()} == {id(p) for p in model.trunk.smooth.parameters()}
    frozen = {id(p) for p in model.trunk.encoder.parameters() if not p.requires_grad}
    assert frozen and not frozen & {id(p) for p in model.shared_parameters()}
    preds, features, head_inputs = model(torch.rand(2, 3, 32, 64), cut_features=True)
    assert set(features) == {"s2", "s4"} and all(v.requires_grad and v.grad_fn is None for v in head_inputs.values())
    loss = preds["depth"].mean()
    grads = torch.autograd.grad(loss, [head_inputs["s4"]])  # MGDA-UB: gradient at the shared representation
    assert grads[0].shape == features["s4"].shape
