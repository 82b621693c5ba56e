"""Soft-parameter-sharing trunks (cross-stitch, NDDR-CNN, MTAN): initialisation, equivalences
with independent references, training, export, optimizer groups, recipe checks, collapse, cost."""
import copy

import pytest
import torch
from torch import nn

from tests import REPO
from tests.train.exported_models import flat_outputs, randomise_batchnorm, tiny_tasks
from training.models.collapse import collapse, expand, parameter_count
from training.models.multitask import MultiTaskNet, build_model
from training.models.soft_sharing import CrossStitchTrunk, MTANTrunk, NDDRFusion, NDDRTrunk
from training.models.trunk import SharedTrunk
from training.recipe.config import ConfigError
from training.recipe.model import TrunkConfig

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.tiny_data(train=4, val=1)]

SOFT = ("cross_stitch", "nddr", "mtan")
TINY = dict(channels=[8, 8, 16, 16, 16], blocks=[1, 0, 0, 0], fpn_channels=16)


def tiny_model(architecture, names=("segmentation", "depth", "detection", "super_resolution"), seed=0):
    torch.manual_seed(seed)
    return build_model(TrunkConfig(architecture=architecture, **TINY), tiny_tasks(names))


def image(seed=0, batch=2):
    return torch.rand(batch, 3, 32, 64, generator=torch.Generator().manual_seed(seed))






# -- the default stays the shared trunk, unchanged ---------------------------------------------
def test_default_architecture_is_the_unchanged_shared_trunk():
    tasks = tiny_tasks()
    config = TrunkConfig(**TINY)
    assert config.architecture == "shared"
    torch.manual_seed(0)
    built = build_model(config, tasks)
    torch.manual_seed(0)  # the model as it was built before architectures existed
    trunk = SharedTrunk(config)
    direct = MultiTaskNet(trunk, {n: t.build_head(trunk.feature_channels) for n, t in tasks.items()})
    assert type(built.trunk) is SharedTrunk and not built.per_task
    a, b = built.state_dict(), direct.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert built.mixing_parameters() == []
    assert [id(p) for p in built.shared_parameters()] == [id(p) for p in built.trunk.parameters()]


@pytest.mark.parametrize("architecture", ("shared",) + SOFT)
def test_shared_and_task_parameters_partition_the_model(architecture):
    model = tiny_model(architecture)
    shared = [id(p) for p in model.shared_parameters()]
    own = [id(p) for ps in model.task_parameters().values() for p in ps]
    everything = [id(p) for p in model.parameters()]
    assert len(set(shared)) == len(shared) and len(set(own)) == len(own)
    assert not set(shared) & set(own) and set(shared) | set(own) == set(everything)
    assert {id(p) for p in model.mixing_parameters()} <= set(everything)
    assert {id(p) for p in model.last_shared_parameters()} <= set(shared)


@pytest.mark.parametrize("architecture", SOFT)
def test_shared_parameters_get_gradient_from_every_task_and_task_parameters_from_one(architecture):
    model = tiny_model(architecture).train()
    with torch.no_grad():  # the SR head starts at zero (bicubic): give it a way back to the trunk
        for p in model.heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    preds = model(image())
    shared = model.shared_parameters()
    own = model.task_parameters()
    for task, pred in preds.items():
        loss = sum(v.float().pow(2).mean() for v in (pred.values() if isinstance(pred, dict) else [pred]))
        grads = torch.autograd.grad(loss, shared + [p for ps in own.values() for p in ps], retain_graph=True,
                                    allow_unused=True)
        g_shared, g_own = grads[:len(shared)], grads[len(shared):]
        # the shared trunk reaches every head: each task's loss moves (almost) all of it
        reached = sum(g is not None and bool(g.abs().sum() > 0) for g in g_shared)
        assert reached >= 0.9 * len(shared), (task, reached, len(shared))
        offset = 0
        for other, params in own.items():
            chunk = g_own[offset:offset + len(params)]
            offset += len(params)
            if other != task:  # another task's own parameters get nothing from this loss
                assert all(g is None or not bool(g.abs().sum() > 0) for g in chunk), (task, other)


