"""Is a variant's change in test error real? Paired inference over training seeds and test images.

Each cell of the ablation study (variant, seed) is tested on the same ordered test set, so for a variant and the
baseline at a common seed s the per-image difference d[s, i] = error_variant - error_baseline is -1, 0 or 1. The
change is the mean of d over the S common seeds and the n images, in percentage points. What it estimates: the
expected difference of error rates over the population of training runs (seeds) and of images that the test set
was drawn from. A new study would train new seeds, and could test on new images of the same kind; even with the
fixed ILSVRC-2012 val set, the claim "this change makes AlexNet worse" is about images in general.

The variance of the estimate has two parts, each estimated from the data:

- seed part, v_seed = var_s(m_s) / S, m_s the change measured at seed s: the run-to-run spread of training plus
  each run's own luck on the test images. It is what a paired t-test over seeds uses (and all there is if the
  test set is taken as the whole population: then read se_seed alone). It has S - 1 degrees of freedom.
- image part, v_image = max(0, MS_image - MS_residual) / (S n), from the two-way (seed x image) analysis of
  variance of d: the test-set noise that all seeds share because they see the same images (an image's own
  tendency to be helped or hurt by the change). Seed-to-seed spread cannot show it. It has about n - 1 degrees
  of freedom and is taken as known (fine for n in the hundreds or more).

For the crossed design (every seed sees every image) these are unbiased for the variance of the mean (the image
part, truncated at zero, errs wide). The reference distribution is the generalised (Fisher-Behrens fiducial) one
for a sum of a (S-1)-df variance and a known one: delta - theta ~ Z sqrt(v_seed (S-1) / chi2_{S-1} + v_image). It
is the paired t with S - 1 df when the image part is nil and the normal when the seed part is nil; in between it
covers at least the nominal level, conservatively (at S = 2 with equal parts about 98%, by simulation). Why not
simpler: a bootstrap over seeds has at most 3 distinct means with 2 seeds and is badly anti-conservative; a t with
Satterthwaite's estimated degrees of freedom covered only 87-92% at S = 2 in our simulations (its degrees of
freedom jump up whenever the 1-df seed part comes out small by chance). p-values and intervals come from the same
distribution, so the 1 - alpha interval excludes 0 iff p < alpha.

With one seed the seed-to-seed spread is not measured: the interval covers the test-set noise only
(``Change.seed_spread_measured`` is False), and a test on it would pass off one training run's luck as a real
change, the more often the more test images there are. Such a change carries no verdict (``Change.verdict`` is
False): its p, Holm-adjusted p and resolvable size are NaN, it is never resolved, and it is left out of the Holm
family. The variance is never taken below the estimate's resolution, one image at one seed ((1 / (S n))^2), so
arms that agree on every image give p = 1 and arms that differ on every image a large but finite statistic, never
a division by zero.

The variants of a study that carry a verdict (two or more seeds paired with the baseline) are a family per metric
(top-1 and top-5 separately): a variant is resolved when its Holm-adjusted p-value is below alpha (Holm 1979;
valid under any dependence, such as that through the shared baseline). The printed interval is each variant's own
1 - alpha interval, not adjusted. ``resolvable`` is the smallest change the study could have resolved: any
estimate beyond it is resolved whatever the other variants show (Holm's strictest level, alpha / m); a true change
of that size is resolved about half the time (study/planner.py gives the change resolved with a chosen power).
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

ALPHA = 0.05
METHOD = (
    "Δ: change against the baseline, paired by seed and test image, mean over seeds; [95% interval] and p-value "
    "count seed-to-seed spread (t, seeds − 1 df) and the test images all seeds share (Fisher–Behrens), the interval "
    "not adjusted for the other variants; resolved: Holm-adjusted p < 0.05 over the variants with two or more seeds "
    "paired with the baseline, top-1 and top-5 separately; resolvable: smallest change this study could have resolved"
)

# log(w) grid for the chi2 part of the reference distribution: the trapezoid rule on this smooth, fast-decaying
# integrand over the whole line agrees with the t distribution to about 1e-11 (tests/test_significance.py).
_LOG_W = np.arange(-60.0, 8.0, 0.2)


@dataclass(frozen=True)
class Change:
    """A variant's change in error against the baseline, in percentage points (variant minus baseline).

    delta, low, high: the estimate and its 1 - alpha interval (not adjusted for the other variants; with one seed,
        for the test-set noise only).
    p: two-sided p-value for "no change"; p_holm: Holm-adjusted over the family (p itself for one variant).
    resolved: p_holm < alpha. resolvable: the smallest |delta| that would be resolved (module docstring).
    verdict: False with a single seed paired: then p, p_holm and resolvable are NaN and resolved is False.
    se, se_seed, se_image: the standard error and its two parts (se**2 = se_seed**2 + se_image**2).
    seeds: the seeds both arms have; images: n; seed_spread_measured: False with a single seed.
    disagreement: the fraction of (seed, image) pairs on which the two arms differ in correctness (for planning).
    """

    delta: float
    low: float
    high: float
    p: float
    p_holm: float
    resolved: bool
    resolvable: float
    se: float
    se_seed: float
    se_image: float
    seeds: tuple[int, ...]
    images: int
    seed_spread_measured: bool
    verdict: bool
    disagreement: float
    alpha: float = ALPHA


def paired_change(baseline: Mapping[int, ArrayLike], variant: Mapping[int, ArrayLike], alpha: float = ALPHA) -> Change:
    """A variant's change against the baseline, from {seed: per-image errors (1 = wrong, 0 = right)} per arm.

    Only the seeds both arms have are paired; every array holds the same test images in the same order. Raises
    ValueError when no seed is common, when the arrays differ in length, or when they are not 0/1.
    """
    seeds = tuple(sorted(baseline.keys() & variant.keys()))
    if not seeds:
        raise ValueError(f"no seed in common: the baseline has seeds {sorted(baseline)}, the variant {sorted(variant)}")
    errors = {(arm, s): _errors(arms[s], arm, s) for arm, arms in (("baseline", baseline), ("variant", variant))
              for s in seeds}
    if len({len(e) for e in errors.values()}) > 1:
        sizes = ", ".join(f"{arm} seed {s}: {len(e)}" for (arm, s), e in errors.items())
        raise ValueError(f"the test sets differ in size (images per arm and seed: {sizes})")
    d = np.stack([errors["variant", s] - errors["baseline", s] for s in seeds])
    v_seed, v_image = _variance_parts(d)
    S, n = d.shape
    delta = float(d.mean())
    half = _quantile(alpha, v_seed, v_image, S - 1)
    p = _tail(abs(delta), v_seed, v_image, S - 1) if S > 1 else math.nan
    return Change(
        delta=100 * delta, low=100 * (delta - half), high=100 * (delta + half), p=p, p_holm=p, resolved=p < alpha,
        resolvable=100 * half if S > 1 else math.nan, se=100 * float(np.sqrt(v_seed + v_image)),
        se_seed=100 * float(np.sqrt(v_seed)), se_image=100 * float(np.sqrt(v_image)), seeds=seeds, images=n,
        seed_spread_measured=S > 1, verdict=S > 1, disagreement=float((d != 0).mean()), alpha=alpha,
    )


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the order given: the k-th smallest of m is multiplied by m - k + 1,
    then made non-decreasing in that order and capped at 1."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    return adjusted


def compare_variants(
    baseline: Mapping[int, ArrayLike], variants: Mapping[str, Mapping[int, ArrayLike]], alpha: float = ALPHA
) -> dict[str, Change]:
    """Every variant against the baseline on one metric, with Holm's correction over those that carry a verdict.

    A variant with no seed in common with the baseline cannot be compared: it is left out of the result and of
    the family. One with a single seed in common is in the result, without a verdict, and out of the family. Other
    bad input raises ValueError naming the variant.
    """
    changes = {}
    for name, arms in variants.items():
        if baseline.keys() & arms.keys():
            try:
                changes[name] = paired_change(baseline, arms, alpha)
            except ValueError as e:
                raise ValueError(f"variant {name!r}: {e}") from e
    family = [name for name, c in changes.items() if c.verdict]
    m = len(family)
    for name, a in zip(family, holm([changes[name].p for name in family])):
        c = changes[name]
        changes[name] = replace(c, p_holm=float(a), resolved=bool(a < alpha),
                                resolvable=100 * _quantile(alpha / m, *_parts(c)))
    return changes


def _errors(values: ArrayLike, arm: str, seed: int) -> np.ndarray:
    e = np.asarray(values)
    if e.ndim != 1 or (e.dtype != bool and not ((e == 0) | (e == 1)).all()):
        raise ValueError(f"{arm} seed {seed}: expected a 1-D array of 0/1 errors per image (shape {e.shape})")
    return e.astype(np.float64)


def _variance_parts(d: np.ndarray) -> tuple[float, float]:
    """v_seed and v_image (module docstring) of the mean of d [S, n]; with one seed all of it is image noise."""
    S, n = d.shape
    floor = 1.0 / (S * n) ** 2
    per_image = d.mean(axis=0)
    if S == 1:
        return 0.0, max(float(per_image.var(ddof=1)) / n, floor)
    per_seed = d.mean(axis=1)
    residual = d - per_seed[:, None] - per_image[None, :] + d.mean()
    ms_residual = float((residual**2).sum()) / ((S - 1) * (n - 1))
    ms_image = S * float(per_image.var(ddof=1))
    return max(float(per_seed.var(ddof=1)) / S, floor), max(0.0, ms_image - ms_residual) / (S * n)


def _parts(c: Change) -> tuple[float, float, int]:
    return (c.se_seed / 100) ** 2, (c.se_image / 100) ** 2, len(c.seeds) - 1


def _tail(x: float, v_seed: float, v_image: float, df: int) -> float:
    """P(|T| >= x) for T = Z sqrt(v_seed df / chi2_df + v_image), Z standard normal (df = 0: no seed part)."""
    if df == 0:
        return float(2 * special.ndtr(-x / np.sqrt(v_image)))
    w, weights = _chi2_grid(df)
    return float(min(1.0, weights @ (2 * special.ndtr(-x / np.sqrt(v_seed * df / w + v_image)))))


@cache
def _chi2_grid(df: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes w of chi2_df on the log grid and their trapezoid weights (the density times w), summing to 1."""
    log_weights = df / 2 * _LOG_W - np.exp(_LOG_W) / 2
    weights = np.exp(log_weights - log_weights.max())
    keep = weights > 1e-20
    return np.exp(_LOG_W[keep]), weights[keep] / weights[keep].sum()


def _quantile(alpha: float, v_seed: float, v_image: float, df: int) -> float:
    """The x with P(|T| >= x) = alpha, bracketed by the sum of the parts' alpha/2 quantiles (a union bound)."""
    seed_part = special.stdtrit(df, 1 - alpha / 4) * np.sqrt(v_seed) if df else 0.0
    high = seed_part + special.ndtri(1 - alpha / 4) * np.sqrt(v_image)
    return float(optimize.brentq(lambda x: _tail(x, v_seed, v_image, df) - alpha, 0.0, high, xtol=1e-14))
