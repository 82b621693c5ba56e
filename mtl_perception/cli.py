"""`mtl-perception`: runtime-side tools (no torch).

    mtl-perception generate --out data/synthetic/train --frames 2000
    mtl-perception info model.onnx
    mtl-perception check-data data/synthetic/train
    mtl-perception check-data --format cityscapes data/cityscapes --split val
    mtl-perception bundle grouped/bundle.json seg_depth.onnx det_sr.onnx --name grouped
    mtl-perception evaluate --model model.onnx --data data/synthetic/val --json report.json
    mtl-perception convert cityscapes /data/cityscapes --split val --out data/cityscapes_val
    mtl-perception demo --model model.onnx --out runs/demo
    mtl-perception benchmark --model model.onnx --width 640 --height 480 --frames 200 --json bench.json
    mtl-perception make-bag drive --frames 100 --storage mcap
    mtl-perception eval-bag drive --model model.onnx --out drive_eval --output-bag drive_outputs
    mtl-perception replay drive --model model.onnx --start-node --out drive_replay
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional


def _generate(args) -> int:
    from mtl_perception.data.synthetic import Camera, generate_dataset

    camera = Camera.default(args.width, args.height)
    root = generate_dataset(args.out, args.frames, seed=args.seed, night_fraction=args.night_fraction,
                            camera=camera, workers=args.workers, progress=not args.no_progress)
    print(f"dataset: {root}")
    return 0


def _info(args) -> int:
    from mtl_perception.inference.loader import load_model
    from mtl_perception.inference.model import RuntimeOptions

    model = load_model(args.model, RuntimeOptions(providers=args.providers.split(",") if args.providers else None))
    meta = model.metadata
    print(f"model: {model.path}\nname: {meta.name}\nproviders: {', '.join(model.providers)}")
    spec = meta.input
    print(f"input: {spec.width}x{spec.height} {spec.color_order} {spec.dtype} {spec.layout}, resize {spec.resize}")
    for member in getattr(model, "describe_members", lambda: [])():  # a bundle: one line per member
        tasks = ", ".join(f"{n} ({k})" for n, k in member["tasks"].items())
        providers = ", ".join(member["providers"])
        print(f"member {member['file']}: name {member['name']}, tasks {tasks}, providers {providers}")
    for name, task in meta.tasks.items():
        details = {k: v for k, v in vars(task).items() if k not in ("kind", "outputs") and v not in ((), 0, 0.0)}
        print(f"task {name} ({task.kind}): outputs {task.outputs} {details}")
    metrics = meta.provenance.get("metrics", {})
    if metrics:
        print("training validation: " + ", ".join(f"{k[4:]}={v:.4g}" for k, v in sorted(metrics.items())))
    return 0


def _check_data(args) -> int:
    from mtl_perception.data.check import check_dataset, check_source

    if not args.format and (args.split is not None or args.option):
        raise ValueError("--split and -o/--option are reader options: they need --format")
    if args.format:
        problems = check_source(args.format, args.root, _reader_option_values(args), progress=not args.no_progress)
    else:
        problems = check_dataset(args.root, progress=not args.no_progress)
    for problem in problems:
        print(problem)
    if problems:
        print(f"mtl-perception: {args.root}: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{args.root}: no problems found")
    return 0


def _bundle(args) -> int:
    from mtl_perception.inference.bundle import write_bundle

    try:
        provenance = json.loads(args.provenance) if args.provenance else None
    except ValueError as exc:
        raise ValueError(f"--provenance is not valid JSON ({exc})") from None
    if provenance is not None and not isinstance(provenance, dict):
        raise ValueError("--provenance must be a JSON object")
    manifest = write_bundle(args.out, args.models, name=args.name, provenance=provenance, link=args.link)
    print(f"bundle: {manifest}")
    return _info(argparse.Namespace(model=str(manifest), providers="cpu"))


def _evaluate(args) -> int:
    from mtl_perception.data.dataset import MultiTaskDataset
    from mtl_perception.evaluation.evaluate import evaluate_dataset
    from mtl_perception.inference.loader import load_model
    from mtl_perception.inference.model import RuntimeOptions
    from mtl_perception.kinds.registry import Scoring

    model = load_model(args.model, RuntimeOptions(providers=args.providers.split(",") if args.providers else None))
    dataset = _open_source(args.format, args.data, args) if args.format else MultiTaskDataset(args.data)
    report = evaluate_dataset(model, dataset, Scoring.of(model.metadata), limit=args.limit,
                              progress=not args.no_progress)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


# ------------------------------------------------------------ dataset readers (convert, evaluate --format)
def _reader_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", help="the split to read (e.g. train, val; default: the format's own)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a reader option, e.g. raw_root=/data/kitti_raw, classes=40, tasks=detection (repeatable)")


def _open_source(fmt: str, root: str, args):
    """The reader of ``fmt`` on ``root`` with --split and the -o KEY=VALUE options."""
    from mtl_perception.data.readers import open_reader

    return open_reader(fmt, root, _reader_option_values(args))


def _reader_option_values(args) -> dict:
    """--split and the -o KEY=VALUE options (values parsed as YAML scalars: true, 40; paths stay text)."""
    import yaml

    options = {}
    for text in args.option:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {text!r}: expected KEY=VALUE")
        parsed = yaml.safe_load(value) if value else None
        options[key] = parsed if isinstance(parsed, (bool, int, float)) or parsed is None else value
    if args.split is not None:
        options["split"] = args.split
    return options


def _convert(args) -> int:
    from mtl_perception.data.readers.convert import convert

    reader = _open_source(args.format, args.source, args)
    out = convert(reader, args.out, limit=args.limit, progress=not args.no_progress)
    print(f"dataset: {out} ({min(len(reader), args.limit or len(reader))} frames from {args.format} {args.source})")
    return 0


def _add_convert(sub) -> None:
    from mtl_perception.data.readers import READERS

    p = sub.add_parser("convert", help="write a public dataset (read in place) in the project's dataset format")
    p.add_argument("format", choices=sorted(READERS), help="the source's layout")
    p.add_argument("source", help="the dataset's root folder (nyuv2: the .mat file; video: the video file)")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--limit", type=int, help="convert only the first N frames")
    p.add_argument("--no-progress", action="store_true")
    _reader_options(p)
    p.set_defaults(func=_convert)


def _demo(args) -> int:
    from mtl_perception.tools.demo import main as demo_main

    return demo_main(args)


def _benchmark(args) -> int:
    from mtl_perception.tools.benchmark import main as benchmark_main

    return benchmark_main(args)


def _make_bag(args) -> int:
    from mtl_perception.bags.make import main as make_bag_main

    return make_bag_main(args)


def _eval_bag(args) -> int:
    from mtl_perception.bags.evaluate import main as eval_bag_main

    return eval_bag_main(args)


def _replay(args) -> int:
    from mtl_perception.tools.replay import main as replay_main

    return replay_main(args)


def build_parser() -> argparse.ArgumentParser:
    from mtl_perception.inference.pixels import WRITABLE_ENCODINGS  # NumPy only
    parser = argparse.ArgumentParser(prog="mtl-perception", description="mtl_perception runtime tools (no torch).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write a synthetic multi-task driving dataset")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--night-fraction", type=float, default=0.25)
    p.add_argument("--width", type=int, default=384, help="full-resolution image width (the SR target)")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_generate)

    p = sub.add_parser("info", help="print an exported model's contract metadata")
    p.add_argument("model")
    p.add_argument("--providers", help="comma-separated, e.g. tensorrt,cuda,cpu (default: best available)")
    p.set_defaults(func=_info)

    p = sub.add_parser("check-data", help="validate every file of a dataset before a long run; one line per problem")
    p.add_argument("root", help="dataset folder (dataset.json + images), or with --format the root of a public "
                                "dataset read in place")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--format", help="read ROOT with this dataset reader (see `convert --help`)")
    _reader_options(p)
    p.set_defaults(func=_check_data)

    p = sub.add_parser("bundle", help="write a model bundle: a manifest naming several exported models (task grouping)")
    p.add_argument("out", help="manifest to write (*.json), or a folder (gets bundle.json); members are copied "
                               "beside it")
    p.add_argument("models", nargs="+", help="exported .onnx files, disjoint tasks, same input size and colour order")
    p.add_argument("--name", help="bundle name (default: the folder's name, or the manifest's stem)")
    p.add_argument("--provenance", help="JSON object stored in the manifest, e.g. '{\"grouping\": {\"budget\": 2}}'")
    p.add_argument("--link", action="store_true", help="hard-link the members instead of copying (where possible)")
    p.set_defaults(func=_bundle)

    p = sub.add_parser("evaluate", help="score a model on a dataset folder beside trivial baselines")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="dataset folder (dataset.json + images), or with --format the "
                                                  "root of a public dataset read in place")
    p.add_argument("--limit", type=int, help="evaluate only the first N frames")
    p.add_argument("--json", help="also write the report to this file")
    p.add_argument("--providers", help="comma-separated execution providers")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--format", help="read --data with this dataset reader (see `convert --help`)")
    _reader_options(p)
    p.set_defaults(func=_evaluate)
    _add_convert(sub)

    p = sub.add_parser("demo", help="run the node on a synthetic camera, report rates/latency/drops, write a mosaic")
    p.add_argument("--model", required=True)
    p.add_argument("--out", default="runs/demo", help="folder for report.json, report.txt and mosaic.png")
    p.add_argument("--seconds", type=float, default=15.0, help="how long to record the outputs")
    p.add_argument("--rate", type=float, default=10.0, help="camera frames per second")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--providers", help="comma-separated execution providers (default: best available)")
    p.add_argument("--stock-dds", action="store_true",
                   help="Fast DDS defaults instead of the large shared-memory profile (mtl_perception.ros.dds_profile)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("benchmark", help="model-only vs end-to-end ROS latency, and overload behaviour")
    p.add_argument("--model", required=True)
    p.add_argument("--width", type=int, default=640, help="camera image width")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--frames", type=int, default=200, help="frames per phase")
    p.add_argument("--encoding", choices=WRITABLE_ENCODINGS, default="bgr8",
                   help="the camera's image encoding (a Bayer mosaic, 4:2:2 or 4:2:0 YUV as raw sensors send them)")
    p.add_argument("--rate", type=float, help="end-to-end camera rate (default: half the model's throughput, <= 30 Hz)")
    p.add_argument("--overload-factor", type=float, default=2.0, help="overload camera rate / model rate")
    p.add_argument("--providers", help="comma-separated execution providers (default: best available)")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="onnxruntime intra-op threads of the node and the model-only timer (0: its default)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--stock-dds", action="store_true",
                   help="Fast DDS defaults instead of the large shared-memory profile (mtl_perception.ros.dds_profile)")
    p.set_defaults(func=_benchmark)

    from mtl_perception.bags import evaluate as eval_bag
    from mtl_perception.bags import make as make_bag
    from mtl_perception.tools import replay  # argument definitions only (no heavy imports)

    p = sub.add_parser("make-bag", help="write a rosbag2 bag (synthetic world with ground truth, images or a video)")
    make_bag.add_arguments(p)
    p.set_defaults(func=_make_bag)

    p = sub.add_parser("eval-bag", help="score a model on a bag offline: accuracy vs ground truth, latency, report")
    eval_bag.add_arguments(p)
    p.set_defaults(func=_eval_bag)

    p = sub.add_parser("replay", help="play a bag into a live perception_node, record its outputs, score them")
    replay.add_arguments(p)
    p.set_defaults(func=_replay)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from mtl_perception.inference.model import ModelError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ModelError, ValueError, FileNotFoundError) as exc:
        print(f"mtl-perception: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
