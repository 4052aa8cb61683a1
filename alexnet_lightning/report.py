"""The ablation table: errors per variant, changes against the baseline over seeds, and the paper's beside them.

Read by experiments/ablate.py, experiments/compare.py and notebooks/ablation_report.ipynb.
"""

import csv
import io
import json
import math
import statistics
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from alexnet_lightning.reliability import locked, write_atomic
from alexnet_lightning.variants import VARIANTS, get_variant

METRICS = ("top1", "top5")


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant from per-run results ({"variant", "seed", "test/top1_error", "test/top5_error"}).

    Errors are reported in percent. A variant's change is paired by seed with the baseline: its mean and its
    spread (sample standard deviation over seeds) in points. A change whose size is not larger than its spread,
    or that has fewer than two seeds to measure a spread, is marked as not resolved.
    """
    by_variant: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in results:
        by_variant[r["variant"]][int(r["seed"])] = r
    baseline = by_variant.get("baseline", {})
    rows = []
    for name in sorted(by_variant, key=lambda n: list(VARIANTS).index(n) if n in VARIANTS else len(VARIANTS)):
        runs, variant = by_variant[name], get_variant(name)
        row: dict[str, Any] = {"variant": name, "change": variant.change, "seeds": len(runs)}
        for m in METRICS:
            errors = [100 * r[f"test/{m}_error"] for r in runs.values() if f"test/{m}_error" in r]
            row[f"{m}_error"], row[f"{m}_error_spread"] = _mean_spread(errors)
            deltas = [
                100 * (runs[s][f"test/{m}_error"] - baseline[s][f"test/{m}_error"])
                for s in sorted(runs.keys() & baseline.keys())
                if f"test/{m}_error" in runs[s] and f"test/{m}_error" in baseline[s]
            ]
            delta, spread = _mean_spread(deltas)
            row[f"{m}_delta"], row[f"{m}_delta_spread"], row[f"{m}_delta_seeds"] = delta, spread, len(deltas)
            row[f"{m}_resolved"] = name != "baseline" and len(deltas) >= 2 and abs(delta) > spread
            row[f"paper_{m}_delta"] = getattr(variant, f"paper_{m}")
        row["paper_effect"] = variant.paper_effect
        rows.append(row)
    return rows


def _mean_spread(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def _fmt(value: float | None, spread: float = math.nan, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "–"
    text = f"{value:+.2f}" if sign else f"{value:.2f}"
    return text if math.isnan(spread) else f"{text} ± {spread:.2f}"


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | top-1 err % | top-5 err % | Δ top-1 (pts) | Δ top-5 (pts) "
        "| paper Δ top-1 | paper Δ top-5 | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        deltas = []
        for m in METRICS:
            text = "" if r["variant"] == "baseline" else _fmt(r[f"{m}_delta"], r[f"{m}_delta_spread"], sign=True)
            if text not in ("", "–") and not r[f"{m}_resolved"]:
                text += " (n.r.)"
            deltas.append(text)
        lines.append(
            f"| {r['variant']} | {_fmt(r['top1_error'], r['top1_error_spread'])} "
            f"| {_fmt(r['top5_error'], r['top5_error_spread'])} | {deltas[0]} | {deltas[1]} "
            f"| {_fmt(r['paper_top1_delta'], sign=True)} | {_fmt(r['paper_top5_delta'], sign=True)} "
            f"| {r['paper_effect']} |"
        )
    seeds = max((r["seeds"] for r in rows), default=0)
    lines.append("")
    lines.append(
        f"Errors: mean ± spread (standard deviation) over {seeds} seed(s), ten-crop test. Δ: change against the "
        "baseline at the same seed. (n.r.) = not resolved: the change is not larger than its spread over seeds, "
        "or there are fewer than two seeds to measure one."
    )
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """ablation.md, .json and .csv, each written atomically: a reader sees the old table or the new one."""
    paths = {kind: out_dir / f"ablation.{kind}" for kind in ("md", "csv", "json")}
    finite = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]) if rows else ["variant"])
    writer.writeheader()
    writer.writerows(rows)
    texts = {"md": to_markdown(rows), "json": json.dumps(finite, indent=2), "csv": table.getvalue()}
    for kind, text in texts.items():
        write_atomic(paths[kind], lambda f, text=text: f.write(text.encode()))
    return paths


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
    """learning_curves.png (top-1 error per epoch, each variant's seeds) and deltas.png (ours against the paper's)."""
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
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    write_atomic(paths["curves"], lambda f, figure=fig: figure.savefig(f, dpi=100, format="png"))
    plt.close(fig)

    ablations = [r for r in rows if r["variant"] != "baseline"]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(ablations) + 2), 4))
    xs = range(len(ablations))
    ours = [r["top1_delta"] for r in ablations]
    spreads = [0 if math.isnan(r["top1_delta_spread"]) else r["top1_delta_spread"] for r in ablations]
    ax.bar(xs, ours, yerr=spreads, capsize=4, color="C0", alpha=0.7, label="measured (mean ± spread over seeds)")
    paper = [(x, r["paper_top1_delta"]) for x, r in zip(xs, ablations) if r["paper_top1_delta"] is not None]
    if paper:
        ax.scatter(*zip(*paper), color="C3", marker="D", zorder=3, label="paper (ILSVRC)")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(list(xs), [r["variant"] for r in ablations], rotation=20)
    ax.set(ylabel="Δ top-1 error vs baseline (points)", title="Ablations against the paper")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(paths["deltas"], lambda f, figure=fig: figure.savefig(f, dpi=100, format="png"))
    plt.close(fig)
    return paths


def read_result(path: Path) -> dict[str, Any]:
    """A cell's result.json (runs/<variant>/seed<k>/result.json), checked; the error names the file."""
    try:
        result = json.loads(path.read_text())
        if not isinstance(result, dict):
            raise ValueError("it holds no JSON object")
        missing = [k for k in ("variant", "seed", "val/top1_error", "test/top1_error") if k not in result]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        if (result["variant"], f"seed{result['seed']}") != (path.parent.parent.name, path.parent.name):
            raise ValueError(f"it holds the result of {result['variant']} seed {result['seed']}")
        if not all(isinstance(v, (int, float)) for k, v in result.items() if k.startswith(("val/", "test/"))):
            raise ValueError("it holds an error rate that is not a number")
    except (OSError, ValueError) as err:  # a JSONDecodeError is a ValueError
        raise ValueError(f"The result {path} is damaged: {err}") from err
    return result


def load_study(study_dir: Path) -> tuple[list[dict[str, Any]], dict[str, list[dict]]]:
    """The finished runs of a study folder written by experiments/ablate.py, and their learning curves. A damaged
    result is left out with a warning that names it."""
    results, curves = [], defaultdict(list)
    for result_file in sorted(study_dir.glob("runs/*/seed*/result.json")):
        try:
            result = read_result(result_file)
        except ValueError as err:
            warnings.warn(f"{err}; left out of the table. Rerun experiments/ablate.py to test the cell again.",
                          stacklevel=2)
            continue
        results.append(result)
        curves[result["variant"]].append(read_curves(sorted(result_file.parent.glob("csv/attempt*/metrics.csv"))))
    return results, dict(curves)


def write_report(study_dir: Path) -> tuple[str, dict[str, Path]]:
    """Build the table and plots of a study folder; returns the Markdown table and the written paths.

    One process at a time, so that of cells finishing together, the report written last holds them all.
    """
    with locked(study_dir / ".report.lock"):
        results, curves = load_study(study_dir)
        rows = summarise(results)
        paths = write_tables(rows, study_dir)
        if rows:
            paths |= plot(rows, curves, study_dir)
    return to_markdown(rows), paths
