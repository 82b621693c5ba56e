"""`mtl-train`: the offline training command line.

    mtl-train train config/quick.yaml            # train (resumes if interrupted), then export
    mtl-train train config/quick.yaml --set optim.epochs=2 --out runs/try
    mtl-train export runs/quick/last.pt --out model.onnx
    mtl-train recipe config/quick.yaml           # validate a recipe and print it resolved
    mtl-train sweep config/balancers.yaml        # grid search over static task weights
    mtl-train compare-balancers config/balancers.yaml   # every balancer x seeds vs single-task runs
    mtl-train bench-balancers                    # each balancer's step time and memory vs fixed
    mtl-train full config/plans/full.yaml              # teachers -> student (SAM, SWA, distillation) -> export
    mtl-train ablate config/plans/ablation_overparam.yaml    # named recipe variants x seeds vs single-task
    mtl-train cost config/quick.yaml             # parameters, MACs, latency of each trunk architecture
    mtl-train cost config/quick.yaml --sharing --set model.backbone=resnet18   # 4-task vs 4 singles
    mtl-train average a/last.pt b/last.pt --out avg.pt [--greedy] [--export avg.onnx]   # weight averaging
    mtl-train group config/balancers.yaml --method both --budgets 1,2,3,4 [--train-final]   # task grouping
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import yaml

# Each command imports what it runs, and main() the error types after parsing: `mtl-train --help`
# and usage errors answer without loading torch (about 5 s here).


def _train(args) -> int:
    from training.engine import distributed
    from training.engine.export import export_checkpoint
    from training.engine.trainer import LAST, Trainer
    from training.recipe.core import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    distributed.init_from_env()  # under torchrun: one process per rank, DDP
    out_dir = Path(args.out or recipe.out_dir)
    if args.fresh and distributed.is_main() and (out_dir / LAST).exists():
        (out_dir / LAST).unlink()
    distributed.barrier()
    device = args.device
    if device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per torchrun rank
    trainer = Trainer(recipe, out_dir=str(out_dir), progress=not args.no_progress, device=device)
    trainer.fit()
    if not distributed.is_main():
        return 0
    print(f"checkpoint: {out_dir / LAST}\ncurves: {out_dir / 'curves.png'}\nmetrics: {out_dir / 'metrics.csv'}")
    if not args.no_export:
        model_path = out_dir / "model.onnx"
        worst = export_checkpoint(out_dir / LAST, model_path)
        print(f"model: {model_path} (onnxruntime vs torch, worst: {_fmt(worst)})")
    return 0


def _export(args) -> int:
    from training.engine.export import export_checkpoint

    worst = export_checkpoint(args.checkpoint, args.out, name=args.name, opset=args.opset)
    print(f"model: {args.out} (onnxruntime vs torch, worst: {_fmt(worst)})")
    return 0


def _recipe(args) -> int:
    from training.recipe.core import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    print(yaml.safe_dump(json.loads(json.dumps(recipe.to_dict())), sort_keys=False))
    return 0


def _compare(args) -> int:
    from training.experiments.compare import compare

    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    seeds = [int(v) for v in args.seeds.split(",")]
    compare(args.recipe, args.set, methods, seeds, out=args.out, results=args.results, workers=args.jobs)
    return 0


def _sweep(args) -> int:
    from training.experiments.sweep import sweep

    values = [float(v) for v in args.weights.split(",")]
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    seeds = [int(v) for v in args.seeds.split(",")]
    sweep(args.recipe, values, tasks, args.set, seeds, out=args.out, workers=args.jobs, max_runs=args.max_runs)
    return 0


def _bench_balancers(args) -> int:
    from training.experiments.balancer_benchmark import markdown as balancer_markdown
    from training.experiments.balancer_benchmark import run_benchmark

    names = [n.strip() for n in args.methods.split(",")] if args.methods else None
    result = run_benchmark(args.recipe, args.set, names, steps=args.steps, rounds=args.rounds, device=args.device,
                           batch_size=args.batch_size, memory=not args.no_memory)
    table = balancer_markdown(result)
    print(table)
    if args.out:
        _write_results(Path(args.out), result, table)
    return 0


def _cost(args) -> int:
    from training.experiments import cost
    from training.models.registry import TRUNKS
    from training.recipe.config import ConfigError
    from training.recipe.core import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    if args.sharing:
        return _sharing_cost(recipe, args)
    architectures = [a.strip() for a in args.architectures.split(",") if a.strip()]
    if not architectures:
        raise ConfigError(f"--architectures: name at least one (known: {', '.join(sorted(TRUNKS))})")
    try:
        result = cost.compare_architectures(recipe, architectures, runs=args.runs, onnx=not args.no_onnx,
                                            rounds=args.rounds)
    except ValueError as exc:
        raise ConfigError(f"--architectures: {exc}") from None
    table = cost.markdown(result)
    print(table)
    if args.out:
        _write_results(Path(args.out), result, table)
    return 0


def _sharing_cost(recipe, args) -> int:
    from training.experiments.sharing_cost import HEAD_STYLES, markdown, sharing_cost
    from training.recipe.config import ConfigError

    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    if not heads or any(h not in HEAD_STYLES for h in heads):
        raise ConfigError(f"--heads: comma-separated from {', '.join(HEAD_STYLES)}, got {args.heads!r}")
    result = sharing_cost(recipe, heads, runs=args.runs, rounds=args.rounds)
    table = markdown(result)
    print(table)
    if args.out:
        _write_results(Path(args.out), result, table)
    return 0


def _ablate(args) -> int:
    from training.experiments.ablation import ablate

    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else None
    ablate(args.plan, args.set, seeds, out=args.out, results=args.results, workers=args.jobs)
    return 0


def _average(args) -> int:
    from training.engine.average import average_command
    from training.engine.export import export_checkpoint

    result = average_command(args.checkpoints, args.out, greedy=args.greedy, device=args.device,
                             bn_batches=args.bn_batches, batch_size=args.batch_size, evaluate=not args.no_eval)
    print(f"averaged: {args.out} ({len(result.selected)} of {len(args.checkpoints)} checkpoints)")
    if args.export:
        worst = export_checkpoint(args.out, args.export)
        print(f"model: {args.export} (onnxruntime vs torch, worst: {_fmt(worst)})")
    return 0


def _group(args) -> int:
    from training.grouping.group import group
    from training.recipe.config import ConfigError

    try:
        budgets = [float(v) for v in args.budgets.split(",")]
        seeds = [int(v) for v in args.seeds.split(",")]
    except ValueError:
        raise ConfigError("--budgets and --seeds are comma-separated numbers") from None
    group(args.recipe, args.set, method=args.method, budgets=budgets, seeds=seeds, workers=args.jobs,
          short_epochs=args.short_epochs, out=args.out, results=args.results, all_subsets=args.all_subsets,
          train_final=args.train_final, cost_model=args.cost, half_scale=args.half_scale, tag_every=args.tag_every,
          tag_update=args.tag_update, tag_epochs=args.tag_epochs, baselines=not args.no_baselines)
    return 0


def _full(args) -> int:
    from training.experiments.pipeline import run_full

    run_full(args.plan, args.set, recipe=args.recipe, out=args.out, progress=not args.no_progress)
    return 0


def _write_results(out: Path, result: dict, table: str) -> None:
    """A result as JSON at `out` and its Markdown table beside it (.md)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(table)
    print(f"results: {out} and {out.with_suffix('.md')}")