# -- cross-stitch ------------------------------------------------------------------------------
@pytest.mark.parametrize("names,self_w,other_w", [
    (("segmentation", "depth"), 0.9, 0.1),
    (("segmentation", "depth", "detection", "super_resolution"), 0.9, 0.1 / 3),
    (("depth",), 1.0, None),
])
def test_cross_stitch_units_start_near_identity(names, self_w, other_w):
    trunk = tiny_model("cross_stitch", names).trunk
    assert isinstance(trunk, CrossStitchTrunk) and len(trunk.mixers) == 5  # stem + four stages
    T = len(names)
    for unit, channels in zip(trunk.mixers, TINY["channels"]):
        w = unit.weight.detach()
        assert w.shape == (T, T, channels)  # one T x T matrix per channel
        for t in range(T):
            for s in range(T):
                expected = self_w if s == t else other_w
                assert torch.allclose(w[t, s], torch.full((channels,), expected)), (t, s)
        assert torch.allclose(w.sum(dim=1), torch.ones(T, channels), atol=1e-6)  # rows sum to 1


def test_cross_stitch_unit_mixes_each_channel():
    unit = tiny_model("cross_stitch", ("segmentation", "depth", "detection")).trunk.mixers[2]
    with torch.no_grad():
        unit.weight.copy_(torch.randn_like(unit.weight))
    xs = [torch.randn(2, unit.weight.shape[2], 4, 5) for _ in range(3)]
    out = unit(xs)
    w = unit.weight.detach()
    for t in range(3):
        expected = torch.zeros_like(xs[0])
        for s in range(3):
            for c in range(w.shape[2]):
                expected[:, c] += w[t, s, c] * xs[s][:, c]
        assert torch.allclose(out[t], expected, atol=1e-5)


def test_cross_stitch_with_identity_mixing_is_independent_columns():
    model = tiny_model("cross_stitch").eval()
    randomise_batchnorm(model)
    trunk, x = model.trunk, image()
    with torch.no_grad():
        mixed = trunk(x)
        alone = {t: trunk.columns[t](x) for t in trunk.tasks}  # each column run by itself
        assert any(not torch.allclose(mixed[t]["s4"], alone[t]["s4"], atol=1e-4) for t in trunk.tasks)
        for unit in trunk.mixers:
            T, _, C = unit.weight.shape
            unit.weight.copy_(torch.eye(T)[:, :, None].repeat(1, 1, C))
        separate = trunk(x)
    for t in trunk.tasks:
        for key in ("s2", "s4"):
            assert torch.allclose(separate[t][key], alone[t][key], atol=1e-6), (t, key)


# -- NDDR-CNN ----------------------------------------------------------------------------------
def test_nddr_fusion_starts_as_weighted_identity():
    fusion = NDDRFusion(3, 5).eval()
    xs = [torch.rand(2, 5, 4, 6) for _ in range(3)]  # ReLU outputs are non-negative
    out = fusion(xs)
    eps = fusion.fuse[0][1].eps
    for t in range(3):
        by_hand = 0.9 * xs[t] + sum(0.05 * xs[s] for s in range(3) if s != t)
        assert torch.allclose(out[t], by_hand / (1 + eps) ** 0.5, atol=1e-6), t
    weight = fusion.fuse[1][0].weight.detach()[:, :, 0, 0]  # task 1: [C, 3C]
    assert torch.allclose(weight[:, 5:10], 0.9 * torch.eye(5)) and torch.allclose(weight[:, :5], 0.05 * torch.eye(5))


def test_nddr_trunk_matches_columns_fused_by_hand():
    """The whole NDDR trunk at initialisation (eval mode) vs the columns' layers run one by one
    with the fusion written out: 0.9 own + 0.1/(T-1) others, BN identity, ReLU."""
    model = tiny_model("nddr", ("segmentation", "depth", "detection")).eval()
    trunk, x = model.trunk, image()
    assert isinstance(trunk, NDDRTrunk)
    eps = trunk.mixers[0].fuse[0][1].eps

    def fuse(hs):
        return [torch.relu((0.9 * hs[t] + sum(0.05 * hs[s] for s in range(3) if s != t)) / (1 + eps) ** 0.5)
                for t in range(3)]

    cols = [trunk.columns[t] for t in trunk.tasks]
    with torch.no_grad():
        hs = fuse([c.stem(x) for c in cols])
        stems, feats = hs, [[] for _ in cols]
        for i in range(4):
            hs = fuse([c.stages[i](h) for c, h in zip(cols, hs)])
            for f, h in zip(feats, hs):
                f.append(h)
        got = trunk(x)
    for k, t in enumerate(trunk.tasks):
        assert torch.allclose(got[t]["s2"], stems[k], atol=1e-5)
        assert torch.allclose(got[t]["s4"], cols[k].decode(feats[k]), atol=1e-5)


# -- MTAN --------------------------------------------------------------------------------------
class _Ones(nn.Module):
    def forward(self, x):
        return torch.ones_like(x)


