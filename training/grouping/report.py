"""Tables and figures of `mtl-train group`: what each method chose per budget, what it measured.

The selection table lists, per budget and method, the chosen networks, their summed cost and the
predicted total loss (Standley's table: validation losses of the short runs, estimated groups
marked *); the measured table lists each distinct grouping once with its test losses, main
metrics and latency after full training. The PNG shows TAG's affinity matrix and the pair
transfer of Standley's runs (t's loss next to u relative to t alone).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from mtl_perception.evaluation.metrics import METRIC_DIRECTIONS

ARROWS = {1: "↑", -1: "↓"}


def _short(task: str) -> str:
    return {"segmentation": "seg", "depth": "depth", "detection": "det", "super_resolution": "SR"}.get(task, task)


def fmt_groups(networks: Sequence[Mapping]) -> str:
    """"{seg, depth} + {det}½ ..." (½: a half-width network, *: losses estimated)."""
    parts = []
    for n in networks:
        mark = ("½" if n.get("half") else "") + ("*" if n.get("estimated") else "")
        parts.append("{" + ", ".join(_short(t) for t in n["tasks"]) + "}" + mark)
    return " + ".join(parts)


def _num(value, digits=4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def selection_table(result: Mapping) -> str:
    lines = ["| budget | method | networks | cost | predicted total loss | TAG affinity score |",
             "|---:|---|---|---:|---:|---:|"]
    for row in result["selections"]:
        if row.get("error"):
            lines.append(f"| {row['budget']:g} | {row['method']} | {row['error']} | – | – | – |")
            continue
        lines.append(f"| {row['budget']:g} | {row['method']} | {fmt_groups(row['networks'])} | {row['cost']:.2f} | "
                     f"{_num(row.get('predicted_loss'))} | {_num(row.get('tag_score'), 5)} |")
    return "\n".join(lines) + "\n"


def measured_table(result: Mapping) -> str:
    tasks = result["tasks"]
    main = result["main_metric"]
    head = " | ".join(f"{_short(t)} loss" for t in tasks)
    mhead = " | ".join(f"{_short(t)} {main[t]} {ARROWS[METRIC_DIRECTIONS[main[t]]]}" for t in tasks)
    lines = [f"| grouping | chosen by | networks | predicted total loss | test total loss | {head} | {mhead} | "
             f"latency ms | latency vs all-in-one |",
             "|---|---|---|---:|---:|" + "---:|" * (2 * len(tasks)) + "---:|---:|"]
    for g in result["measured"]:
        losses = " | ".join(_num(g["test_loss"].get(t)) for t in tasks)
        metrics = " | ".join(_num(g["test_metric"].get(t), 2 if main[t] == "psnr" else 4) for t in tasks)
        lat = g.get("latency_ms")
        lines.append(f"| {g['label']} | {', '.join(g['chosen_by'])} | {fmt_groups(g['networks'])} | "
                     f"{_num(g.get('predicted_loss'))} | {_num(g['test_total_loss'])} | {losses} | {metrics} | "
                     f"{_num(lat, 2)} | {_num(g.get('latency_ratio'), 2)} |")
    return "\n".join(lines) + "\n"


def search_cost(result: Mapping) -> str:
    """One line: what each method's search runs cost (run-seconds, all processes together)."""
    secs = result.get("search_run_seconds", {})
    parts = []
    if "standley" in secs:
        parts.append(f"Standley: {len([k for k in result['standley_losses']]) * len(result['seeds'])} runs of "
                     f"{result['short_epochs']} epoch(s), {secs['standley'] / 60:.1f} run-minutes")
    if "tag" in secs:
        parts.append(f"TAG: {len(result['seeds'])} joint run(s) of {result['tag']['epochs']} epoch(s) with lookahead "
                     f"every {result['tag']['every']} micro-batches ({result['tag']['update']}), "
                     f"{secs['tag'] / 60:.1f} run-minutes")
    return ("Search cost: " + "; ".join(parts) + ".\n") if parts else ""


def cost_table(result: Mapping) -> str:
    lines = ["| network | params | MACs vs all-in-one | latency vs all-in-one (torch) | cost used |",
             "|---|---:|---:|---:|---:|"]
    for key, c in result["costs"].items():
        lines.append(f"| {key} | {c['params']:,} | {c['flops']:.2f} | {c['latency']:.2f} | {c['cost']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(result: Mapping, path, title: str) -> None:
    """Left: TAG affinity Z(i -> j) (mean over training); right: Standley pair transfer,
    loss_{t,u}(t) / loss_t(t) - 1 on the validation split (negative: u helps t)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["tasks"]
    labels = [_short(t) for t in tasks]
    panels = []
    if result.get("affinity") is not None:
        panels.append(("TAG affinity Z(row → column), mean over training", np.asarray(result["affinity"]), "RdBu"))
    if result.get("pair_transfer") is not None:
        m = np.array([[np.nan if v is None else v for v in row] for row in result["pair_transfer"]], dtype=float)
        panels.append(("Standley pairs: loss of column next to row\n"
                       "/ loss alone − 1 (blue: row helps column)", m, "RdBu_r"))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.6 * max(1, len(panels)), 4.2), squeeze=False)
    for ax, (name, m, cmap) in zip(axes[0], panels):
        off = m[~np.eye(len(m), dtype=bool) & np.isfinite(m)]  # colour scale from the off-diagonal:
        lim = float(np.max(np.abs(off))) if off.size else 1.0  # a task's effect on itself dwarfs the rest
        im = ax.imshow(m, cmap=cmap, vmin=-lim or -1, vmax=lim or 1)
        ax.set_xticks(range(len(tasks)), labels, fontsize=8)
        ax.set_yticks(range(len(tasks)), labels, fontsize=8)
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2g}", ha="center", va="center", fontsize=7)
        ax.set_title(name, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if not panels:
        axes[0][0].axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def pair_transfer(trained: Mapping, tasks: Sequence[str]) -> Optional[list]:
    """[row u][column t] = loss of t in the pair {t, u} / loss of t alone - 1 (None on the diagonal)."""
    singles = {net.tasks[0]: losses for net, losses in trained.items() if len(net.tasks) == 1 and not net.half}
    pairs = {frozenset(net.tasks): losses for net, losses in trained.items() if len(net.tasks) == 2 and not net.half}
    if len(singles) < len(tasks) or not pairs:
        return None
    out = []
    for u in tasks:
        row = []
        for t in tasks:
            pair = pairs.get(frozenset((t, u)))
            row.append(None if t == u or pair is None else pair[t] / singles[t][t] - 1.0)
        out.append(row)
    return out
