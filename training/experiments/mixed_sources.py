"""Mixed sources with disjoint label sets, measured: the README's "Partial labels and mixed
sources" figures.

Three training sources, none labelled for every task: a synthetic split used for segmentation and
depth only, another synthetic split used for detection only, and scikit-image's bundled sample
photos (real photographs, unlabelled: super-resolution only). Two models are trained with the
real CLI (`mtl-train train`, which exports and verifies), then scored with `mtl-perception
evaluate` (which prints the trivial baselines) on a fully labelled synthetic validation split and
on held-out photos (other photos than the training ones):

- `synthetic_only`: the two synthetic splits, plus a third synthetic split for super-resolution;
- `mixed`: the same two synthetic splits, plus the training photos for super-resolution.

Each source is a third of the draws in both and the super-resolution sources are equally large
(as many synthetic frames as photo tiles), so the models differ only in what super-resolution
learns from.

    python -m training.experiments.mixed_sources --work /tmp/mixed --out docs/mixed_sources.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import numpy as np
import yaml

from mtl_perception.data.dataset import write_dataset

#: scikit-image's bundled photographs (no download); the held-out ones are never trained on
TRAIN_PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "coins", "moon",
                "grass", "gravel", "clock", "cell")
HELD_OUT_PHOTOS = ("chelsea", "coffee", "camera", "brick")


def photo_tiles(names, tile: tuple) -> List[np.ndarray]:
    """Non-overlapping RGB tiles (w, h) of the named skimage photos (grey ones as RGB)."""
    import skimage.data

    w, h = tile
    tiles = []
    for name in names:
        image = np.asarray(getattr(skimage.data, name)())
        image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
        for y in range(0, image.shape[0] - h + 1, h):
            for x in range(0, image.shape[1] - w + 1, w):
                tiles.append(np.ascontiguousarray(image[y:y + h, x:x + w]).astype(np.uint8))
    return tiles


def write_photos(root: Path, names, tile: tuple) -> int:
    """The photos' tiles as a dataset in the project's format, labelled for super-resolution only."""
    if not (root / "dataset.json").exists():
        frames = [SimpleNamespace(image=t, labelled_tasks=["super_resolution"]) for t in photo_tiles(names, tile)]
        write_dataset(root, frames, (), (), info={"source": "scikit-image sample photos", "photos": list(names)})
    return len(json.loads((root / "dataset.json").read_text())["images"])


def recipe(name: str, work: Path, mixed: bool, epochs: int, sr_frames: int) -> dict:
    """Three sources, a third of the draws each, in both models: only the super-resolution
    source differs (the photos' `sr_frames` tiles or as many synthetic frames), so every task
    sees as many samples, and every epoch has as many steps, in both."""
    sr_source = ({"root": str(work / "photos_train"), "weight": 1.0} if mixed else
                 {"format": "synthetic", "root": str(work / "synthetic_sr"), "frames": sr_frames, "seed": 4,
                  "tasks": ["super_resolution"], "weight": 1.0})
    train = [
        {"format": "synthetic", "root": str(work / "synthetic_segdepth"), "frames": 240, "seed": 1,
         "tasks": ["segmentation", "depth"], "weight": 1.0},
        {"format": "synthetic", "root": str(work / "synthetic_det"), "frames": 240, "seed": 2,
         "tasks": ["detection"], "weight": 1.0},
        sr_source,
    ]
    return {
        "name": name, "seed": 0, "out_dir": str(work / name), "threads": 1,
        "data": {"train": train, "val": str(work / "synthetic_val"), "input_size": [96, 64], "sr_scale": 2},
        "model": {"channels": [8, 16, 16, 32, 32], "blocks": [1, 1, 0, 0], "fpn_channels": 32},  # small: minutes of CPU
        "optim": {"epochs": epochs, "batch_size": 16, "warmup_steps": 10, "lr": 0.004},
        "export": {"verify_frames": 2},
    }


def run(cmd: List[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def evaluate(model: Path, data: Path, report: Path) -> dict:
    run([sys.executable, "-m", "mtl_perception.cli", "evaluate", "--model", str(model), "--data", str(data),
         "--json", str(report), "--no-progress"])
    return json.loads(report.read_text())


def summary(report: dict) -> Dict[str, dict]:
    """Main metrics beside the baselines, per task."""
    return {t: {"metrics": m, "baseline": report["baselines"].get(t)} for t, m in report["tasks"].items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    hr = (96 * 2, 64 * 2)
    counts = {"photos_train": write_photos(work / "photos_train", TRAIN_PHOTOS, hr),
              "photos_held_out": write_photos(work / "photos_held_out", HELD_OUT_PHOTOS, hr)}
    if not (work / "synthetic_val" / "dataset.json").exists():
        from mtl_perception.data.synthetic import Camera, generate_dataset

        generate_dataset(work / "synthetic_val", 64, seed=3, camera=Camera.default(*hr), progress=False)
    results = {"counts": counts, "train_photos": TRAIN_PHOTOS, "held_out_photos": HELD_OUT_PHOTOS, "models": {}}
    variants = (("synthetic_only", False), ("mixed", True))
    trainings = []
    for name, mixed in variants:  # both train side by side (one thread each)
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe(name, work, mixed, args.epochs, counts["photos_train"]), sort_keys=False))
        if (work / name / "model.onnx").exists():  # trained and exported by an earlier run
            continue
        trainings.append(subprocess.Popen([sys.executable, "-m", "training.cli", "train", str(path), "--no-progress"],
                                          env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL))
    if any(p.wait() != 0 for p in trainings):
        raise SystemExit("a training run failed")
    for name, mixed in variants:
        history = [json.loads(json.dumps(row)) for row in _metrics_rows(work / name / "metrics.csv")]
        model = work / name / "model.onnx"
        results["models"][name] = {
            "recipe": recipe(name, work, mixed, args.epochs, counts["photos_train"])["data"]["train"],
            "train_losses_finite": all(np.isfinite(float(v)) for row in history for k, v in row.items()
                                       if k.startswith("train/")),
            "last_epoch": history[-1],
            "synthetic_val": summary(evaluate(model, work / "synthetic_val", work / f"{name}_val.json")),
            "held_out_photos": summary(evaluate(model, work / "photos_held_out", work / f"{name}_photos.json")),
        }
    text = json.dumps(results, indent=1, default=str).replace(str(work), "<work>")  # no machine paths
    args.out.write_text(text + "\n")
    print(json.dumps({n: {"sr_gain_db_held_out": m["held_out_photos"]["super_resolution"]["metrics"].get("psnr_gain")}
                      for n, m in results["models"].items()}, indent=1))
    return 0


def _metrics_rows(path: Path) -> List[dict]:
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


if __name__ == "__main__":
    raise SystemExit(main())
