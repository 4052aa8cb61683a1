"""How many seeds does an ablation study need? The power of the study's own test (significance.py), planned.

The model. A variant's change over S seeds and n test images is the mean of d[s, i] = error_variant -
error_baseline, in points. Its variance has the two parts ``significance.py`` estimates, written here through three
numbers that do not depend on S or n (``Noise``):

    Var(change) = (seed_spread^2 + residual_var / n) / S  +  image_var / n
                  `------------- seed part ------------'    `- image part -'

- seed_spread: the standard deviation across seeds of the change on an unlimited test set (run-to-run spread);
- image_var: the per-image variance of d that all seeds share (an image's own tendency to be helped or hurt);
- residual_var: the per-image variance of d that differs from seed to seed.

From a finished study, per variant and metric: image_var = n v_image, the per-image variance within a seed V = q -
delta^2 - (S - 1) v_seed (q the disagreement, the fraction of image-seed pairs on which the arms differ),
residual_var = V - image_var, seed_spread^2 = S v_seed - residual_var / n (each floored at 0). At the study's own
n this gives back its seed part S v_seed and its image part v_image. With one seed the seed spread is not
measured: name one (``seed_spread=``, ``--seed-spread``). For a study not yet run (``--test-images``) from a
seed spread and a disagreement rate q the user names: V = q (delta^2 left out, which errs wide) and all of V taken
as shared by the seeds (image_var = q, residual_var = 0, the split least favourable to seeds) unless a pilot study
gives the split.

The power. A planned row is tested, as the study tests it, with the Fisher-Behrens reference distribution
(seed part with S - 1 degrees of freedom, image part known), at Bonferroni's level alpha / m for a family of m
variants: Holm's first step, so Holm resolves the row at least whenever this test does and the power is a lower
bound for Holm's. Under the normal approximation to the mean of d, the change is theta + se Z and the estimated
seed part v_seed W / (S - 1), W ~ chi2_{S-1} independent of Z, so

    power(theta) = E_W[ Phi((theta - x(W)) / se) + Phi((-theta - x(W)) / se) ],

x(W) the critical value for the estimated parts. The expectation over W is the quadrature on a log grid that
``significance.py`` uses for its tails; with no image part it is the noncentral t's power (tests/test_planner.py;
to 1e-6 up to 30 seeds, within 0.005 up to 1000, where the grid is coarse for the narrow chi2).
``seeds_needed`` is the smallest S >= 2 with power >= the target; ``resolvable`` the change that has the target
power at the given S. Both are checked by simulation in tests/test_planner.py, with a per-image model that is not
this formula. What the approximation leaves out: the per-image outcomes are 0/1, not normal (fine for n in the
hundreds or more), and Holm's later steps (the power is a lower bound when other variants are resolved too).

    alexnet-plan results/quick --change 5                        # per variant: resolvable, seeds for a change
    alexnet-plan --test-images 50000 --variants 7 --pilot results/quick --images-per-second 2500
"""

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, special

from alexnet_lightning.study.plots import METRICS, missing
from alexnet_lightning.study.significance import ALPHA, _chi2_grid, _quantile  # the test's own distribution
from alexnet_lightning.study.summary import load_outcomes, load_study, summarise
from alexnet_lightning.study.variants import ABLATIONS, get_variant

POWER = 0.8
CHANGE = 5.0  # points: the change the default study is meant to resolve (issue 19)
MAX_SEEDS = 1000
ILSVRC_TRAIN_IMAGES = 1_281_167
PAPER_EPOCHS = 90


@dataclass(frozen=True)
class Noise:
    """The noise of a variant's change on one metric (module docstring): seed_spread in points, the per-image
    variances in points^2 (a variance of d of 0.1, as a fraction, is 1000 points^2)."""

    seed_spread: float
    image_var: float
    residual_var: float

    def parts(self, images: int, seeds: int) -> tuple[float, float]:
        """(seed part, image part) of the change's variance in points^2 at that many images and seeds."""
        return (self.seed_spread**2 + self.residual_var / images) / seeds, self.image_var / images


