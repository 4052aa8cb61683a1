"""The ablation table: each variant's change against the baseline with its 95% interval, p-value and verdict
(``significance.py``, from the cells' per-image outcomes), the paper's change beside it, and the diagnostics that say
whether the mechanism under study was active (``diagnostics.py``).

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

import numpy as np

from alexnet_lightning.files import locked, write_atomic
from alexnet_lightning.model import outcomes
from alexnet_lightning.study.plots import METRICS, missing, plot, read_curves
from alexnet_lightning.study.significance import METHOD, Change, compare_variants
from alexnet_lightning.study.variants import VARIANTS, get_variant
from alexnet_lightning.training.diagnostics import INERT_WITHIN

LRN_LAYERS = ("conv1", "conv2")
NO_OUTCOMES = (
    "no interval: the cells' per-image outcome files (runs/<variant>/seed<k>/outcomes.npz) are missing; the change "
    "is the mean over seeds of the error differences"
)


def summarise(
    results: list[dict[str, Any]], outcomes: dict[str, dict[int, dict[str, Any]]] | None = None
) -> list[dict[str, Any]]:
    """One row per variant from per-cell results (result.json: "variant", "seed", "test/top1_error", ..., and the
    "diag/..." diagnostics) and, where there are, their per-image outcomes ({variant: {seed: outcome file}}).

    Errors are in percent, mean and standard deviation over seeds. A variant's change against the baseline and its
    interval, p-values, verdict and resolvable size come from the outcomes, per metric (``inference``); a variant
    without outcomes gets the mean over common seeds of its error differences and no interval. Diagnostics are
    averaged over seeds; ``flags`` says what makes a row hard to read.
    """
    by_variant: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in results:
        by_variant[r["variant"]][int(r["seed"])] = r
    baseline = by_variant.get("baseline", {})
    changes = {m: _changes(outcomes or {}, m) for m in METRICS}
    rows = []
    for name in sorted(by_variant, key=lambda n: list(VARIANTS).index(n) if n in VARIANTS else len(VARIANTS)):
        runs, variant = by_variant[name], get_variant(name)
        row: dict[str, Any] = {"variant": name, "change": variant.change, "seeds": len(runs)}
        for m in METRICS:
            errors = [100 * r[f"test/{m}_error"] for r in runs.values() if f"test/{m}_error" in r]
            row[f"{m}_error"], row[f"{m}_error_spread"] = _mean_spread(errors)
            if name != "baseline":
                row |= _change_fields(m, changes[m].get(name), runs, baseline)
            row[f"paper_{m}_delta"] = getattr(variant, f"paper_{m}")
        row["paper_effect"] = variant.paper_effect
        row |= _diagnostics(runs)
        row["flags"] = "; ".join(_flags(row, runs, baseline))
        rows.append(row)
    return rows


def _changes(outcomes: dict[str, dict[int, dict[str, Any]]], m: str) -> dict[str, Change]:
    errors = {v: {s: ~o[f"{m}_correct"] for s, o in seeds.items() if f"{m}_correct" in o}
              for v, seeds in outcomes.items()}
    errors = {v: seeds for v, seeds in errors.items() if seeds}
    baseline = errors.pop("baseline", {})
    return compare_variants(baseline, errors) if baseline and errors else {}


def _change_fields(m: str, change: Change | None, runs: dict[int, dict], baseline: dict[int, dict]) -> dict[str, Any]:
    if change is not None:
        return {
            f"{m}_delta": change.delta, f"{m}_low": change.low, f"{m}_high": change.high, f"{m}_p": change.p,
            f"{m}_p_holm": change.p_holm, f"{m}_resolved": change.resolved, f"{m}_resolvable": change.resolvable,
            f"{m}_se_seed": change.se_seed, f"{m}_se_image": change.se_image, f"{m}_paired_seeds": len(change.seeds),
            f"{m}_images": change.images, f"{m}_seed_spread_measured": change.seed_spread_measured,
        }
    key = f"test/{m}_error"
    deltas = [100 * (runs[s][key] - baseline[s][key]) for s in sorted(runs.keys() & baseline.keys())
              if key in runs[s] and key in baseline[s]]
    nan = math.nan
    return {
        f"{m}_delta": statistics.fmean(deltas) if deltas else nan, f"{m}_low": nan, f"{m}_high": nan, f"{m}_p": nan,
        f"{m}_p_holm": nan, f"{m}_resolved": False, f"{m}_resolvable": nan, f"{m}_se_seed": nan,
        f"{m}_se_image": nan, f"{m}_paired_seeds": len(deltas), f"{m}_images": None,
        f"{m}_seed_spread_measured": None,
    }


def _diagnostics(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds of the cells' diagnostics (diagnostics.py); epochs to the target per seed."""
    cells = list(runs.values())

    def mean(key: str) -> float:
        values = [r[key] for r in cells if r.get(key) is not None]
        return statistics.fmean(values) if values else math.nan

    row: dict[str, Any] = {}
    for layer in LRN_LAYERS:
        for phase in ("start", "end"):
            row[f"{layer}_lrn_factor_{phase}"] = mean(f"diag/{layer}_lrn_factor_{phase}")
    row["lrn_k_beta"] = mean("diag/lrn_k_beta")
    inert = [r["diag/lrn_inert"] for r in cells if r.get("diag/lrn_inert") is not None]
    row["lrn_inert_seeds"] = sum(inert) if inert else None
    row["val_minus_train_top1"] = 100 * mean("diag/val_minus_train_top1")
    row["pca_noise_ratio"] = mean("diag/pca_noise_ratio")
    row["train_error_target"] = mean("diag/train_error_target")
    row["epochs_to_train_error_target"] = [r.get("diag/epochs_to_train_error_target") for r in cells
                                           if "diag/train_error_target" in r]
    return row


