"""One row per variant of an ablation study: its errors over seeds, its change against the baseline with the 95%
interval, p-values and verdict (``significance.py``, from the cells' per-image outcomes), the paper's change beside
it, and the diagnostics that say whether the mechanism under study was active (``diagnostics.py``); and the reading
of a study folder's results and outcome files, checked.

The rows feed the tables (``tables.py``), the planner (``planner.py``) and the files ``report.py`` writes.
"""

import json
import math
import statistics
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_lightning.model import outcomes
from alexnet_lightning.study.plots import METRICS, read_curves
from alexnet_lightning.study.significance import Change, compare_variants
from alexnet_lightning.study.variants import VARIANTS, get_variant

LRN_LAYERS = ("conv1", "conv2")
# The "<metric>_verdict" field: what a row can say. A p-value where there is no verdict would read as one.
VERDICTS = {True: "resolved", False: "not resolved"}
NO_VERDICT = "none: one seed paired with the baseline"
NO_OUTCOMES_VERDICT = "none: no per-image outcomes"
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
    interval, p-values, verdict and resolvable size come from the outcomes, per metric (``significance.py``); with
    one seed paired there is an interval for the test images but no p-value and no verdict ("<metric>_verdict"
    says which). A variant without outcomes gets the mean over common seeds of its error differences, no interval.
    Diagnostics are averaged over seeds; ``flags`` says what makes a row hard to read.
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
            f"{m}_verdict": VERDICTS[change.resolved] if change.verdict else NO_VERDICT,
            f"{m}_disagreement": change.disagreement,
        }
    key = f"test/{m}_error"
    deltas = [100 * (runs[s][key] - baseline[s][key]) for s in sorted(runs.keys() & baseline.keys())
              if key in runs[s] and key in baseline[s]]
    nan = math.nan
    return {
        f"{m}_delta": statistics.fmean(deltas) if deltas else nan, f"{m}_low": nan, f"{m}_high": nan, f"{m}_p": nan,
        f"{m}_p_holm": nan, f"{m}_resolved": False, f"{m}_resolvable": nan, f"{m}_se_seed": nan,
        f"{m}_se_image": nan, f"{m}_paired_seeds": len(deltas), f"{m}_images": None,
        f"{m}_seed_spread_measured": None, f"{m}_verdict": NO_OUTCOMES_VERDICT, f"{m}_disagreement": nan,
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
        flags.append("one seed†" if len(runs) == 1 else "one seed† in common with the baseline")
    if row["variant"] != "baseline" and all(math.isnan(row.get(f"{m}_low", math.nan)) for m in METRICS) and any(
        not math.isnan(row.get(f"{m}_delta", math.nan)) for m in METRICS
    ):
        flags.append("no interval")
    return flags


def _mean_spread(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan

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
