"""A trunk from any timm encoder (`model.backbone: <timm name>`): `features_only` at strides 4..32,
the compact trunk's feature pyramid on top, the same {"s2", "s4"} features for the same heads.

- s4: the pyramid (lateral 1x1 convolutions to `fpn_channels`, nearest top-down sums, one 3x3
  smoothing layer: GradNorm's last shared layer), exactly `SharedTrunk.decode`.
- s2: the encoder's stride-2 feature where it has one (ResNet's stem, MobileNet/EfficientNet's
  first block), narrowed by a 1x1 ConvBNAct to `channels[0]` when it is wider (ResNet's 64): the
  super-resolution head then also reads the pyramid, as on the compact trunk, instead of only
  the stem, and its stride-2 layers stay cheap; encoders that start at stride 4 (ConvNeXt) get a
  3x3 stride-2 stem of their own on the normalised image.
- The input normalisation is the encoder's own (timm's `pretrained_cfg` mean/std): `input_mean`
  and `input_std`, which `MultiTaskNet` puts inside the network and so inside the exported graph.
- Pretrained weights (`model.pretrained`): true = timm's hub cache, or a `.safetensors`/`.pth`/
  `.pt` state dict, loaded by `init_backbone` when training starts (a checkpoint already holds
  them, so rebuilding a trained network never reads the file again). A file is checked key by
  key and shape by shape; classifier layers that `features_only` drops are ignored.
- `freeze_stages: N`: the encoder up to stride 2**N keeps its weights (no gradient) and its
  BatchNorm statistics (eval mode whenever the network trains).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from training.models.blocks import ConvBNAct
from training.models.registry import COMPACT, Trunk, register_trunk
from training.models.state_dicts import state_dict_mismatch
from training.models.trunk import SharedTrunk

PYRAMID_STRIDES = (4, 8, 16, 32)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")


class BackboneError(ValueError):
    """A backbone or its weights cannot be used; the message is one line naming the cause (the
    trainer and the recipe loader turn it into a ConfigError)."""


def check_backbone_name(name: str) -> None:
    """Recipe load: the name must be 'compact' or a timm architecture (optionally with a tag)."""
    if name != COMPACT and name not in timm.list_models() and not _is_tagged(name):
        raise BackboneError(f"model.backbone: {name!r} is neither 'compact' nor a timm model "
                            f"(see timm.list_models(); e.g. resnet18, mobilenetv3_large_100, efficientnet_b0)")


def encoder_levels(name: str) -> Tuple[nn.Module, Dict[int, int]]:
    """(timm `features_only` encoder returning the strides 2 (if it has it), 4, 8, 16, 32,
    {stride: position in its output list}); refuses an unknown name or missing strides."""
    check_backbone_name(name)
    try:
        probe = timm.create_model(name, features_only=True, pretrained=False)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise BackboneError(f"model.backbone: timm cannot build {name!r} with features_only ({exc})") from None
    reductions = probe.feature_info.reduction()
    wanted = {}
    for index, stride in enumerate(reductions):
        if stride in (2, *PYRAMID_STRIDES):
            wanted[stride] = index  # the last feature at each stride (the end of that stage)
    missing = [s for s in PYRAMID_STRIDES if s not in wanted]
    if missing:
        raise BackboneError(f"model.backbone: {name!r} has no features at stride(s) {missing} "
                            f"(it gives {reductions}); the pyramid needs 4, 8, 16 and 32")
    strides = sorted(wanted)
    encoder = timm.create_model(name, features_only=True, pretrained=False, out_indices=[wanted[s] for s in strides])
    return encoder, {s: i for i, s in enumerate(strides)}


def _is_tagged(name: str) -> bool:
    """"resnet18.tv_in1k": an architecture with a pretrained tag."""
    base, _, tag = name.partition(".")
    return bool(tag) and base in timm.list_models()


@register_trunk
class TimmTrunk(Trunk):
    """timm encoder + the compact trunk's pyramid; forward(normalised image) -> {"s2", "s4"}.

    Chosen by `model.backbone: <timm name>` (with `architecture: shared`), not by its registry
    name: `registry.build_trunk` picks it whenever the backbone is not the compact one."""

    name = "timm"

    decode = SharedTrunk.decode  # the one pyramid: reads self.lateral and self.smooth
    last_shared_layer = SharedTrunk.last_shared_layer

    def __init__(self, config, tasks: Sequence[str] = ()):
        super().__init__()
        self.backbone = config.backbone
        self.encoder, self.positions = encoder_levels(config.backbone)
        channels = dict(zip(sorted(self.positions), self.encoder.feature_info.channels()))
        d = config.fpn_channels
        narrow = config.channels[0]
        if 2 not in self.positions:
            self.stem = ConvBNAct(3, narrow, stride=2)
        elif channels[2] > narrow:
            self.stem = ConvBNAct(channels[2], narrow, kernel=1)
        else:
            self.stem, narrow = None, channels[2]
        self.lateral = nn.ModuleList(nn.Conv2d(channels[s], d, 1) for s in PYRAMID_STRIDES)
        self.smooth = ConvBNAct(d, d)
        self.feature_channels: Dict[str, int] = {"s2": narrow, "s4": d}
        cfg = self.encoder.pretrained_cfg or {}
        self.input_mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_DEFAULT_MEAN))
        self.input_std = tuple(float(v) for v in cfg.get("std", IMAGENET_DEFAULT_STD))
        self.freeze_stages = config.freeze_stages
        self.frozen_prefixes = frozen_prefixes(self.encoder, config.freeze_stages)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.encoder(x)
        if 2 not in self.positions:
            stem = self.stem(x)
        else:
            stem = feats[self.positions[2]] if self.stem is None else self.stem(feats[self.positions[2]])
        return {"s2": stem, "s4": self.decode([feats[self.positions[s]] for s in PYRAMID_STRIDES])}

    def train(self, mode: bool = True):
        """Frozen stages keep their BatchNorm statistics: eval mode even while training."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def frozen_modules(self) -> List[nn.Module]:
        return [m for name, m in self.encoder.named_modules() if _under(name, self.frozen_prefixes)]

    def encoder_parameters(self) -> List[nn.Parameter]:
        """The timm encoder's parameters (their optimizer group runs at lr x encoder_lr_scale)."""
        return list(self.encoder.parameters())

    def shared_parameters(self) -> List[nn.Parameter]:
        """What the tasks share and train: frozen stages excluded (they receive no gradient)."""
        return [p for p in self.parameters() if p.requires_grad]


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def frozen_prefixes(encoder: nn.Module, stages: int) -> List[str]:
    """Names of the encoder's modules that compute its features up to stride 2**stages: every
    top-level module registered before the end of that stage, and the stage's own module path
    (a stage inside a container, e.g. MobileNet's blocks.1, freezes blocks.0 and blocks.1)."""
    if stages <= 0:
        return []
    info = encoder.feature_info
    names = [n for n, s in zip(info.module_name(), info.reduction()) if s <= 2 ** stages]
    if not names:
        return []
    last = _module_path(encoder, names[-1])
    parts = last.split(".")
    prefixes: List[str] = []
    for depth, part in enumerate(parts):
        parent = ".".join(parts[:depth])
        container = encoder.get_submodule(parent) if parent else encoder
        for child, _ in container.named_children():
            if child == part:
                break
            prefixes.append(f"{parent}.{child}" if parent else child)
    return prefixes + [last]


