"""Run logs: CSV files a person can open anywhere, and a PNG of the curves."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List, Mapping, Sequence


class CsvLog:
    """Appends rows to a CSV file; new columns are added by rewriting the header once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: List[Dict[str, float]] = read_csv(self.path) if self.path.exists() else []
        self.columns: List[str] = list(self.rows[0]) if self.rows else []

    def append(self, row: Mapping[str, float]) -> None:
        self.rows.append(dict(row))
        new = [k for k in row if k not in self.columns]
        if new or not self.path.exists():
            self.columns += new
            self._rewrite()
        else:
            with self.path.open("a", newline="") as handle:
                csv.DictWriter(handle, self.columns).writerow(row)

    def truncate(self, keep) -> None:
        """Drops rows for which keep(row) is false (used when resuming from an older checkpoint)."""
        self.rows = [r for r in self.rows if keep(r)]
        self._rewrite()

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)


def read_csv(path: Path) -> List[Dict[str, float]]:
    with Path(path).open(newline="") as handle:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def plot_curves(epochs: Sequence[Mapping[str, float]], steps: Sequence[Mapping[str, float]], path: Path,
                title: str = "") -> None:
    """Training losses, validation metrics and task weights in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_keys = sorted({k for r in steps for k in r if k.startswith("loss/")})
    weight_keys = sorted({k for r in steps for k in r if k.startswith("weight/")})
    val_keys = sorted({k for r in epochs for k in r if k.startswith("val/")})
    panels = [("training loss (per step)", steps, "step", loss_keys, True),
              ("task weight (per step)", steps, "step", weight_keys, False)]
    panels += [(key[4:], epochs, "epoch", [key], False) for key in val_keys]
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, table, x_key, keys, log_scale) in zip(axes.flat, panels):
        for key in keys:
            xs = [r[x_key] for r in table if not math.isnan(r.get(key, math.nan))]
            ys = [r[key] for r in table if not math.isnan(r.get(key, math.nan))]
            ax.plot(xs, ys, label=key.split("/", 1)[-1], marker="o" if x_key == "epoch" else None, ms=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x_key, fontsize=8)
        ax.tick_params(labelsize=7)
        if log_scale:
            ax.set_yscale("log")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_weights(steps: Sequence[Mapping[str, float]], path: Path, title: str = "") -> None:
    """The balancer's task weights over training (`weight/<task>` of every step), one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    draw_weights(ax, steps)
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel("weight", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if any(k.startswith("weight/") for r in steps[:1] for k in r):
        ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw_weights(ax, steps: Sequence[Mapping[str, float]]) -> None:
    """Each task's weight against the epoch; a symmetric-log axis when they span a wide range
    (effective weights of gradient methods can spike when one task's gradient is tiny)."""
    keys = sorted({k for r in steps for k in r if k.startswith("weight/")})
    values = []
    for key in keys:
        xs = [r["epoch"] for r in steps if not math.isnan(r.get(key, math.nan))]
        ys = [r[key] for r in steps if not math.isnan(r.get(key, math.nan))]
        values += ys
        ax.plot(xs, ys, label=key.split("/", 1)[-1], lw=1)
    if values and max(abs(v) for v in values) > 20:
        ax.set_yscale("symlog", linthresh=1.0)