def _fmt(values) -> str:
    return ", ".join(f"{k} {v:.2g}" for k, v in values.items())


def build_parser() -> argparse.ArgumentParser:
    """The `mtl-train` parser: one sub-command per `_parser_<command>` below."""
    parser = argparse.ArgumentParser(prog="mtl-train", description="Train and export multi-task perception models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_parser_train, _parser_export, _parser_recipe, _parser_sweep, _parser_compare_balancers,
                _parser_full, _parser_ablate, _parser_bench_balancers, _parser_cost, _parser_average, _parser_group):
        add(sub)
    return parser


def _parser_train(sub) -> None:
    """The arguments of `mtl-train train`."""
    p = sub.add_parser("train", help="train a recipe (resumes from <out>/last.pt), then export <out>/model.onnx")
    p.add_argument("recipe", help="YAML recipe, e.g. config/quick.yaml")
    p.add_argument("--out", help="output folder (default: the recipe's out_dir)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set optim.epochs=3 (repeatable)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--no-export", action="store_true", help="do not export after training")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (one GPU per torchrun rank)")
    p.set_defaults(func=_train)


def _parser_export(sub) -> None:
    """The arguments of `mtl-train export`."""
    p = sub.add_parser("export", help="export a checkpoint as a self-describing, verified ONNX model")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--name", help="model name in the metadata (default: the recipe's name)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the recipe's export.opset)")
    p.set_defaults(func=_export)