def noise_from_row(row: dict[str, Any], m: str, seed_spread: float | None = None) -> Noise | None:
    """A summary row's noise on metric m (``summary.summarise``); None without an interval, or with one seed and no
    seed spread named. A named seed_spread (points) replaces the measured one."""
    S, n, q = row.get(f"{m}_paired_seeds"), row.get(f"{m}_images"), row.get(f"{m}_disagreement")
    if missing(row.get(f"{m}_low")) or not n or missing(q) or (S < 2 and seed_spread is None):
        return None
    v_seed, v_image, delta = row[f"{m}_se_seed"] ** 2, row[f"{m}_se_image"] ** 2, row[f"{m}_delta"]
    within = max(1e4 * q - delta**2 - (S - 1) * v_seed, 0.0)
    image_var = min(n * v_image, within)
    residual_var = within - image_var
    if seed_spread is None:
        seed_spread = math.sqrt(max(S * v_seed - residual_var / n, 0.0))
    return Noise(seed_spread, image_var, residual_var)


def named_noise(seed_spread: float, disagreement: float, pilot: Noise | None = None) -> Noise:
    """The noise of a study not yet run from a named seed spread (points) and disagreement rate (a fraction): all
    of the per-image variance shared by the seeds, unless a pilot's noise gives the split."""
    within = 1e4 * disagreement
    shared = 1.0 if pilot is None or pilot.image_var + pilot.residual_var == 0 else (
        pilot.image_var / (pilot.image_var + pilot.residual_var))
    return Noise(seed_spread, shared * within, (1 - shared) * within)


