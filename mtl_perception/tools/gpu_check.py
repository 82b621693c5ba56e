"""GPU check: the TensorRT and CUDA providers against the CPU, TensorRT engine-cache reuse, and
the node's frame rate at 1280x720, written as one JSON document.

    bash scripts/gpu_check.sh [--model runs/quick/model.onnx] [--json docs/benchmarks/gpu_check.json]

1. Accuracy: the same frames of the synthetic world through the CPU provider (the reference) and
   through CUDA FP32, TensorRT FP32 and TensorRT FP16 (`trt_fp16_enable`); per task kind a metric
   against the CPU's output, held to the tolerances in `TOLERANCES` (FP16 looser than FP32):
   segmentation class-map agreement, depth relative error (median, p99) and validity mismatch,
   detection matching (same class, IoU >= 0.5, both ways) with IoU and score difference, and the
   super-resolution image's PSNR against the CPU's.
2. Engine cache: the time to create a TensorRT session and run one frame, first with an empty
   `trt_engine_cache_dir` (TensorRT builds the engine and writes it) and then again with the
   cache (the node's second start); the cache counts as reused when engine files were written and
   the second start takes at most `CACHE_SPEEDUP_MAX` of the first.
3. Node rate: `mtl-perception benchmark` at 1280x720 with providers [tensorrt, cuda, cpu] and
   [cuda, cpu] (needs rclpy).

Without a usable NVIDIA GPU (no CUDA provider in the onnxruntime build, provider libraries that
do not load, or no driver) it prints one line, writes a document with status "unmeasured" and
exits 0; a measured document already at the JSON path is kept. Exit 1 when a check fails.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from mtl_perception.inference.loader import load_model
from mtl_perception.inference.model import ModelError, RuntimeOptions, import_onnxruntime, usable_providers
from mtl_perception.tools.benchmark import camera_frames, run_benchmark

SCHEMA = "mtl_perception.tools.gpu_check/1"
DEFAULT_JSON = "docs/benchmarks/gpu_check.json"
#: Per precision, what the GPU's outputs must reach against the CPU's (TensorRT and CUDA may use
#: TF32 for FP32 convolutions, hence not bit-exact even in FP32).
TOLERANCES: Dict[str, Dict[str, float]] = {
    "fp32": {"segmentation_agreement_min": 0.995, "depth_rel_error_median_max": 1e-3,
             "depth_rel_error_p99_max": 1e-2, "depth_valid_mismatch_max": 1e-3, "detection_matched_min": 0.98,
             "detection_iou_mean_min": 0.98, "detection_score_diff_max": 0.01, "sr_psnr_min_db": 45.0},
    "fp16": {"segmentation_agreement_min": 0.98, "depth_rel_error_median_max": 1e-2,
             "depth_rel_error_p99_max": 5e-2, "depth_valid_mismatch_max": 1e-2, "detection_matched_min": 0.95,
             "detection_iou_mean_min": 0.95, "detection_score_diff_max": 0.03, "sr_psnr_min_db": 35.0},
}
#: (name, providers, TensorRT FP16, precision) of every GPU configuration checked.
VARIANTS = (("cuda_fp32", ("cuda",), False, "fp32"), ("tensorrt_fp32", ("tensorrt",), False, "fp32"),
            ("tensorrt_fp16", ("tensorrt",), True, "fp16"))
EXPECTED_PROVIDER = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
CACHE_SPEEDUP_MAX = 0.5
DETECTION_SCORE_THRESHOLD = 0.3  # the node's default score_threshold
MATCH_IOU = 0.5


# ----------------------------------------------------------------------------- metrics
def segmentation_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of pixels with the same class id."""
    return float(np.mean(reference == candidate))


