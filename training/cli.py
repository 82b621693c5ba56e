"""`mtl-train`: the offline training command line.

    mtl-train train config/quick.yaml            # train (resumes if interrupted), then export
    mtl-train train config/quick.yaml --set optim.epochs=2 --out runs/try
    mtl-train export runs/quick/last.pt --out model.onnx
    mtl-train recipe config/quick.yaml           # validate a recipe and print it resolved
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional


def _train(args) -> int:
    from . import distributed
    from .export import export_checkpoint
    from .recipe import load_recipe
    from .trainer import LAST, Trainer

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
    from .export import export_checkpoint

    worst = export_checkpoint(args.checkpoint, args.out, name=args.name, opset=args.opset)
    print(f"model: {args.out} (onnxruntime vs torch, worst: {_fmt(worst)})")
    return 0


def _recipe(args) -> int:
    import yaml

    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    print(yaml.safe_dump(json.loads(json.dumps(recipe.to_dict())), sort_keys=False))
    return 0


def _fmt(values) -> str:
    return ", ".join(f"{k} {v:.2g}" for k, v in values.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtl-train", description="Train and export multi-task perception models.")
    sub = parser.add_subparsers(dest="command", required=True)

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

    p = sub.add_parser("export", help="export a checkpoint as a self-describing, verified ONNX model")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--name", help="model name in the metadata (default: the recipe's name)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the recipe's export.opset)")
    p.set_defaults(func=_export)

    p = sub.add_parser("recipe", help="validate a recipe and print it with every default filled in")
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_recipe)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from mtl_perception.model import ModelError

    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .export import ExportError
    from .trainer import TrainingError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, ExportError, TrainingError, ModelError, FileNotFoundError) as exc:
        print(f"mtl-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mtl-train: interrupted; the last completed epoch's checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