def _parser_recipe(sub) -> None:
    """The arguments of `mtl-train recipe`."""
    p = sub.add_parser("recipe", help="validate a recipe and print it with every default filled in")
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_recipe)


def _parser_sweep(sub) -> None:
    """The arguments of `mtl-train sweep`."""
    p = sub.add_parser("sweep", help="grid search over static task weights (fixed balancer), ranked on validation")
    p.add_argument("recipe")
    p.add_argument("--weights", default="0.25,0.5,1,2,4", help="weight values to try (default: %(default)s)")
    p.add_argument("--tasks", help="comma-separated tasks to sweep "
                   "(default: all but the first, which keeps its weight)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each (default: %(default)s)")
    p.add_argument("--max-runs", type=int, default=64, help="refuse larger grids (default: %(default)s)")
    p.add_argument("--out", default="runs/sweep")
    p.set_defaults(func=_sweep)


def _parser_compare_balancers(sub) -> None:
    """The arguments of `mtl-train compare-balancers`."""
    p = sub.add_parser("compare-balancers", help="every balancer x seeds vs single-task baselines (JSON, table, PNG)")
    p.add_argument("recipe", nargs="?", default="config/balancers.yaml", help="default: %(default)s")
    p.add_argument("--methods", help="comma-separated balancer names, each optionally with options, e.g. "
                   "fixed,mgda:normalization=l2 (default: every balancer with its default options)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each (default: %(default)s)")
    p.add_argument("--out", default="runs/compare", help="run folders (default: %(default)s)")
    p.add_argument("--results", help="results JSON (default: <out>/comparison.json; .md and .png beside it)")
    p.set_defaults(func=_compare)


def _parser_full(sub) -> None:
    """The arguments of `mtl-train full`."""
    p = sub.add_parser("full", help="teachers -> distilled, over-parameterised SAM+SWA student -> collapse -> "
                       "fine-tune -> export -> report, resumable")
    p.add_argument("plan", nargs="?", default="config/plans/full.yaml", help="full-recipe plan (default: %(default)s)")
    p.add_argument("--recipe", help="base recipe instead of the plan's (e.g. config/balancers.yaml for a small run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base recipe")
    p.add_argument("--out", help="output folder (default: the plan's out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_full)


def _parser_ablate(sub) -> None:
    """The arguments of `mtl-train ablate`."""
    p = sub.add_parser("ablate", help="named recipe variants x seeds vs single-task baselines (JSON, table, PNG)")
    p.add_argument("plan", help="ablation plan YAML, e.g. config/plans/ablation_overparam.yaml")
    p.add_argument("--seeds", help="comma-separated seeds (default: the plan's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base recipe")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each (default: %(default)s)")
    p.add_argument("--out", help="run folders (default: the plan's out)")
    p.add_argument("--results", help="results JSON (default: <out>/<plan name>.json; .md and .png beside it)")
    p.set_defaults(func=_ablate)


def _parser_bench_balancers(sub) -> None:
    """The arguments of `mtl-train bench-balancers`."""
    p = sub.add_parser("bench-balancers", help="time per step and peak memory of every balancer, relative to "
                       "fixed weights")
    p.add_argument("recipe", nargs="?", default="config/quick.yaml",
                   help="model, tasks and batch size (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--methods", help="comma-separated balancer names (default: all)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per method and round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds; the median is reported (default: %(default)s)")
    p.add_argument("--batch-size", type=int, help="default: the recipe's optim.batch_size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-memory", action="store_true", help="time only")
    p.add_argument("--out", help="JSON file to write (a Markdown table goes next to it, .md)")
    p.set_defaults(func=_bench_balancers)


def _parser_cost(sub) -> None:
    """The arguments of `mtl-train cost`."""
    p = sub.add_parser("cost", help="inference cost (parameters, MACs, torch and onnxruntime latency) of each "
                       "trunk architecture, relative to the shared trunk")
    p.add_argument("recipe", nargs="?", default="config/quick.yaml",
                   help="model, tasks and input size (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--architectures", default="shared,cross_stitch,nddr,mtan",
                   help="comma-separated; each optionally over-parameterised and collapsed, e.g. "
                        "shared+linear:2 or mtan+elementwise:3 (default: %(default)s)")
    p.add_argument("--runs", type=int, default=20,
                   help="timed runs per model; the median is reported (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5,
                   help="interleaved rounds the runs are split into (default: %(default)s)")
    p.add_argument("--no-onnx", action="store_true", help="torch only: no ONNX export and onnxruntime timing")
    p.add_argument("--sharing", action="store_true",
                   help="instead: the recipe's N-task model vs its N single-task models (same backbone and heads) "
                        "and the trunk alone, onnxruntime, one interleaved run; per-head costs")
    p.add_argument("--heads", default="standard,depthwise",
                   help="with --sharing: head styles to measure (default: %(default)s)")
    p.add_argument("--out", help="JSON file to write (a Markdown table goes next to it, .md)")
    p.set_defaults(func=_cost)


def _parser_average(sub) -> None:
    """The arguments of `mtl-train average`."""
    p = sub.add_parser("average", help="average checkpoints of one initialisation (uniform, or --greedy on validation)")
    p.add_argument("checkpoints", nargs="+", help="checkpoints sharing an init_fingerprint; the first one's recipe "
                   "gives the data (BN refresh on its training set, validation on its val set) and is the Δm reference")
    p.add_argument("--out", required=True, help="averaged checkpoint to write")
    p.add_argument("--greedy", action="store_true", help="best first; keep a checkpoint only if the average's "
                   "validation Δm does not drop")
    p.add_argument("--export", metavar="ONNX", help="also export the average as a verified ONNX model")
    p.add_argument("--bn-batches", type=int, default=0, help="training batches for the BN refresh (default: all)")
    p.add_argument("--batch-size", type=int, help="default: the recipe's optim.batch_size")
    p.add_argument("--no-eval", action="store_true", help="uniform mode: skip validating the average")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_average)