def test_mtan_with_all_ones_attention_is_the_shared_trunk():
    model = tiny_model("mtan").eval()
    randomise_batchnorm(model)
    trunk, x = model.trunk, image()
    assert isinstance(trunk, MTANTrunk)
    with torch.no_grad():
        plain = trunk.shared(x)  # SharedTrunk.forward: the independent reference
        attended = trunk(x)
        assert not torch.allclose(attended["depth"]["s4"], plain["s4"], atol=1e-3)  # masks in (0, 1)
        for modules in list(trunk.encoder_attention.values()) + list(trunk.decoder_attention.values()):
            for mask in modules:
                mask[-1] = _Ones()  # sigmoid -> all-ones mask
        forced = trunk(x)
    for t in trunk.tasks:
        for key in ("s2", "s4"):
            assert torch.allclose(forced[t][key], plain[key], atol=1e-6), (t, key)


def test_mtan_follows_its_equations_on_the_shared_trunks_own_features():
    """Reference: the shared trunk's forward with hooks recording u (each stage's first layer),
    p (each level's output) and the pyramid maps; the attention chain written from the equations
    a_0 = g_0(p_0) p_0, a_j = g_j([u_j, f_j(a_j-1)]) p_j, then the three pyramid levels."""
    import torch.nn.functional as F

    # training mode: batch statistics keep every level's features alive (with random running
    # statistics, the coarse levels of this tiny net can be all zero after ReLU)
    model = tiny_model("mtan", ("segmentation", "depth")).train()
    trunk, x = model.trunk, image(1)
    shared = trunk.shared
    seen = {}
    hooks = [shared.stem.register_forward_hook(lambda m, i, o: seen.__setitem__("p0", o))]
    for j in range(4):
        hooks.append(shared.stages[j][0].register_forward_hook(lambda m, i, o, j=j: seen.__setitem__(f"u{j + 1}", o)))
        hooks.append(shared.stages[j].register_forward_hook(lambda m, i, o, j=j: seen.__setitem__(f"p{j + 1}", o)))
        hooks.append(shared.lateral[j].register_forward_hook(lambda m, i, o, j=j: seen.__setitem__(f"lat{j}", o)))
    hooks.append(shared.smooth.register_forward_pre_hook(lambda m, i: seen.__setitem__("top0", i[0])))
    with torch.no_grad():
        s4 = shared(x)["s4"]
        for h in hooks:
            h.remove()
        up = lambda t, like: F.interpolate(t, size=like.shape[-2:], mode="nearest")  # noqa: E731
        top16 = seen["lat2"] + up(seen["lat3"], seen["lat2"])
        top8 = seen["lat1"] + up(top16, seen["lat1"])
        assert torch.allclose(seen["top0"], seen["lat0"] + up(top8, seen["lat0"]), atol=1e-6)
        got = trunk(x)
        for t in trunk.tasks:
            g, gd = trunk.encoder_attention[t], trunk.decoder_attention[t]
            a = g[0](seen["p0"]) * seen["p0"]
            assert torch.allclose(got[t]["s2"], a, atol=1e-6)
            for j in range(1, 5):
                a = g[j](torch.cat([seen[f"u{j}"], trunk.encoder_bridge[j - 1](a)], 1)) * seen[f"p{j}"]
            for k, (u, p) in enumerate([(top16, top16), (top8, top8), (seen["top0"], s4)]):
                a = gd[k](torch.cat([u, up(trunk.decoder_bridge[k](a), u)], 1)) * p
            assert torch.allclose(got[t]["s4"], a, atol=1e-5), t


# -- every architecture ------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", SOFT)
def test_single_task_works(architecture):
    model = tiny_model(architecture, ("segmentation",)).train()
    out = model(image())
    assert set(out) == {"segmentation"} and out["segmentation"].shape == (2, 9, 32, 64)
    out["segmentation"].mean().backward()
    assert all(p.grad is not None for p in model.shared_parameters())


@pytest.mark.parametrize("architecture", SOFT)
def test_cut_features_is_refused_by_the_model(architecture):
    with pytest.raises(ValueError, match="one shared representation"):
        tiny_model(architecture)(image(), cut_features=True)


@pytest.mark.parametrize("architecture", SOFT)
@pytest.mark.parametrize("balancer", ["mgda_ub", "gradnorm"])
def test_recipe_refuses_representation_balancers_with_soft_sharing(architecture, balancer):
    from training.recipe.core import recipe_from_dict

    with pytest.raises(ConfigError, match=f"balancer.name: {balancer} needs the one representation"):
        recipe_from_dict({"model": {"architecture": architecture}, "balancer": {"name": balancer}})
    recipe_from_dict({"model": {"architecture": "shared"}, "balancer": {"name": balancer}})
    recipe_from_dict({"model": {"architecture": architecture}, "balancer": {"name": "pcgrad"}})