def _module_path(encoder: nn.Module, name: str) -> str:
    """A feature's module name as it is inside the feature wrapper (timm flattens `stages.0` to
    `stages_0` in some wrappers)."""
    for candidate in (name, name.replace(".", "_", 1)):
        try:
            encoder.get_submodule(candidate)
            return candidate
        except AttributeError:
            continue
    raise BackboneError(f"model.freeze_stages: cannot find the encoder module {name!r}")


def freeze(trunk: TimmTrunk) -> int:
    """Stops the gradient of the frozen stages' parameters; returns how many tensors."""
    frozen = [p for name, p in trunk.encoder.named_parameters()
              if _under(name.rpartition(".")[0], trunk.frozen_prefixes)]
    for p in frozen:
        p.requires_grad_(False)
    trunk.train(trunk.training)
    return len(frozen)


def init_backbone(trunk: nn.Module, config) -> None:
    """What training starts from: pretrained encoder weights (`model.pretrained`) and frozen
    stages (`model.freeze_stages`); nothing for the compact trunk."""
    if not isinstance(trunk, TimmTrunk):
        return
    if config.pretrained is True:
        trunk.encoder.load_state_dict(hub_encoder(config.backbone, trunk).state_dict())
    elif isinstance(config.pretrained, str):
        load_encoder_file(trunk, config.pretrained)
    freeze(trunk)


def hub_encoder(name: str, trunk: TimmTrunk) -> nn.Module:
    """The pretrained encoder from timm's hub cache (downloaded when online); offline and not
    cached: a one-line error saying how to pass a local file instead."""
    indices = list(trunk.encoder.feature_info.out_indices)
    try:
        return timm.create_model(name, features_only=True, pretrained=True, out_indices=indices)
    except (OSError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackboneError(
            f"model.pretrained: true needs {name!r} in timm's hub cache and it could not be fetched "
            f"({type(exc).__name__}: {reason[:120]}); download the weights elsewhere and pass the file instead: "
            f"model.pretrained: /path/to/{name}.safetensors (or .pth)") from None


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A weights file as {name: tensor}: .safetensors (safetensors), .pth/.pt (torch, tensors
    only); a checkpoint dict with a "state_dict" or "model" entry is unwrapped."""
    file = Path(path)
    if file.suffix not in WEIGHT_SUFFIXES:
        raise BackboneError(f"model.pretrained: {path}: expected a {', '.join(WEIGHT_SUFFIXES)} file")
    if not file.is_file():
        raise BackboneError(f"model.pretrained: {path}: no such file")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: its name and the reader's first line
        raise BackboneError(f"model.pretrained: {path}: cannot read ({str(exc).splitlines()[0][:160]})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise BackboneError(f"model.pretrained: {path}: not a state dict of tensors")
    return dict(state)


def load_encoder_file(trunk: TimmTrunk, path: str) -> None:
    """Loads a state dict into the encoder, every tensor or none: keys in the encoder's own naming
    or the full timm model's (its classifier, which features_only drops, is ignored)."""
    state = read_state_dict(path)
    expected = trunk.encoder.state_dict()
    renamed = {}
    for key, value in state.items():
        flat = key.replace(".", "_", 1)  # stages.0.x -> stages_0.x (flattening feature wrappers)
        renamed[key if key in expected or flat not in expected else flat] = value
    problem = state_dict_mismatch(expected, renamed, ignored=classifier_keys(trunk.backbone, set(expected)))
    if problem:
        raise BackboneError(f"model.pretrained: {path} does not fit {trunk.backbone}: {problem}")
    trunk.encoder.load_state_dict({k: renamed[k] for k in expected}, strict=True)


def classifier_keys(name: str, encoder_keys: set) -> set:
    """Keys of the full timm model that its features_only encoder does not have (classifier,
    final head convolution); built on the meta device, so free."""
    with torch.device("meta"):
        full = timm.create_model(name, pretrained=False)
    return {k for k in full.state_dict() if k not in encoder_keys and k.replace(".", "_", 1) not in encoder_keys}