@lru_cache(maxsize=4096)
def _critical(noise: Noise, images: int, seeds: int, level: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The test's critical values x(W) on the nodes of the chi2_{S-1} quadrature that ``significance.py`` uses,
    their weights, and the change's standard error. x is found exactly at 24 nodes, interpolated (log-log) between
    them: it is smooth and monotone in W, from the normal's critical value to the t's. Cached: a plan asks for the
    same seeds more than once."""
    v_seed, v_image = noise.parts(images, seeds)
    v_seed = max(v_seed, (100 / (seeds * images)) ** 2)  # the test's own floor: one image at one seed
    df = seeds - 1
    w, weights = _chi2_grid(df)
    w, weights = w[weights > 1e-12], weights[weights > 1e-12]  # the rest weighs less than 1e-9 together
    exact = np.geomspace(w[0], w[-1], 24)
    x = [_quantile(level, v_seed * e / df, v_image, df) for e in exact]
    return np.exp(np.interp(np.log(w), np.log(exact), np.log(x))), weights, math.sqrt(v_seed + v_image)


def power(change: float, noise: Noise, images: int, seeds: int, level: float) -> float:
    """The chance that a true change (points) is resolved by the two-sided test at this level (0 with one seed)."""
    if seeds < 2:
        return 0.0
    x, weights, se = _critical(noise, images, seeds, level)
    return float(weights @ (special.ndtr((abs(change) - x) / se) + special.ndtr((-abs(change) - x) / se)))


def seeds_needed(change: float, noise: Noise, images: int, level: float, target: float = POWER) -> int | None:
    """The fewest seeds (>= 2) that resolve the change with the target power; None if more than MAX_SEEDS (also
    when the image part alone is too large: then it takes more test images)."""
    if power(change, noise, images, MAX_SEEDS, level) < target:
        return None
    low, high = 1, 2  # power(low) < target <= power(high), found by doubling and then halving
    while power(change, noise, images, high, level) < target:
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if power(change, noise, images, mid, level) >= target else (mid, high)
    return high


def resolvable(noise: Noise, images: int, seeds: int, level: float, target: float = POWER) -> float:
    """The change (points) resolved with the target power at this many seeds; NaN with one seed."""
    if seeds < 2:
        return math.nan
    x, weights, se = _critical(noise, images, seeds, level)
    achieved = lambda c: weights @ (special.ndtr((c - x) / se) + special.ndtr((-c - x) / se)) - target  # noqa: E731
    return float(optimize.brentq(achieved, 0.0, x.max() + 5 * se, xtol=1e-9))


def study_noise(rows: Sequence[dict[str, Any]], seed_spread: float | None = None,
                disagreement: float | None = None) -> list[dict[str, Any]]:
    """Per variant and metric with an interval in a study's summary rows: its seeds, test images and noise (None
    if one seed and no seed_spread named); a named seed spread or disagreement replaces the measured one."""
    entries = []
    for m in METRICS:
        for r in rows:
            if r["variant"] == "baseline" or missing(r.get(f"{m}_low")):
                continue
            noise = noise_from_row(r, m, seed_spread)
            if noise is not None and disagreement is not None:
                noise = named_noise(noise.seed_spread, disagreement, noise)
            entries.append({"variant": r["variant"], "metric": m, "seeds": r[f"{m}_paired_seeds"],
                            "images": r[f"{m}_images"], "noise": noise})
    return entries


def plan(entries: Sequence[dict[str, Any]], change: float = CHANGE, target: float = POWER, alpha: float = ALPHA,
         variants: int | None = None) -> list[dict[str, Any]]:
    """Per entry (``study_noise``, or named): the change resolvable with the target power at its seeds, and the
    seeds for the paper's change and for ``change``, in a Holm family of ``variants`` (default: the entries of that
    metric)."""
    plans = []
    for e in entries:
        noise, seeds, images = e["noise"], e["seeds"], e["images"]
        level = alpha / (variants or sum(f["metric"] == e["metric"] for f in entries))
        paper = getattr(get_variant(e["variant"]), f"paper_{e['metric']}")
        plans.append(e | {
            "level": level, "seed_spread": noise.seed_spread if noise else math.nan, "paper_change": paper,
            "resolvable": resolvable(noise, images, seeds, level, target) if noise else math.nan,
            "seeds_for_paper": seeds_needed(paper, noise, images, level, target) if noise and paper else None,
            "seeds_for_change": seeds_needed(change, noise, images, level, target) if noise else None,
        })
    return plans


def plan_markdown(plans: Sequence[dict[str, Any]], change: float = CHANGE, target: float = POWER,
                  alpha: float = ALPHA) -> str:
    """The planner's table and its footer; empty without rows."""
    if not plans:
        return ""
    names = {"top1": "top-1", "top5": "top-5"}
    lines = [f"| variant | metric | seeds | images | seed spread (pts) | Δ resolvable at {target:.0%} power (pts) "
             f"| paper Δ | seeds for the paper's Δ | seeds for Δ = {change:g} |", "|" + "---|" * 9]
    for p in plans:
        cells = [p["variant"], names[p["metric"]], str(p["seeds"] or "–"), f"{p['images']:,}"]
        cells += ["–" if missing(p[k]) else f"{p[k]:.2f}" for k in ("seed_spread", "resolvable")]
        cells += ["–" if p["paper_change"] is None else f"{p['paper_change']:+.2f}"]
        cells += ["–" if p[k] is None else str(p[k]) for k in ("seeds_for_paper", "seeds_for_change")]
        lines.append("| " + " | ".join(cells) + " |")
    m = round(alpha / plans[0]["level"])
    lines += ["", f"Planner (study/planner.py): power of the study's own test at level {alpha:g}/{m} (Holm's first "
              "step, a lower bound for Holm's power), at the test images given; the seed spread is the run-to-run "
              "standard deviation of the change net of test-image noise. –: not measured (one seed), no paper "
              f"figure, or more than {MAX_SEEDS} seeds or more test images needed."]
    return "\n".join(lines) + "\n"