def test_recipe_validates_architecture_and_mixing_lr_scale():
    from training.recipe.core import recipe_from_dict

    with pytest.raises(ConfigError,
                       match="model: architecture: unknown 'sluice' \\(known: cross_stitch, mtan, nddr, shared\\)"):
        recipe_from_dict({"model": {"architecture": "sluice"}})
    with pytest.raises(ConfigError, match="mixing_lr_scale must be positive"):
        recipe_from_dict({"model": {"mixing_lr_scale": 0}})


def test_expanded_cross_stitch_collapses_to_the_compact_model():
    compact = tiny_model("cross_stitch")
    expanded = tiny_model("cross_stitch")
    assert expand(expanded, "linear", 2)
    assert parameter_count(expanded) > parameter_count(compact)
    randomise_batchnorm(expanded)
    with torch.no_grad():
        for p in expanded.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))  # mixing units and factors away from their init
    expanded.eval()
    x = image()
    with torch.no_grad():
        before = flat_outputs(expanded(x))
        collapse(expanded)
        after = flat_outputs(expanded(x))
    assert parameter_count(expanded) == parameter_count(compact)
    for a, b in zip(before, after):
        assert (a - b).abs().max().item() < 1e-5


# -- training, optimizer groups, export ---------------------------------------------------------
@pytest.mark.parametrize("architecture,balancer", [
    ("shared", "fixed"), ("cross_stitch", "pcgrad"), ("nddr", "fixed"), ("mtan", "pcgrad")])
def test_each_architecture_trains_a_step_and_exports_verified(architecture, balancer, tiny_data, tmp_path):
    """One optimizer step with the real Trainer (a gradient balancer for two of them: it writes
    gradients only into shared_parameters() and task_parameters()), then the real export,
    which verifies onnxruntime against torch."""
    from mtl_perception.inference.loader import load_model
    from training.engine.export import export_checkpoint
    from training.engine.trainer import LAST, Trainer
    from training.recipe.core import recipe_from_dict

    recipe = recipe_from_dict({
        "name": f"tiny-{architecture}", "seed": 1, "out_dir": str(tmp_path), "threads": 1,
        "data": {"train": str(tiny_data / "train"), "val": str(tiny_data / "val"), "input_size": [64, 32]},
        "model": {**TINY, "architecture": architecture, "mixing_lr_scale": 7.0},
        "optim": {"epochs": 1, "batch_size": 4, "warmup_steps": 1, "lr": 0.003},
        "balancer": {"name": balancer}, "export": {"verify_frames": 1},
    })
    trainer = Trainer(recipe, progress=False, plots=False)
    groups = {g.get("name"): g for g in trainer.optimizer.param_groups}
    mixing = trainer.model.mixing_parameters()
    if architecture in ("shared", "mtan"):
        assert mixing == [] and "mixing" not in groups
    else:
        assert mixing and groups["mixing"]["lr"] == pytest.approx(0.003 * 7.0)
        assert groups["mixing"]["weight_decay"] == 0.0
        assert {id(p) for p in groups["mixing"]["params"]} == {id(p) for p in mixing}
        others = {id(p) for g in trainer.optimizer.param_groups if g.get("name") != "mixing" for p in g["params"]}
        assert not others & {id(p) for p in mixing}
    before = copy.deepcopy(trainer.model.state_dict())
    trainer.fit()
    assert trainer.step == 1
    after = trainer.model.state_dict()
    names = dict(trainer.model.named_parameters())
    # every trunk parameter (columns, mixing, attention) got a gradient and moved, except the
    # SR task's own ones: its head starts at zero (bicubic), so nothing flows back in step 1
    sr_own = {id(p) for p in trainer.model.task_parameters()["super_resolution"]}
    stuck = [k for k, p in names.items() if k.startswith("trunk.") and id(p) not in sr_own
             and torch.equal(before[k], after[k])]
    assert not stuck
    assert any(not torch.equal(before[k], after[k]) for k in names if k.startswith("heads."))
    worst = export_checkpoint(tmp_path / LAST, tmp_path / "model.onnx")  # verifies onnxruntime vs torch
    assert worst
    runtime = load_model(tmp_path / "model.onnx")
    assert sorted(runtime.tasks) == sorted(recipe.tasks)