def _flags(row: dict[str, Any], runs: dict[int, dict[str, Any]], baseline: dict[int, dict[str, Any]]) -> list[str]:
    flags = []
    inert = row["lrn_inert_seeds"]
    if inert is not None and inert > 0:
        flags.append("LRN inert" if inert == len(runs) else f"LRN inert in {inert} of {len(runs)} seeds")
    elif inert is None and row["variant"] != "baseline":  # a variant without LRN: was the baseline's active?
        paired = [baseline[s].get("diag/lrn_inert") for s in runs.keys() & baseline.keys()]
        paired = [p for p in paired if p is not None]
        if paired and any(paired):
            some = "" if all(paired) else f" ({sum(paired)} of {len(paired)} seeds)"
            flags.append(f"LRN inert in the baseline{some}")
    if any(row.get(f"{m}_seed_spread_measured") is False for m in METRICS):
        flags.append("one seed†")
    if row["variant"] != "baseline" and all(math.isnan(row.get(f"{m}_low", math.nan)) for m in METRICS) and any(
        not math.isnan(row.get(f"{m}_delta", math.nan)) for m in METRICS
    ):
        flags.append("no interval")
    return flags


def _mean_spread(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def _fmt(value: float | None, spread: float = math.nan, sign: bool = False) -> str:
    if missing(value):
        return "–"
    text = f"{value:+.2f}" if sign else f"{value:.2f}"
    return text if math.isnan(spread) else f"{text} ± {spread:.2f}"


def _fmt_change(r: dict[str, Any], m: str) -> str:
    if r["variant"] == "baseline":
        return ""
    delta, low = r.get(f"{m}_delta", math.nan), r.get(f"{m}_low", math.nan)
    if missing(delta):
        return "–"
    if missing(low):
        return f"{delta:+.2f} (no interval)"
    text = f"{delta:+.2f} [{low:+.2f}, {r[f'{m}_high']:+.2f}]"
    text = f"**{text}**" if r[f"{m}_resolved"] else f"{text} n.r.; resolvable ±{r[f'{m}_resolvable']:.2f}"
    return text + ("†" if r[f"{m}_seed_spread_measured"] is False else "")


def _fmt_p(r: dict[str, Any], m: str) -> str:
    p = r.get(f"{m}_p", math.nan)
    return "" if r["variant"] == "baseline" else "–" if missing(p) else f"{p:.3g} / {r[f'{m}_p_holm']:.3g}"


def _fmt_lrn(r: dict[str, Any], layer: str) -> str:
    start, end, k_beta = r[f"{layer}_lrn_factor_start"], r[f"{layer}_lrn_factor_end"], r["lrn_k_beta"]
    if missing(k_beta) or (missing(start) and missing(end)):
        return "–"
    return " → ".join("–" if missing(f) else f"{100 * (f / k_beta - 1):+.2f}%" for f in (start, end))


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The table of changes with their verdicts, then the table of diagnostics, each with its footer."""
    metrics = [m for m in METRICS if any(not missing(r.get(f"{m}_error")) for r in rows)]
    names = {"top1": "top-1", "top5": "top-5"}
    header = "| variant | seeds | " + " | ".join(
        f"{names[m]} err % | Δ {names[m]} (pts) [95% interval] | p / Holm p" for m in metrics
    ) + " | " + " | ".join(f"paper Δ {names[m]}" for m in metrics) + " | paper | flags |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        cells = [r["variant"], str(r["seeds"])]
        for m in metrics:
            cells += [_fmt(r[f"{m}_error"], r[f"{m}_error_spread"]), _fmt_change(r, m), _fmt_p(r, m)]
        cells += [_fmt(r[f"paper_{m}_delta"], sign=True) for m in metrics]
        cells += [r["paper_effect"], r["flags"]]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = max((r["seeds"] for r in rows), default=0)
    images = max((r.get(f"{m}_images") or 0 for r in rows for m in metrics), default=0)
    lines += [
        "",
        f"Errors: mean ± standard deviation over {seeds} seed(s), ten-crop test"
        + (f" on {images} images." if images else ".")
        + f" {METHOD}. **Bold**: resolved; n.r.: not resolved. †: one seed, so the interval covers test-image noise "
        "only: seed-to-seed spread was not measured.",
    ]
    if any("no interval" in r["flags"] for r in rows):
        lines += ["", f"No interval: {NO_OUTCOMES}."]
    return "\n".join(lines) + "\n\n" + diagnostics_markdown(rows)


def diagnostics_markdown(rows: list[dict[str, Any]]) -> str:
    """The diagnostics table: was the mechanism under study active, how much did each row overfit and learn."""
    targets = {r["train_error_target"] for r in rows if not missing(r["train_error_target"])}
    target = f"{100 * targets.pop():.0f}%" if len(targets) == 1 else "the target"
    lines = [
        f"| variant | LRN conv1 (start → end) | LRN conv2 (start → end) | val − train top-1 (pts) "
        f"| PCA noise / pixel std | epochs to {target} train error | flags |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        epochs = ", ".join("not reached" if e is None else str(e) for e in r["epochs_to_train_error_target"]) or "–"
        lines.append(
            f"| {r['variant']} | {_fmt_lrn(r, 'conv1')} | {_fmt_lrn(r, 'conv2')} "
            f"| {_fmt(r['val_minus_train_top1'], sign=True)} | {_fmt(r['pca_noise_ratio'])} | {epochs} "
            f"| {r['flags']} |"
        )
    lines += [
        "",
        "LRN: the mean factor d^β (d = k + α/n Σa²) by which each LRN layer divided its input, as its excess over "
        "k^β, on a training batch at the start of training and at the end (mean over seeds). LRN inert: every "
        f"layer's factor within {100 * INERT_WITHIN:.0f}% of k^β at the start and at the end, so LRN was close to "
        "a constant factor and removing it says little about LRN. val − train: the last epoch's validation minus "
        "(running, augmented) training top-1 error; positive is overfitting. PCA noise / pixel std: the lighting "
        "noise's standard deviation over the pixels'. Epochs to the training error: per seed.",
    ]
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """ablation.md, .json and .csv, each written atomically: a reader sees the old table or the new one."""
    paths = {kind: out_dir / f"ablation.{kind}" for kind in ("md", "csv", "json")}
    finite = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]
    table = io.StringIO(newline="")
    fields = list(dict.fromkeys(key for r in rows for key in r)) or ["variant"]  # the baseline has no change
    writer = csv.DictWriter(table, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    texts = {"md": to_markdown(rows), "json": json.dumps(finite, indent=2), "csv": table.getvalue()}
    for kind, text in texts.items():
        write_atomic(paths[kind], lambda f, text=text: f.write(text.encode()))
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


def load_outcomes(study_dir: Path, results: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """{variant: {seed: outcome file}} of the finished cells that have one, checked: each must agree with its cell's
    result.json (its top-1 error, within the padding a data-parallel test adds) and have been tested on the images,
    in the order, of the first (the same test-set hash and labels). A file that is damaged or fails a check is left
    out, with a warning that names it: its cell then has no interval."""
    found: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    reference: tuple[Path, dict[str, Any]] | None = None
    for r in results:
        path = study_dir / "runs" / r["variant"] / f"seed{r['seed']}" / outcomes.FILE
        if not path.is_file():
            continue
        try:
            o = outcomes.read(path)
            error = 1 - float(o["top1_correct"].mean()) if len(o["top1_correct"]) else math.nan
            tolerance = 1e-6 + (o["replicas"] - 1) / max(1, len(o["top1_correct"]))
            if "test/top1_error" in r and not abs(error - r["test/top1_error"]) <= tolerance:
                raise ValueError(f"{path} gives a top-1 error of {error:.6f}, its cell's result.json "
                                 f"{r['test/top1_error']:.6f}: the file does not belong to that result")
            if reference is not None and (o["test_set"] != reference[1]["test_set"]
                                          or not np.array_equal(o["label"], reference[1]["label"])):
                raise ValueError(f"{path} and {reference[0]} were tested on different images or in a different order "
                                 f"(test-set hashes {o['test_set'] or '?'} and {reference[1]['test_set'] or '?'})")
        except ValueError as err:
            warnings.warn(f"{err}; left out of the intervals.", stacklevel=2)
            continue
        reference = reference or (path, o)
        found[r["variant"]][int(r["seed"])] = o
    return dict(found)


def write_report(study_dir: Path) -> tuple[str, dict[str, Path]]:
    """Build the tables and plots of a study folder; returns the Markdown tables and the written paths.

    One process at a time, so that of cells finishing together, the report written last holds them all.
    """
    with locked(study_dir / ".report.lock"):
        results, curves = load_study(study_dir)
        rows = summarise(results, load_outcomes(study_dir, results))
        paths = write_tables(rows, study_dir)
        if rows:
            paths |= plot(rows, curves, study_dir)
    return to_markdown(rows), paths
