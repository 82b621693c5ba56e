"""The report folder of bag evaluation and replay: JSON, CSV, Markdown, PNG plots, sample overlays.

    out/
      metrics.json          everything measured (strict JSON: NaN written as null)
      frames.csv            one row per camera frame: status, latency, per-frame metrics
      summary.md            the human-readable summary, linking the images below
      latency.png           latency histogram(s) with p50 / p95
      metrics_over_time.png per-frame metrics and latency against bag time; skipped frames marked
      samples/frame_NNNNNN.png   input + boxes, segmentation and depth (label | prediction), SR

Plots use matplotlib's Agg canvas directly (no pyplot state, no display).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import cv2
import numpy as np

TILE = (320, 214)  # w, h of a sample tile


# --------------------------------------------------------------------------------- text
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}g}"
    return str(value)


def summary_lines(report: Mapping[str, Any]) -> List[str]:
    """A few console lines: frames, each task's headline metrics, latency."""
    frames = report["frames"]
    reasons = ", ".join(f"{k} x{v}" for k, v in frames["skipped_by_reason"].items())
    lines = [f"{report['bag']['path']}: {frames['evaluated']} of {frames['considered']} frames scored on "
             f"{report['bag']['image_topic']}" + (f", {frames['skipped']} skipped ({reasons})" if frames["skipped"]
                                                  else "")]
    head = report["scoring"].get("headline", {})  # each task's headline metrics, chosen by its kind
    for name in report["model"]["tasks"]:
        values = report["tasks"].get(name, {})
        lines.append(f"  {name}: " + ", ".join(f"{k}={_fmt(values.get(k))}" for k in head.get(name, ())))
    lines += [f"  note: {note}" for note in report["scoring"].get("notes", [])]
    lat = report.get("latency_ms", {})
    if "model" in lat and lat["model"]["n"]:
        lines.append(f"  model latency: p50 {_fmt(lat['model']['p50'])} ms, p95 {_fmt(lat['model']['p95'])} ms")
    online = report.get("online")
    if online:
        e2e = online["latency_ms"].get("end_to_end", {})
        lines.append(f"  online: {online['frames_returned']}/{online['frames_published']} frames returned "
                     f"({online['dropped']} dropped), {_fmt(online['throughput_hz'])} Hz out, end-to-end p50 "
                     f"{_fmt(e2e.get('p50'))} ms, p95 {_fmt(e2e.get('p95'))} ms")
    return lines


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return out


def markdown(report: Mapping[str, Any], images: Mapping[str, Any]) -> str:
    """summary.md: overview, frames, ground truth, accuracy, latency, online replay, figures."""
    md = (_md_overview(report) + _md_frames(report["frames"]) + _md_ground_truth(report["bag"])
          + _md_accuracy(report) + _md_latency(report) + _md_figures(report, images))
    return "\n".join(md)


def _md_overview(report: Mapping[str, Any]) -> List[str]:
    bag, model = report["bag"], report["model"]
    md: List[str] = [f"# Bag evaluation: {model['name']} on {Path(bag['path']).name}", ""]
    mode = {"offline": "offline (the model run on every frame, no ROS graph)",
            "recorded": "recorded outputs of a perception node",
            "online": "online replay through a live perception_node"}.get(report.get("mode"), report.get("mode"))
    md += [f"- mode: {mode}",
           f"- bag: `{bag['path']}` ({bag['storage']}), camera `{bag['image_topic']}` ({bag['image_type']}), "
           f"{bag['messages_on_image_topic']} messages, sizes {', '.join(bag['camera_sizes']) or '–'}",
           f"- model: `{model['name']}` ({model['path'] or 'metadata only'}), input {model['input_size'][0]}x"
           f"{model['input_size'][1]} {model['color_order']}" + (f", providers {', '.join(model['providers'])}"
                                                                 if model.get("providers") else ""),
           f"- scoring: {report['scoring']['resolution']}; {report['scoring']['matching']}; detection: "
           f"{report['scoring']['detection']}"]
    return md + [f"- note: {note}" for note in report["scoring"].get("notes", [])] + [""]


