"""Over-parameterisation through the recipe: train expanded, fine-tune collapsed, export compact."""
import numpy as np
import pytest
import torch

from mtl_perception.inference.loader import load_model
from tests.train.tiny_mtl import tiny_recipe
from training.engine.checkpoint import load_checkpoint
from training.engine.export import export_checkpoint
from training.engine.network import network_from_checkpoint, tasks_from_checkpoint
from training.engine.trainer import LAST, Trainer
from training.models.collapse import conv_flops, parameter_count
from training.models.multitask import build_model
from training.recipe.config import ConfigError


def compact_size(trainer):
    """Parameters of the plain network the recipe describes (no over-parameterisation)."""
    return parameter_count(build_model(trainer.recipe.model, trainer.tasks))


def folded_size(trainer):
    """The plain network's size once BN is folded: each BN's 2 affine parameters per channel
    become one conv bias per channel."""
    compact = build_model(trainer.recipe.model, trainer.tasks)
    bn_channels = sum(m.num_features for m in compact.modules() if isinstance(m, torch.nn.BatchNorm2d))
    return parameter_count(compact) - bn_channels


def test_recipe_expands_the_selected_layers_only(tiny_data, tmp_path):
    overparam = {"kind": "linear", "rate": 2, "layers": ["trunk.stages"]}
    trainer = Trainer(tiny_recipe(tiny_data, tmp_path, overparam=overparam), progress=False)
    assert trainer.expanded_layers and all(n.startswith("trunk.stages.") for n in trainer.expanded_layers)
    assert parameter_count(trainer.model) > compact_size(trainer)


def test_recipe_errors_are_one_line(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="overparam: unknown kind .quadratic."):
        tiny_recipe(tiny_data, tmp_path, overparam={"kind": "quadratic"})
    with pytest.raises(ConfigError, match="overparam.layers: 'trunk.nothing' names no convolution"):
        Trainer(tiny_recipe(tiny_data, tmp_path, overparam={"kind": "linear", "layers": ["trunk.nothing"]}),
                progress=False)
    # a typo beside a prefix that does match is named too (it used to expand the heads silently)
    with pytest.raises(ConfigError, match="overparam.layers: 'trunkk' names no convolution") as error:
        Trainer(tiny_recipe(tiny_data, tmp_path, overparam={"kind": "linear", "layers": ["heads", "trunkk"]}),
                progress=False)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="kind kernel cannot start from the compact weights.*init: random"):
        tiny_recipe(tiny_data, tmp_path, overparam={"kind": "kernel"})


def test_fine_tuning_after_the_collapse_resumes_exactly_and_exports_compact(tiny_data, tmp_path):
    """Epoch 1 expanded, epoch 2 on the collapsed network; a run interrupted at the collapse
    boundary ends bit-identical to an uninterrupted one; the export has the compact size."""
    over = {"kind": "linear", "rate": 2, "finetune_epochs": 1}
    whole = Trainer(tiny_recipe(tiny_data, tmp_path / "whole", overparam=over,
                                optim={"epochs": 1, "batch_size": 8, "warmup_steps": 1}), progress=False)
    whole.fit()
    assert whole.epoch == 2 and whole.collapsed
    assert parameter_count(whole.model) == compact_size(whole)
    # a fresh optimizer for the collapsed parameters, starting at lr x finetune_lr_scale
    optimized = {id(p) for g in whole.optimizer.param_groups for p in g["params"]}
    assert optimized >= {id(p) for p in whole.model.parameters()}
    assert whole.optimizer.param_groups[0]["initial_lr"] == pytest.approx(whole.recipe.optim.lr * 0.1)

    split_recipe = tiny_recipe(tiny_data, tmp_path / "split", overparam=over,
                               optim={"epochs": 1, "batch_size": 8, "warmup_steps": 1})
    Trainer(split_recipe, progress=False).fit(stop_after_epoch=1)
    assert not load_checkpoint(tmp_path / "split" / LAST)["collapsed"]
    resumed = Trainer(split_recipe, progress=False)
    resumed.fit()
    state = load_checkpoint(tmp_path / "split" / LAST)
    assert state["collapsed"] and resumed.epoch == 2
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name

    # a collapsed checkpoint loads into the plain network, strictly
    build_model(split_recipe.model, tasks_from_checkpoint(state)).load_state_dict(state["model"])
    worst = export_checkpoint(tmp_path / "split" / LAST, tmp_path / "model.onnx")
    assert worst["collapse.max_rel"] < 1e-4
    provenance = load_model(tmp_path / "model.onnx").metadata.provenance
    assert provenance["parameters"] == folded_size(resumed)
    assert provenance["training_parameters"] == compact_size(resumed)  # saved after the collapse