def test_model_cost_counts_the_compact_network():
    from training.experiments.cost import model_cost

    costs = {a: model_cost(tiny_model(a), (64, 32), runs=2) for a in ("shared",) + SOFT}
    for arch, cost in costs.items():
        assert cost["params"] == parameter_count(tiny_model(arch)) and cost["latency_ms"] > 0
    # columns per task: more parameters and MACs than one shared trunk; MTAN adds attention
    for arch in SOFT:
        assert costs[arch]["params"] > costs["shared"]["params"]
        assert costs[arch]["flops"] > costs["shared"]["flops"]


def test_cost_command_writes_a_table_and_json(tmp_path, capsys):
    import json

    from training.cli import main

    out = tmp_path / "cost.json"
    quick = str(REPO / "config" / "quick.yaml")
    tiny = ["--set", "model.channels=[8,8,16,16,16]", "--set", "model.blocks=[0,0,0,0]", "--set",
            "model.fpn_channels=16", "--set", "data.input_size=[64,32]", "--set", f"data.train={tmp_path / 'none'}"]
    assert main(["cost", quick, *tiny, "--architectures", "shared,nddr", "--runs", "1", "--rounds", "1",
                 "--no-onnx", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["architecture"]: r for r in result["rows"]}
    assert set(rows) == {"shared", "nddr"} and rows["shared"]["params_ratio"] == 1.0
    assert rows["nddr"]["params_ratio"] == pytest.approx(rows["nddr"]["params"] / rows["shared"]["params"])
    assert "| `nddr` |" in out.with_suffix(".md").read_text() and "| `nddr` |" in capsys.readouterr().out
    assert main(["cost", quick, *tiny, "--architectures", "shared,sluice", "--no-onnx"]) == 2


# -- the trunk registry ----------------------------------------------------------------------------
def _registered(name, levels):
    """A minimal registered trunk returning `levels` ({level: (channels, stride)})."""
    from training.models.registry import Trunk, register_trunk

    class Tiny(Trunk):
        feature_strides = {lvl: stride for lvl, (_, stride) in levels.items()}

        def __init__(self, config, tasks):
            super().__init__()
            self.feature_channels = {lvl: c for lvl, (c, _) in levels.items()}
            self.convs = torch.nn.ModuleDict({lvl: torch.nn.Conv2d(3, c, 3, stride=s, padding=1)
                                              for lvl, (c, s) in levels.items()})

        def forward(self, x):
            return {lvl: conv(x) for lvl, conv in self.convs.items()}

        def last_shared_layer(self):
            return self.convs["s4"]

    Tiny.name = name
    return register_trunk(Tiny)


def test_a_registered_trunk_is_a_recipe_architecture_the_heads_and_balancers_use():
    """One new module with @register_trunk is all a backbone needs: the recipe accepts its name,
    the one network builder puts the registry's heads on it, the balancers' parameter lists work."""
    from training.engine.network import make_tasks, network_from_recipe
    from training.models.registry import TRUNKS
    from training.recipe.core import recipe_from_dict

    _registered("test_tiny", {"s2": (8, 2), "s4": (16, 4)})
    try:
        recipe = recipe_from_dict({"model": {"architecture": "test_tiny"}, "balancer": {"name": "gradnorm"}})
        model = network_from_recipe(recipe, make_tasks(recipe, next(iter(tiny_tasks().values())).info))
        assert type(model.trunk) is TRUNKS["test_tiny"] and not model.per_task
        preds = model(image())
        assert preds["segmentation"].shape[-2:] == (32, 64) and preds["super_resolution"].shape[-2:] == (64, 128)
        assert ([p.shape for p in model.last_shared_parameters()]
                == [p.shape for p in model.trunk.convs["s4"].parameters()])
        assert len(model.shared_parameters()) == 4 and model.mixing_parameters() == []
    finally:
        TRUNKS.pop("test_tiny", None)
    with pytest.raises(ConfigError, match="model: architecture: unknown 'test_tiny'"):
        recipe_from_dict({"model": {"architecture": "test_tiny"}})


def test_a_trunk_must_give_the_levels_the_heads_read_at_their_strides():
    from training.models.registry import TRUNKS, build_trunk
    from training.recipe.model import TrunkConfig

    _registered("test_no_stem", {"s4": (16, 4)})
    _registered("test_wrong_stride", {"s2": (8, 2), "s4": (16, 8)})
    try:
        with pytest.raises(ValueError, match="'test_no_stem' must return feature level 's2' at stride 2"):
            build_trunk(TrunkConfig(architecture="test_no_stem"), ["depth"])
        with pytest.raises(ValueError, match="'test_wrong_stride' must return feature level 's4' at stride 4"):
            build_trunk(TrunkConfig(architecture="test_wrong_stride"), ["depth"])
    finally:
        TRUNKS.pop("test_no_stem", None)
        TRUNKS.pop("test_wrong_stride", None)