def _md_frames(frames: Mapping[str, Any]) -> List[str]:
    md = ["## Frames", ""]
    rows = [["considered", frames["considered"]], ["scored", frames["evaluated"]],
            ["skipped (bad image)", frames["skipped"]]]
    rows += [[f"  {k}", v] for k, v in frames["skipped_by_reason"].items()]
    if "not_returned" in frames:
        rows.append(["not returned by the node", frames["not_returned"]])
    rows.append(["unusable ground-truth messages", frames["ground_truth_skipped"]])
    rows += [[f"  {k}", v] for k, v in frames["ground_truth_skipped_by_reason"].items()]
    md += _table(["", "frames"], rows) + [""]
    unknown = frames.get("ground_truth_boxes_of_unknown_classes") or {}
    if unknown:
        md += ["Labelled boxes of classes the model does not have (left out): "
               + ", ".join(f"{k or '(no class)'} x{v}" for k, v in unknown.items()) + ".", ""]
    if frames["skipped_examples"]:
        md += ["Skipped frames (first ones):", ""]
        md += [f"- frame {e['frame']} (stamp {e['stamp_ns']}): {e['reason']}: {e['detail']}"
               for e in frames["skipped_examples"][:10]] + [""]
    return md


def _md_ground_truth(bag: Mapping[str, Any]) -> List[str]:
    gt = bag["ground_truth"]
    md = ["## Ground truth", ""]
    md += _table(["label", "topic", "messages", "frames scored", "unmatched"],
                 [[k, f"`{v['topic']}`", v["messages"], v["frames_scored"], v["unmatched_messages"]]
                  for k, v in gt.items()]) + [""]
    if bag["ground_truth_missing"]:
        md += [f"No ground truth in the bag for: {', '.join(bag['ground_truth_missing'])} "
               "(those tasks are scored only where labels exist; super-resolution needs none).", ""]
    return md


def _md_accuracy(report: Mapping[str, Any]) -> List[str]:
    md = ["## Accuracy", ""]
    metric_rows = []
    for name, kind in report["model"]["tasks"].items():
        values = report["tasks"].get(name, {})
        base = report.get("baselines", {}).get(name, {})
        for key, value in values.items():
            if isinstance(value, dict):
                continue
            metric_rows.append([f"{name} ({kind})", key, value, base.get(key)])
    md += _table(["task", "metric", "model", "baseline"], metric_rows) + [""]
    base_names = [f"{n}: {b['name']}" for n, b in report.get("baselines", {}).items() if "name" in b]
    if base_names:
        md += ["Baselines: " + "; ".join(base_names) + ".", ""]
    for name, values in report["tasks"].items():
        for key, value in values.items():
            if isinstance(value, dict):
                md += [f"{name} {key}:", ""] + _table(["class", key.replace("_per_class", "")],
                                                      [[c, v] for c, v in value.items()]) + [""]
    return md


def _md_latency(report: Mapping[str, Any]) -> List[str]:
    md = ["## Latency", ""]
    lat_rows = []
    for group, series in report.get("latency_ms", {}).items():
        if isinstance(series, dict) and "p50" in series:
            lat_rows.append([group, series["n"], series["mean"], series["p50"], series["p95"], series["p99"],
                             series["max"]])
    online = report.get("online")
    if online:
        for group, series in online["latency_ms"].items():
            lat_rows.append([group, series["n"], series["mean"], series["p50"], series["p95"], series["p99"],
                             series["max"]])
    md += _table(["what (ms)", "n", "mean", "p50", "p95", "p99", "max"], lat_rows) + [""]
    if online:
        md += ["## Online replay", ""]
        md += _table(["", "value"], [
            ["frames published", online["frames_published"]], ["frames returned", online["frames_returned"]],
            ["dropped", online["dropped"]], ["drop rate", online["drop_rate"]],
            ["playback rate", online["rate"]], ["output rate (Hz)", online["throughput_hz"]],
            ["node", online["node"]]] + [[f"messages on {k}", v] for k, v in online["messages"].items()]) + [""]
    return md


def _md_figures(report: Mapping[str, Any], images: Mapping[str, Any]) -> List[str]:
    md: List[str] = []
    if images.get("latency"):
        md += [f"![latency]({images['latency']})", ""]
    if images.get("over_time"):
        md += [f"![metrics over time]({images['over_time']})", ""]
    if images.get("samples"):
        md += ["## Samples", "", "Each: camera image with ground-truth boxes (red) and detections with score >= 0.3 "
               "(green); segmentation label | prediction; depth label | prediction (inverse depth, shared scale, "
               "black = invalid); super-resolution output.", ""]
        md += [f"![frame]({p})" for p in images["samples"]] + [""]
    if report.get("output_bag"):
        ob = report["output_bag"]
        md += [f"Model outputs written to `{ob['path']}` ({ob['storage']}, topics under `{ob['namespace']}`).", ""]
    return md