@pytest.mark.parametrize("kind", ["linear", "elementwise", "shared_factors"])
def test_expanded_checkpoint_exports_the_compact_network(tiny_data, tmp_path, kind):
    """No fine-tuning: the export collapses and folds; onnxruntime reproduces the expanded
    torch model (export verification), and the graph has the compact model's size and FLOPs."""
    recipe = tiny_recipe(tiny_data, tmp_path, overparam={"kind": kind, "rate": 2},
                         optim={"epochs": 1, "batch_size": 8, "warmup_steps": 1})
    trainer = Trainer(recipe, progress=False)
    trainer.fit()
    state = load_checkpoint(tmp_path / LAST)
    assert not state["collapsed"]
    trained = network_from_checkpoint(state, trainer.tasks)
    assert parameter_count(trained) > compact_size(trainer)
    worst = export_checkpoint(tmp_path / LAST, tmp_path / "model.onnx")
    assert worst["collapse.max_rel"] < 1e-4
    meta = load_model(tmp_path / "model.onnx").metadata
    compact = build_model(recipe.model, trainer.tasks).eval()
    assert meta.provenance["parameters"] == folded_size(trainer)
    assert meta.provenance["training_parameters"] == parameter_count(trained)

    import onnx

    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    weights = {init.name: int(np.prod(init.dims)) for init in graph.initializer}
    # every Conv but super-resolution's fixed ones (buffers applied functionally: the bicubic base
    # and the one-hot copies of the image's cells)
    fixed = ("bicubic", "cell_copy", "pixel_kernel")
    conv_weights = [n.input[1] for n in graph.node if n.op_type == "Conv" and not n.input[1].endswith(fixed)]
    x = torch.rand(1, 3, 32, 64)
    macs = conv_flops(compact, x)
    # one Conv node per convolution module the exported forward runs (the export forms of heads,
    # `Task.export_head`, included; their unused originals not)
    from training.engine.export import DeployModule

    deploy = DeployModule(compact, trainer.tasks).eval()
    ran = set()
    hooks = [m.register_forward_hook(lambda m, i, o: ran.add(id(m))) for m in deploy.modules()
             if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        deploy((x.permute(0, 2, 3, 1) * 255).to(torch.uint8))
    for hook in hooks:
        hook.remove()
    assert len(conv_weights) == len(ran)
    assert macs > 0 and all(w in weights for w in conv_weights)


def test_collapsed_graph_is_the_compact_graph_and_costs_the_same(tmp_path):
    """The exported graph of an over-parameterised, collapsed model has exactly the compact
    graph's operators and weight shapes (so its latency can only differ by noise); the cost
    table reports the same parameters and MACs and the larger training-time size."""
    import onnx

    from tests.train.exported_models import tiny_network, tiny_tasks
    from training.engine.export import DeployModule, export_onnx, output_names
    from training.experiments.cost import _overparameterised, parse_variant
    from training.models.collapse import compact_copy
    from training.recipe.overparam import OverparamConfig

    tasks = tiny_tasks(input_size=(64, 32))
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 32, 64, 3), dtype=np.uint8))
    names = [n for t in output_names(tasks).values() for n in t.values()]
    graphs = {}
    for label, kind in (("compact", "none"), ("linear", "linear"), ("elementwise", "elementwise")):
        torch.manual_seed(0)
        # weights moved off their initialisation in every model alike (equal constants, such as
        # fresh BN-folded biases, would be merged by the exporter and change the initializer list)
        model = _overparameterised(tiny_network(tasks), OverparamConfig(kind=kind, rate=2))
        path = tmp_path / f"{label}.onnx"
        export_onnx(DeployModule(compact_copy(model), tasks).eval(), image, path, 18, names)
        graph = onnx.load(str(path)).graph
        graphs[label] = ([n.op_type for n in graph.node], sorted(tuple(i.dims) for i in graph.initializer))
    assert graphs["linear"] == graphs["compact"] and graphs["elementwise"] == graphs["compact"]

    assert parse_variant("mtan+linear:4") == ("mtan", "linear", 4)
    with pytest.raises(ValueError, match="kind:rate"):
        parse_variant("shared+cubic:2")


def test_cost_table_of_collapsed_variants(tiny_data, tmp_path):
    from training.experiments.cost import compare_architectures

    recipe = tiny_recipe(tiny_data, tmp_path)
    result = compare_architectures(recipe, ["shared", "shared+linear:2", "shared+elementwise:3"], runs=2, rounds=1,
                                   onnx=False)
    rows = {r["architecture"]: r for r in result["rows"]}
    for label in ("shared+linear:2", "shared+elementwise:3"):
        assert rows[label]["params"] == rows["shared"]["params"] and rows[label]["flops"] == rows["shared"]["flops"]
        assert rows[label]["training_params"] > rows["shared"]["training_params"]


@pytest.mark.parametrize("kind, tolerance", [("linear", 1e-5), ("elementwise", 2e-2)])
def test_preserving_expansion_starts_as_the_compact_network(kind, tolerance):
    """init: preserve (the default) solves the factors from the layer's weights, so the expanded
    network computes what the compact one does (the tasks' output initialisations, such as the
    detection prior and the zero SR residual, survive); init: random does not."""
    from tests.train.exported_models import flat_outputs, randomise_batchnorm, tiny_network, tiny_tasks
    from training.models.collapse import apply_overparam
    from training.recipe.overparam import OverparamConfig

    tasks = tiny_tasks(input_size=(64, 32))
    x = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(1))

    def outputs(init):
        torch.manual_seed(0)
        model = tiny_network(tasks)
        randomise_batchnorm(model)
        if init:
            apply_overparam(model, OverparamConfig(kind=kind, rate=2, init=init))
        with torch.no_grad():
            return flat_outputs(model.eval()(x))

    def worst(a, b):
        return max(float((u - v).abs().max() / (u.abs().max() + 1e-6)) for u, v in zip(a, b))

    compact = outputs(None)
    assert worst(outputs("preserve"), compact) < tolerance
    assert worst(outputs("random"), compact) > 0.1