def _parser_group(sub) -> None:
    """The arguments of `mtl-train group`."""
    p = sub.add_parser("group", help="task grouping (Standley et al., TAG): which tasks share a network per "
                       "inference budget; table, affinity heatmap, optionally trained and exported bundles")
    p.add_argument("recipe", nargs="?", default="config/balancers.yaml", help="default: %(default)s")
    p.add_argument("--method", choices=["standley", "tag", "both"], default="both", help="default: %(default)s")
    p.add_argument("--budgets", default="1,2,3,4", help="inference budgets in units of the all-tasks network "
                   "(default: %(default)s)")
    p.add_argument("--cost", choices=["latency", "flops", "nominal"], default="latency",
                   help="network cost: measured torch latency, MACs, or 1 per network / 0.5 per half-size network "
                   "(default: %(default)s)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each (default: %(default)s)")
    p.add_argument("--short-epochs", type=int, default=2, help="schedule of the search runs (default: %(default)s)")
    p.add_argument("--all-subsets", action="store_true", help="Standley: train every subset (<= 4 tasks) instead of "
                   "estimating groups of 3+ from the pairs")
    p.add_argument("--half-scale", type=float, default=0.5, help="width factor of the half-size single-task "
                   "candidates; 1 disables them (default: %(default)s)")
    p.add_argument("--tag-every", type=int, default=5,
                   help="TAG: lookahead every N micro-batches (default: %(default)s)")
    p.add_argument("--tag-update", choices=["sgd", "optimizer"], default="sgd",
                   help="TAG lookahead step: SGD at the current lr (Fifty et al.'s definition) or the trainer's "
                   "optimizer (default: %(default)s)")
    p.add_argument("--tag-epochs", type=int, default=0, help="TAG joint run's epochs (default: --short-epochs)")
    p.add_argument("--train-final", action="store_true", help="train every chosen grouping and the baselines with "
                   "the full schedule; test losses, metrics, latency; export bundles")
    p.add_argument("--no-baselines", action="store_true", help="with --train-final: do not also train the "
                   "all-in-one and single-task baselines")
    p.add_argument("--out", default="runs/group", help="run folders (default: %(default)s)")
    p.add_argument("--results", help="results JSON (default: <out>/grouping.json; .md and .png beside it)")
    p.set_defaults(func=_group)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from mtl_perception.data.dataset import DatasetError
    from mtl_perception.inference.model import ModelError
    from training.engine.checkpoint import CheckpointError
    from training.engine.export import ExportError
    from training.engine.trainer import TrainingError
    from training.recipe.config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, CheckpointError, ExportError, TrainingError, ModelError, DatasetError,
            FileNotFoundError) as exc:
        print(f"mtl-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mtl-train: interrupted; the last completed epoch's checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