# ------------------------------------------------------------------------------------ plots
def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def latency_plot(path: Path, series: Mapping[str, Sequence[float]]) -> bool:
    series = {k: np.asarray([v for v in vals if v is not None and math.isfinite(v)], np.float64)
              for k, vals in series.items()}
    series = {k: v for k, v in series.items() if v.size}
    if not series:
        return False
    fig = _figure(7.5, 2.6 * len(series))
    for i, (name, values) in enumerate(series.items()):
        ax = fig.add_subplot(len(series), 1, i + 1)
        ax.hist(values, bins=min(50, max(5, values.size // 3)), color="#4878a8")
        for q, style in ((50, "-"), (95, "--")):
            v = float(np.percentile(values, q))
            ax.axvline(v, color="#c03030", linestyle=style, linewidth=1.2, label=f"p{q} {v:.1f} ms")
        ax.set_title(f"{name}: {values.size} frames", fontsize=10)
        ax.set_xlabel("ms")
        ax.set_ylabel("frames")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))
    return True


def over_time_plot(path: Path, rows: Sequence[Mapping[str, Any]], latency_keys: Sequence[str]) -> bool:
    ok_rows = [r for r in rows if r.get("status") == "ok"]
    if not ok_rows:
        return False
    stamps = [r.get("stamp_ns") for r in rows if r.get("stamp_ns") is not None]
    t0 = min(stamps) if stamps else None

    def x_of(r: Mapping[str, Any]) -> float:
        return (r["stamp_ns"] - t0) / 1e9 if t0 is not None and r.get("stamp_ns") is not None else float(r["frame"])

    metric_keys: List[str] = []
    for r in ok_rows:
        for k in r:
            if "/" in k and k not in metric_keys:
                metric_keys.append(k)
    groups: Dict[str, List[str]] = {}
    for k in metric_keys:
        groups.setdefault(k.split("/")[0], []).append(k)
    panels = list(groups.items())
    lat = [k for k in latency_keys if any(r.get(k) is not None for r in ok_rows)]
    n = len(panels) + (1 if lat else 0) or 1
    fig = _figure(9.0, 2.0 * n + 0.6)
    xlabel = "bag time (s, from header stamps)" if t0 is not None else "frame"
    for i, (task, keys) in enumerate(panels):
        ax = fig.add_subplot(n, 1, i + 1)
        for k in keys:
            pts = [(x_of(r), r[k]) for r in ok_rows if r.get(k) is not None and math.isfinite(r[k])]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker=".", markersize=3, linewidth=0.9, label=k.split("/", 1)[1])
        ax.set_title(task, fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    if lat:
        ax = fig.add_subplot(n, 1, n)
        for k in lat:
            pts = [(x_of(r), r[k]) for r in ok_rows if r.get(k) is not None and math.isfinite(r[k])]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker=".", markersize=3, linewidth=0.9, label=k)
        bad = [x_of(r) for r in rows if r.get("status") not in ("ok", None)]
        if bad:
            ax.plot(bad, [0.0] * len(bad), "x", color="#c03030", label="skipped / not returned")
        ax.set_title("latency (ms)", fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    fig.axes[-1].set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(str(path))
    return True


# ---------------------------------------------------------------------------------- samples
def _fit(image: Optional[np.ndarray], title: str) -> np.ndarray:
    w, h = TILE
    tile = np.zeros((h, w, 3), np.uint8)
    if image is not None:
        scale = min(w / image.shape[1], h / image.shape[0])
        size = (max(1, int(image.shape[1] * scale)), max(1, int(image.shape[0] * scale)))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
        y, x = (h - size[1]) // 2, (w - size[0]) // 2
        tile[y:y + size[1], x:x + size[0]] = resized
    else:
        cv2.putText(tile, "(none)", (10, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (160, 160, 160), 1, cv2.LINE_AA)
    cv2.rectangle(tile, (0, 0), (w, 17), (0, 0, 0), -1)
    cv2.putText(tile, title, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _inverse_depth(depth: Optional[np.ndarray], lo: float, hi: float) -> Optional[np.ndarray]:
    if depth is None:
        return None
    valid = np.isfinite(depth) & (depth > 0)
    out = np.zeros(depth.shape + (3,), np.uint8)
    inv = np.zeros(depth.shape, np.float32)
    inv[valid] = 1.0 / depth[valid]
    scaled = np.clip((inv - lo) / max(hi - lo, 1e-9), 0, 1)
    colour = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    out[valid] = colour[valid]
    return out


def sample_mosaic(sample: Mapping[str, Any], tasks: Mapping, color_order: str) -> np.ndarray:
    """2x3 tiles (BGR): input + boxes, segmentation label | prediction, depth label | prediction, SR."""
    from mtl_perception.inference.postprocess import overlay_segmentation

    small = sample["small"]  # RGB at the model size
    base = np.ascontiguousarray(small[..., ::-1])
    outputs, target = sample["outputs"], sample["target"]
    kinds = {t.kind: (name, t) for name, t in tasks.items()}
    boxes_img = cv2.resize(base, (base.shape[1] * 2, base.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    if "detection" in kinds:
        name, task = kinds["detection"]
        for box in np.asarray(target.get("boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4):
            p = tuple(int(round(v * 2)) for v in box)
            cv2.rectangle(boxes_img, p[:2], p[2:], (40, 40, 230), 1)
        if name in outputs:
            o = outputs[name]
            for box, score, cls in zip(np.asarray(o["boxes"]).reshape(-1, 4), np.asarray(o["scores"]).reshape(-1),
                                       np.asarray(o["classes"]).reshape(-1)):
                if score < 0.3:
                    continue
                p = tuple(int(round(float(v) * 2)) for v in box)
                cv2.rectangle(boxes_img, p[:2], p[2:], (60, 220, 60), 1)
                label = task.class_names[int(cls)] if 0 <= int(cls) < len(task.class_names) else str(int(cls))
                cv2.putText(boxes_img, f"{label} {score:.2f}", (p[0], max(10, p[1] - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                            0.33, (60, 220, 60), 1, cv2.LINE_AA)
    seg_gt = seg_pred = depth_gt = depth_pred = sr = None
    if "segmentation" in kinds:
        name, task = kinds["segmentation"]
        if target.get("semantic") is not None:
            seg_gt = overlay_segmentation(base, target["semantic"], 0.6, task.ignore_index)
        if name in outputs:
            seg_pred = overlay_segmentation(base, outputs[name]["class_map"], 0.6, task.ignore_index)
    if "depth" in kinds:
        name, task = kinds["depth"]
        ref = target.get("depth")
        pred = outputs[name]["depth"] if name in outputs else None
        values = ref if ref is not None else pred
        if values is not None:
            valid = np.isfinite(values) & (values > 0)
            inv = 1.0 / values[valid] if valid.any() else np.array([1.0])
            lo, hi = (float(np.percentile(inv, 2)), float(np.percentile(inv, 98))) if inv.size else (0.0, 1.0)
            depth_gt, depth_pred = _inverse_depth(ref, lo, hi), _inverse_depth(pred, lo, hi)
    if "super_resolution" in kinds:
        name, _ = kinds["super_resolution"]
        if name in outputs:
            img = outputs[name]["image"]
            sr = np.ascontiguousarray(img[..., ::-1]) if color_order == "rgb" else img
    top = np.hstack([_fit(boxes_img, f"frame {sample['frame']}: labels red, detections green"),
                     _fit(seg_gt, "segmentation label"), _fit(seg_pred, "segmentation prediction")])
    bottom = np.hstack([_fit(depth_gt, "depth label"), _fit(depth_pred, "depth prediction"),
                        _fit(sr, "super-resolution")])
    return np.vstack([top, bottom])


# ------------------------------------------------------------------------------------ write
def write_report(out: Path, report: Dict[str, Any], rows: Sequence[Mapping[str, Any]],
                 samples: Sequence[Mapping[str, Any]], tasks: Mapping, color_order: str,
                 latency_series: Mapping[str, Sequence[float]]) -> None:
    """Writes metrics.json, frames.csv, summary.md and the PNGs into `out` (and lists them in
    report["files"])."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images: Dict[str, Any] = {}
    if latency_plot(out / "latency.png", latency_series):
        images["latency"] = "latency.png"
    latency_keys = sorted({k for r in rows for k in r if k.endswith("_ms")})
    if over_time_plot(out / "metrics_over_time.png", rows, latency_keys):
        images["over_time"] = "metrics_over_time.png"
    if samples:
        (out / "samples").mkdir(exist_ok=True)
        images["samples"] = []
        for sample in samples:
            name = f"samples/frame_{sample['frame']:06d}.png"
            cv2.imwrite(str(out / name), sample_mosaic(sample, tasks, color_order))
            images["samples"].append(name)
    keys: List[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with open(out / "frames.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    report["files"] = {"metrics": "metrics.json", "frames": "frames.csv", "summary": "summary.md",
                       **{k: v for k, v in images.items()}}
    (out / "summary.md").write_text(markdown(report, images) + "\n")
    (out / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")


__all__ = ["write_report", "summary_lines", "markdown", "latency_plot", "over_time_plot", "sample_mosaic"]