def depth_errors(reference: np.ndarray, candidate: np.ndarray) -> Dict[str, Any]:
    """Relative errors |d - d_cpu| / d_cpu where both are valid, and the fraction of pixels valid
    in one output only (NaN marks invalid depth in the contract)."""
    ref_ok, cand_ok = np.isfinite(reference), np.isfinite(candidate)
    both = ref_ok & cand_ok
    rel = np.abs(candidate[both] - reference[both]) / np.maximum(np.abs(reference[both]), 1e-6)
    return {"rel": rel.astype(np.float64), "valid_mismatch": float(np.mean(ref_ok != cand_ok))}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4), x1 y1 x2 y2."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _match_one_way(src: Dict[str, np.ndarray], dst: Dict[str, np.ndarray], threshold: float):
    """For each src box above threshold: the best-IoU dst box of its class (any score)."""
    keep = src["scores"] >= threshold
    ious, diffs, matched = [], [], 0
    for box, score, cls in zip(src["boxes"][keep], src["scores"][keep], src["classes"][keep]):
        same = dst["classes"] == cls
        if not same.any():
            continue
        iou = box_iou(box[None], dst["boxes"][same])[0]
        best = int(np.argmax(iou))
        if iou[best] >= MATCH_IOU:
            matched += 1
            ious.append(float(iou[best]))
            diffs.append(abs(float(score) - float(dst["scores"][same][best])))
    return int(keep.sum()), matched, ious, diffs


def detection_match(reference: Dict[str, np.ndarray], candidate: Dict[str, np.ndarray],
                    threshold: float = DETECTION_SCORE_THRESHOLD) -> Dict[str, Any]:
    """Matching both ways, so a box the GPU adds counts as much as one it loses."""
    out = {"boxes": 0, "matched": 0, "ious": [], "score_diffs": []}
    for src, dst in ((reference, candidate), (candidate, reference)):
        count, matched, ious, diffs = _match_one_way(src, dst, threshold)
        out["boxes"] += count
        out["matched"] += matched
        out["ious"] += ious
        out["score_diffs"] += diffs
    return out


def psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    """PSNR in dB of a uint8 image against the reference (inf when identical)."""
    mse = float(np.mean((reference.astype(np.float64) - candidate.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


# ----------------------------------------------------------------------------- comparison
def _task_summary(kind: str, pairs: Sequence[tuple]) -> Dict[str, Any]:
    """One task's metrics over all frames; pairs are (reference, candidate) role dicts."""
    if kind == "segmentation":
        return {"agreement": float(np.mean([segmentation_agreement(r["class_map"], c["class_map"])
                                            for r, c in pairs]))}
    if kind == "depth":
        errors = [depth_errors(r["depth"], c["depth"]) for r, c in pairs]
        rel = np.concatenate([e["rel"] for e in errors])
        return {"rel_error_median": float(np.median(rel)) if rel.size else 0.0,
                "rel_error_p99": float(np.percentile(rel, 99)) if rel.size else 0.0,
                "valid_mismatch": float(np.mean([e["valid_mismatch"] for e in errors]))}
    if kind == "detection":
        matches = [detection_match(r, c) for r, c in pairs]
        boxes, matched = sum(m["boxes"] for m in matches), sum(m["matched"] for m in matches)
        ious = [v for m in matches for v in m["ious"]]
        diffs = [v for m in matches for v in m["score_diffs"]]
        return {"boxes_above_threshold": boxes, "matched_fraction": matched / boxes if boxes else 1.0,
                "iou_mean": float(np.mean(ious)) if ious else 1.0,
                "score_diff_max": float(np.max(diffs)) if diffs else 0.0}
    if kind == "super_resolution":
        return {"psnr_min_db": float(min(psnr(r["image"], c["image"]) for r, c in pairs))}
    raise ValueError(f"unknown task kind {kind!r}")


def _failures(kind: str, summary: Dict[str, Any], tol: Dict[str, float]) -> List[str]:
    """Which tolerances a task's summary misses, as short sentences."""
    checks = {
        "segmentation": [("agreement", ">=", "segmentation_agreement_min")],
        "depth": [("rel_error_median", "<=", "depth_rel_error_median_max"),
                  ("rel_error_p99", "<=", "depth_rel_error_p99_max"),
                  ("valid_mismatch", "<=", "depth_valid_mismatch_max")],
        "detection": [("matched_fraction", ">=", "detection_matched_min"),
                      ("iou_mean", ">=", "detection_iou_mean_min"),
                      ("score_diff_max", "<=", "detection_score_diff_max")],
        "super_resolution": [("psnr_min_db", ">=", "sr_psnr_min_db")],
    }[kind]
    out = []
    for key, op, limit in checks:
        value, bound = summary[key], tol[limit]
        if not (value >= bound if op == ">=" else value <= bound):
            out.append(f"{kind} {key} {value:.6g} (needs {op} {bound:g})")
    return out


def compare_outputs(kinds: Dict[str, str], reference: Sequence[dict], candidate: Sequence[dict],
                    precision: str) -> Dict[str, Any]:
    """Per task the metrics against the reference frames' outputs, and the tolerances missed."""
    tol = TOLERANCES[precision]
    tasks, failures = {}, []
    for task, kind in kinds.items():
        tasks[task] = _task_summary(kind, [(r[task], c[task]) for r, c in zip(reference, candidate)])
        failures += [f"{task}: {f}" for f in _failures(kind, tasks[task], tol)]
    return {"precision": precision, "frames": len(reference), "tasks": tasks, "failures": failures,
            "passed": not failures}


def model_frames(width: int, height: int, color_order: str, count: int) -> List[np.ndarray]:
    """Frames of the synthetic world at the model's input size and colour order."""
    frames = camera_frames(width, height, count)  # BGR
    return [np.ascontiguousarray(f[..., ::-1]) if color_order == "rgb" else f for f in frames]


def run_frames(model: Any, frames: Sequence[np.ndarray]) -> List[dict]:
    return [model.run(f) for f in frames]


def check_variant(model_path: str, options: RuntimeOptions, precision: str, frames: Sequence[np.ndarray],
                  reference: Sequence[dict], expected_provider: Optional[str]) -> Dict[str, Any]:
    """One provider configuration against the CPU reference; 'unavailable' when onnxruntime put
    the session on another provider than the one asked for."""
    model = load_model(model_path, options)
    provider = model.providers[0]
    if expected_provider and provider != expected_provider:
        return {"status": "unavailable", "provider": provider, "precision": precision,
                "reason": f"asked for {expected_provider}, the session runs on {provider}"}
    result = compare_outputs({t: s.kind for t, s in model.tasks.items()}, reference, run_frames(model, frames),
                             precision)
    return dict(result, status="measured", provider=provider)


def _timed_start(model_path: str, options: RuntimeOptions, frame: np.ndarray):
    """Seconds to create the session and run one frame (what a node start costs), and the model."""
    start = time.perf_counter()
    model = load_model(model_path, options)
    model.run(frame)
    return time.perf_counter() - start, model


def engine_cache_reuse(model_path: str, fp16: bool, cache_dir: Path, frame: np.ndarray) -> Dict[str, Any]:
    """First start with an empty engine cache, then a second start that should load the engine."""
    options = RuntimeOptions(providers=["tensorrt"], fp16=fp16, trt_engine_cache_dir=str(cache_dir))
    first_s, model = _timed_start(model_path, options, frame)
    provider = model.providers[0]
    del model
    files = sorted(p for p in cache_dir.rglob("*") if p.is_file())
    second_s, model = _timed_start(model_path, options, frame)
    del model
    engines = [p for p in files if p.suffix == ".engine"]
    reused = bool(engines) and provider == EXPECTED_PROVIDER["tensorrt"] and second_s <= CACHE_SPEEDUP_MAX * first_s
    return {"provider": provider, "fp16": fp16, "first_start_s": first_s, "second_start_s": second_s,
            "second_over_first": second_s / first_s if first_s else None, "cache_files": len(files),
            "engine_files": len(engines), "cache_bytes": sum(p.stat().st_size for p in files),
            "reused": reused, "criterion": f"engine files written and second start <= {CACHE_SPEEDUP_MAX} x first"}


def node_rate(model_path: str, width: int, height: int, frames: int,
              log: Callable[[str], None]) -> Dict[str, Any]:
    """`mtl-perception benchmark` at width x height per GPU provider order (rclpy needed)."""
    if importlib.util.find_spec("rclpy") is None:
        return {"status": "unmeasured", "reason": "rclpy is not installed (source the ROS 2 setup first)"}
    out: Dict[str, Any] = {"status": "measured", "width": width, "height": height}
    for providers in (["tensorrt", "cuda", "cpu"], ["cuda", "cpu"]):
        try:  # the first start may build a TensorRT engine: minutes on a Jetson
            result = run_benchmark(model_path, width, height, frames, providers, startup_timeout=900.0, log=log)
        except RuntimeError as exc:  # the node did not come up or exited: keep the other results
            out[",".join(providers)] = {"status": "failed", "reason": str(exc)}
            continue
        e2e, b2b = result["end_to_end"], result["model_only_back_to_back"]
        out[",".join(providers)] = {
            "status": "measured", "provider": result["provider"],
            "on_gpu": result["provider"] != "CPUExecutionProvider",
            "model_only_p50_ms": b2b["p50_ms"], "model_max_rate_hz": b2b["max_rate_hz"],
            "end_to_end_rate_hz": e2e["achieved_rate_hz"], "end_to_end_p50_ms": e2e["p50_ms"],
            "end_to_end_p95_ms": e2e["p95_ms"], "ros_floor_p50_ms": result["ros_floor"]["p50_ms"],
            "overload_p95_ms": result["overload"]["p95_ms"],
            "overload_node_drop_rate": result["overload"].get("node_drop_rate"), "benchmark": result}
    return out


# ----------------------------------------------------------------------------- the machine
def _nvidia_smi() -> Optional[Dict[str, str]]:
    """GPU name, driver and memory from nvidia-smi, or None without one that answers."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, driver, memory = (part.strip() for part in out.splitlines()[0].split(",", 2))
    return {"name": name, "driver": driver, "memory": memory, "count": str(len(out.splitlines()))}


def gpu_presence() -> Dict[str, Any]:
    """Whether this machine can run the GPU checks, and if not, why not (one sentence)."""
    try:
        ort = import_onnxruntime()
    except ModelError as exc:
        return {"onnxruntime": None, "available_providers": [], "usable_providers": [], "gpu": _nvidia_smi(),
                "ready": False, "reason": str(exc)}
    available = ort.get_available_providers()
    info: Dict[str, Any] = {"onnxruntime": ort.__version__, "available_providers": available,
                            "usable_providers": usable_providers(["tensorrt", "cuda", "cpu"]),
                            "gpu": _nvidia_smi()}
    if "CUDAExecutionProvider" not in available:
        reason = f"this onnxruntime build ({ort.__version__}) has no CUDA provider (install onnxruntime-gpu)"
    elif "CUDAExecutionProvider" not in info["usable_providers"]:
        reason = "the CUDA provider's libraries do not load (no NVIDIA driver or CUDA/cuDNN libraries)"
    elif info["gpu"] is None and not Path("/proc/driver/nvidia/version").exists():
        reason = "no NVIDIA driver answers (nvidia-smi missing or failing)"
    else:
        reason = ""
    return dict(info, ready=not reason, reason=reason)


def _host() -> Dict[str, Any]:
    return {"machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count(),
            "python": platform.python_version()}


# ----------------------------------------------------------------------------- the run
def run_checks(model_path: str, frames: int = 8, node_frames: int = 200, node_size=(1280, 720),
               node: bool = True, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Accuracy per variant against the CPU, engine-cache reuse, node rate (see module docstring)."""
    cpu = load_model(model_path, RuntimeOptions(providers=["cpu"]))
    width, height = cpu.input_size
    images = model_frames(width, height, cpu.metadata.input.color_order, frames)
    reference = run_frames(cpu, images)
    result: Dict[str, Any] = {"model": {"name": cpu.name, "path": str(model_path), "input_size": [width, height],
                                        "tasks": {t: s.kind for t, s in cpu.tasks.items()}},
                              "tolerances": TOLERANCES, "detection_score_threshold": DETECTION_SCORE_THRESHOLD,
                              "engine_cache": {}, "accuracy": {}}
    with tempfile.TemporaryDirectory(prefix="mtl-trt-cache-") as cache_root:
        for fp16 in (False, True):  # builds each engine once; accuracy below loads them from the cache
            name = "fp16" if fp16 else "fp32"
            log(f"gpu_check: TensorRT {name} engine, first and second start ...")
            result["engine_cache"][name] = engine_cache_reuse(model_path, fp16, Path(cache_root) / name, images[0])
        for name, providers, fp16, precision in VARIANTS:
            log(f"gpu_check: {name} against the CPU on {frames} frames ...")
            cache = str(Path(cache_root) / precision) if "tensorrt" in providers else None
            options = RuntimeOptions(providers=list(providers), fp16=fp16, trt_engine_cache_dir=cache)
            result["accuracy"][name] = check_variant(model_path, options, precision, images, reference,
                                                     EXPECTED_PROVIDER[providers[0]])
    if node:
        log(f"gpu_check: node rate at {node_size[0]}x{node_size[1]} ...")
        result["node_rate"] = node_rate(model_path, node_size[0], node_size[1], node_frames, log)
    else:
        result["node_rate"] = {"status": "unmeasured", "reason": "--skip-node"}
    return result


def _verdict(result: Dict[str, Any]) -> List[str]:
    """Every failed check, as one line each."""
    failed = [f"{name}: {f}" for name, r in result["accuracy"].items() for f in r.get("failures", [])]
    failed += [f"{name}: {r['reason']}" for name, r in result["accuracy"].items() if r["status"] != "measured"]
    failed += [f"engine cache {name}: not reused ({r['second_start_s']:.2f} s after {r['first_start_s']:.2f} s, "
               f"{r['engine_files']} engine files)" for name, r in result["engine_cache"].items() if not r["reused"]]
    runs = {k: v for k, v in result["node_rate"].items() if isinstance(v, dict)}
    failed += [f"node rate [{k}]: {v['reason']}" for k, v in runs.items() if v["status"] != "measured"]
    failed += [f"node rate [{k}]: ran on {v['provider']}" for k, v in runs.items()
               if v["status"] == "measured" and not v["on_gpu"]]
    return failed


def _strict_json(value: Any) -> Any:
    """inf / NaN (identical outputs give an infinite PSNR) as strings: JSON has no such numbers."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def write_result(path: Path, document: Dict[str, Any]) -> bool:
    """Writes the document; an 'unmeasured' one never replaces a measurement already there."""
    if document["status"] == "unmeasured" and path.is_file():
        try:
            if json.loads(path.read_text()).get("status") != "unmeasured":
                return False
        except (OSError, ValueError):
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_strict_json(document), indent=2, allow_nan=False) + "\n")
    return True


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/quick/model.onnx", help="exported model (default: the quick one)")
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"where the result goes (default: {DEFAULT_JSON})")
    parser.add_argument("--frames", type=int, default=8, help="frames compared per provider")
    parser.add_argument("--node-frames", type=int, default=200, help="frames per node benchmark phase")
    parser.add_argument("--skip-node", action="store_true", help="skip the node's frame rate (no ROS needed)")
    args = parser.parse_args(argv)
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    presence = gpu_presence()
    document: Dict[str, Any] = {"schema": SCHEMA, "host": _host(),
                                **{k: v for k, v in presence.items() if k != "ready"}}
    if not presence["ready"]:
        document.update(status="unmeasured", passed=None)
        written = write_result(Path(args.json), document)
        where = f"wrote {args.json}" if written else f"kept the measurement in {args.json}"
        print(f"gpu_check: no usable NVIDIA GPU here ({presence['reason']}): GPU path unmeasured; {where}")
        return 0
    if not Path(args.model).is_file():
        print(f"gpu_check: {args.model}: model file not found (train one: bash scripts/demo.sh, or pass --model)")
        return 2
    result = run_checks(args.model, args.frames, args.node_frames, node=not args.skip_node, log=log)
    failed = _verdict(result)
    status = "measured" if all(r["status"] == "measured" for r in result["accuracy"].values()) else "partial"
    document.update(result, status=status, passed=not failed, failed=failed)
    write_result(Path(args.json), document)
    for line in failed:
        print(f"gpu_check: FAILED {line}")
    print(f"gpu_check: {status}, {'all checks passed' if not failed else f'{len(failed)} checks failed'}; "
          f"wrote {args.json}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
