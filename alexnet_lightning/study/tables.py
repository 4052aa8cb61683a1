"""The ablation study's tables in Markdown: the changes with their verdicts, the seeds planned from them
(``planner.py``), and the diagnostics, each with its footer."""

import math
from typing import Any

from alexnet_lightning.study.planner import plan, plan_markdown, study_noise
from alexnet_lightning.study.plots import METRICS, missing
from alexnet_lightning.study.significance import METHOD
from alexnet_lightning.study.summary import NO_OUTCOMES
from alexnet_lightning.training.diagnostics import INERT_WITHIN


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
    if r[f"{m}_seed_spread_measured"] is False:  # never bold: the interval leaves out seed-to-seed spread
        return f"{text} no verdict†"
    return f"**{text}**" if r[f"{m}_resolved"] else f"{text} n.r.; resolvable ±{r[f'{m}_resolvable']:.2f}"


def _fmt_p(r: dict[str, Any], m: str) -> str:
    p = r.get(f"{m}_p", math.nan)
    return "" if r["variant"] == "baseline" else "–" if missing(p) else f"{p:.3g} / {r[f'{m}_p_holm']:.3g}"


def _fmt_lrn(r: dict[str, Any], layer: str) -> str:
    start, end, k_beta = r[f"{layer}_lrn_factor_start"], r[f"{layer}_lrn_factor_end"], r["lrn_k_beta"]
    if missing(k_beta) or (missing(start) and missing(end)):
        return "–"
    return " → ".join("–" if missing(f) else f"{100 * (f / k_beta - 1):+.2f}%" for f in (start, end))


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The table of changes with their verdicts, the planner's table (the change resolvable at 80% power, the seeds
    for the paper's change and for a 5-point one), then the table of diagnostics, each with its footer."""
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
        + f" {METHOD}. **Bold**: resolved; n.r.: not resolved. †: one seed paired with the baseline, so the "
        "interval covers test-image noise only, seed-to-seed spread was not measured, and the row gets no p-value, "
        "no verdict and no place in Holm's family.",
    ]
    if any("no interval" in r["flags"] for r in rows):
        lines += ["", f"No interval: {NO_OUTCOMES}."]
    plans = plan_markdown(plan(study_noise(rows)))
    return "\n".join(lines) + "\n\n" + (plans + "\n" if plans else "") + diagnostics_markdown(rows)


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
