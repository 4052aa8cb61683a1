"""The study's figures: learning curves and the forest plot of the changes."""

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_lightning.files import write_atomic
from alexnet_lightning.study.variants import VARIANTS

METRICS = ("top1", "top5")


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))



def read_curves(metrics_files: list[Path]) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch curves from Lightning CSVLogger files, one per attempt of a resumed run, in order (a later
    attempt's value of an epoch replaces an earlier one's): {"val/top1_error": [(epoch, value), ...], ...}."""
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    for metrics_csv in metrics_files:
        with metrics_csv.open() as f:
            for record in csv.DictReader(f):
                for key in ("train/top1_error", "val/top1_error", "train/loss_epoch", "val/loss"):
                    if record.get(key) and record.get("epoch"):
                        curves[key][int(float(record["epoch"]))] = float(record[key])
    return {key: sorted(points.items()) for key, points in curves.items()}


def plot(rows: list[dict[str, Any]], curves: dict[str, list[dict]], out_dir: Path) -> dict[str, Path]:
    """learning_curves.png (top-1 error per epoch, each variant's seeds) and deltas.png (a forest plot: each
    variant's change with its 95% interval, the paper's change beside it, the flags in the labels; a row with one
    seed paired, which has no verdict, as a hollow square on a dotted test-image interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {"curves": out_dir / "learning_curves.png", "deltas": out_dir / "deltas.png"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colours = {name: f"C{i}" for i, name in enumerate(VARIANTS)}
    for ax, key in zip(axes, ("train/top1_error", "val/top1_error")):
        for name, runs in curves.items():
            for i, run in enumerate(runs):
                points = run.get(key, [])
                if points:
                    epochs, values = zip(*points)
                    ax.plot(epochs, [100 * v for v in values], color=colours.get(name, "k"),
                            alpha=0.8, label=name if i == 0 else None)
        ax.set(title=key, xlabel="epoch", ylabel="top-1 error (%)")
        ax.grid(alpha=0.3)
    if curves:
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    write_atomic(paths["curves"], lambda f, figure=fig: figure.savefig(f, dpi=100, format="png"))
    plt.close(fig)

    ablations = [r for r in rows if r["variant"] != "baseline"]
    metrics = [m for m in METRICS if any(not missing(r.get(f"{m}_delta")) for r in ablations)] or ["top1"]
    height = 0.6 * len(ablations) + 2.2  # 0.4 inch of it for the legend, below the panels: never over a row
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics) + 1.5, height), sharey=True, squeeze=False)
    ys = np.arange(len(ablations))[::-1]
    for ax, m in zip(axes[0], metrics):
        for y, r in zip(ys, ablations):
            delta, low, high = (r.get(f"{m}_{k}", math.nan) for k in ("delta", "low", "high"))
            if missing(delta):
                continue
            one_seed = r.get(f"{m}_seed_spread_measured") is False  # no verdict: a dotted test-image interval
            colour = "C0" if r[f"{m}_resolved"] else "0.45"
            if not missing(low):
                ax.plot([low, high], [y, y], color=colour, lw=2, ls=":" if one_seed else "-", solid_capstyle="butt")
            ax.plot(delta, y, "s" if one_seed else "o", color=colour, mfc=colour if r[f"{m}_resolved"] else "white",
                    ms=7, zorder=3)
            if not missing(r[f"paper_{m}_delta"]):
                ax.plot(r[f"paper_{m}_delta"], y, "D", color="C3", ms=6, zorder=4)
        ax.axvline(0, color="k", lw=0.8)
        ax.set(xlabel=f"Δ {m.replace('top', 'top-')} error vs baseline (points)", ylim=(-0.7, len(ablations) - 0.3))
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(ys, [r["variant"] + (f"\n{r['flags']}" if r["flags"] else "") for r in ablations],
                          fontsize=8)
    handles = [plt.Line2D([], [], color="C0", marker="o", lw=2, label="resolved (95% interval, Holm)"),
               plt.Line2D([], [], color="0.45", marker="o", mfc="white", lw=2, label="not resolved"),
               plt.Line2D([], [], color="0.45", marker="s", mfc="white", lw=2, ls=":",
                          label="one seed: no verdict (test-image interval)"),
               plt.Line2D([], [], color="C3", marker="D", ls="", label="paper (ILSVRC)")]
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle("Ablations against the paper: change with its 95% interval", fontsize=10)
    fig.tight_layout(rect=(0, 0.4 / height, 1, 1))
    write_atomic(paths["deltas"], lambda f, figure=fig: figure.savefig(f, dpi=100, format="png"))
    plt.close(fig)
    return paths