def gpu_hours(cells: int, epochs: int, train_images: int, images_per_second: float) -> float:
    """Training cost: cells x epochs x images / throughput, in hours of one GPU."""
    return cells * epochs * train_images / images_per_second / 3600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="alexnet-plan", description=__doc__.split("\n\n")[0],
                                     epilog="The planner's model and approximation: docs/statistics.md.")
    parser.add_argument("study", nargs="?", type=Path, help="a finished study folder (results/<study>)")
    parser.add_argument("--change", type=float, default=CHANGE, help="the change to plan for, points (default 5)")
    parser.add_argument("--power", type=float, default=POWER, help="the power to plan for (default 0.8)")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="the family's level (default 0.05)")
    new = parser.add_argument_group("a study not yet run")
    new.add_argument("--test-images", type=int, help="its test images, e.g. 50000 (ILSVRC-2012 val)")
    new.add_argument("--variants", type=int, help="variants in its Holm family (default: the pilot's, else 7)")
    new.add_argument("--pilot", type=Path, help="a finished study whose noise to assume (default for the next two)")
    new.add_argument("--seed-spread", type=float,
                     help="run-to-run standard deviation of a change, points (also for a finished study with one seed)")
    new.add_argument("--disagreement", type=float, help="fraction of test images on which the arms differ")
    new.add_argument("--seeds", type=int, default=0, help="its seeds: the change resolvable, and the cost, at them")
    new.add_argument("--epochs", type=int, default=PAPER_EPOCHS, help="epochs per cell (default 90)")
    new.add_argument("--train-images", type=int, default=ILSVRC_TRAIN_IMAGES, help="per epoch (default ILSVRC's)")
    new.add_argument("--images-per-second", type=float,
                     help="training throughput of one GPU (experiments/benchmark.py measures it)")
    args = parser.parse_args(argv)
    checks = [(not 0 < args.power < 1, "--power must be between 0 and 1"),
              (not 0 < args.alpha < 1, "--alpha must be between 0 and 1"),
              (args.change <= 0, "--change must be positive (points)"),
              (args.disagreement is not None and not 0 < args.disagreement <= 1,
               "--disagreement must be a fraction of the test images, in (0, 1]"),
              (args.seed_spread is not None and args.seed_spread < 0, "--seed-spread must be at least 0 (points)"),
              (args.test_images is None and args.study is None, "give a study folder, or --test-images"),
              (args.test_images is not None and args.test_images < 1, "--test-images must be at least 1"),
              (args.variants is not None and args.variants < 1, "--variants must be at least 1"),
              (args.seeds < 0 or args.epochs < 1 or args.train_images < 1, "--seeds, --epochs and --train-images "
               "must be counts"),
              (args.images_per_second is not None and args.images_per_second <= 0,
               "--images-per-second must be positive"),
              (args.test_images is not None and args.pilot is None and None in (args.seed_spread, args.disagreement),
               "--test-images without --pilot needs --seed-spread and --disagreement")]
    for failed, message in checks:
        if failed:
            parser.error(message)
    for folder in (args.study, args.pilot):
        if folder is not None and not (folder / "runs").is_dir():
            parser.error(f"{folder} is not a study folder (it has no runs/)")
    return args


def study_rows(folder: Path) -> list[dict[str, Any]]:
    results, _ = load_study(folder)
    return summarise(results, load_outcomes(folder, results))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kwargs = {"change": args.change, "target": args.power, "alpha": args.alpha}
    if args.test_images is None:
        entries = study_noise(study_rows(args.study), args.seed_spread, args.disagreement)
        plans = plan(entries, variants=args.variants, **kwargs)
        print(plan_markdown(plans, **kwargs) or f"{args.study}: no variant with per-image outcomes to plan from")
        return 0
    if args.pilot is None:  # every variant of the registry with the named noise, top-1
        noise = named_noise(args.seed_spread, args.disagreement)
        entries = [{"variant": v, "metric": "top1", "noise": noise} for v in ABLATIONS]
    else:
        entries = study_noise(study_rows(args.pilot), args.seed_spread, args.disagreement)
    variants = args.variants or len({e["variant"] for e in entries}) or len(ABLATIONS)
    plans = plan([e | {"seeds": args.seeds, "images": args.test_images} for e in entries], variants=variants,
                 **kwargs)
    print(plan_markdown(plans, **kwargs))
    needed = [p["seeds_for_change"] for p in plans if p["seeds_for_change"] is not None]
    for seeds, what in ((max(needed, default=None), f"Δ = {args.change:g} at {args.power:.0%} power in every row"),
                        (args.seeds, "--seeds")):
        if seeds:
            print(cost_line(seeds, variants, args, what))
    return 0


def cost_line(seeds: int, variants: int, args: argparse.Namespace, what: str) -> str:
    cells = (variants + 1) * seeds
    line = (f"{what}: {seeds} seeds, {cells} cells ({variants} variants and the baseline) of {args.epochs} epochs x "
            f"{args.train_images:,} images")
    if not args.images_per_second:
        return line + ": give --images-per-second for the GPU-hours (experiments/benchmark.py measures it)."
    hours = gpu_hours(cells, args.epochs, args.train_images, args.images_per_second)
    return line + f" at {args.images_per_second:g} img/s: {hours:,.0f} GPU-hours of training."


if __name__ == "__main__":
    raise SystemExit(main())
