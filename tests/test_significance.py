"""The ablation verdict's method (alexnet_lightning/significance.py), checked on exact cases and by simulation.

The simulated world. The population is (training run, image) pairs. Image i has a latent difficulty u_i and its
own response c_i to the variant's change; a training run of arm a (baseline or variant) at seed s shifts its error
rate by r_sa (the two arms' shifts at one seed correlate, RHO: same initialisation and data order), and each run
has its own luck e_si on each image, shared by the two arms at that seed. On the logit scale

    P(error | run, image) = logistic(MU + u_i + e_si + r_sa + [a = variant] (delta + c_i)),

u ~ N(0, SD_IMAGE^2), e ~ N(0, SD_RUN_IMAGE^2), r ~ N(0, sd_seed^2), c ~ N(0, sd_change^2), outcomes Bernoulli
(the baseline's error is about 44%). A study draws S seeds and n = 500 test images afresh. The true change is the
expected difference of error rates over that population, E[logistic(MU + delta + Z1)] - E[logistic(MU + Z0)] with
Z0 ~ N(0, SD_IMAGE^2 + SD_RUN_IMAGE^2 + sd_seed^2) and Z1 adding sd_change^2, by Gauss-Hermite quadrature. A null
variant (true change 0) solves delta for it, so it can still help some images and hurt others.

Tolerances: a simulated rate over N studies has binomial standard error sqrt(q (1 - q) / N); the checks allow
three of them (N = 1000 at 95%: 0.021; at 5%: 0.021).
"""

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from alexnet_lightning.study.significance import ALPHA, compare_variants, holm, paired_change

N_STUDIES = 1000
IMAGES = 500
MU, SD_IMAGE, SD_RUN_IMAGE, RHO = -0.4, 2.0, 0.5, 0.5


def true_change(delta: float, sd_change: float, sd_seed: float) -> float:
    """The change in expected error (a fraction) over the population of images and training runs."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    spread = SD_IMAGE**2 + SD_RUN_IMAGE**2 + sd_seed**2
    variant = w @ (1 / (1 + np.exp(-(MU + delta + x * np.sqrt(spread + sd_change**2)))))
    baseline = w @ (1 / (1 + np.exp(-(MU + x * np.sqrt(spread)))))
    return float(variant - baseline)


def null_delta(sd_change: float, sd_seed: float) -> float:
    """The logit shift whose true change is exactly 0 when the change varies between images."""
    return optimize.brentq(lambda d: true_change(d, sd_change, sd_seed), -2.0, 2.0, xtol=1e-12)


def simulate(rng, studies, seeds, deltas, sd_change, sd_seed):
    """Errors (bool [studies, arms, seeds, images]) of the baseline (arm 0) and one variant per entry of deltas."""
    arms = 1 + len(deltas)
    shape = (studies, 1, 1, IMAGES)
    difficulty = rng.normal(0, SD_IMAGE, shape)
    run_image = rng.normal(0, SD_RUN_IMAGE, (studies, 1, seeds, IMAGES))
    shared = rng.normal(0, 1, (studies, 1, seeds, 1))
    run = sd_seed * (RHO * shared + np.sqrt(1 - RHO**2) * rng.normal(0, 1, (studies, arms, seeds, 1)))
    change = np.concatenate([np.zeros(shape)] + [d + rng.normal(0, sd_change, shape) for d in deltas], axis=1)
    logit = MU + difficulty + run_image + run + change
    return rng.random(logit.shape) < 1 / (1 + np.exp(-logit))


def one(errors):
    """The baseline's and the first variant's arms of one simulated study, as {seed: errors}."""
    return dict(enumerate(errors[0])), dict(enumerate(errors[1]))


@pytest.mark.parametrize("seeds, sd_seed, sd_change", [
    (1, 0.0, 0.5),  # one seed: right only when training runs do not differ (the interval cannot see their spread)
    (2, 0.15, 0.5),  # seed-to-seed spread dominates
    (3, 0.15, 0.5),
    (5, 0.15, 0.5),
    (5, 0.03, 1.5),  # the images all seeds share weigh as much as the seeds: a t over seeds alone covers 90%
])
def test_interval_covers_the_true_change(seeds, sd_seed, sd_change):
    delta = 0.2
    theta = 100 * true_change(delta, sd_change, sd_seed)
    studies = simulate(np.random.default_rng(seeds), N_STUDIES, seeds, [delta], sd_change, sd_seed)
    changes = [paired_change(*one(s)) for s in studies]
    coverage = np.mean([c.low <= theta <= c.high for c in changes])
    print(f"S={seeds} sd_seed={sd_seed} sd_change={sd_change}: true change {theta:.3f} pts, median se_seed "
          f"{np.median([c.se_seed for c in changes]):.2f}, se_image {np.median([c.se_image for c in changes]):.2f}, "
          f"coverage {coverage:.3f} of {N_STUDIES}")
    # At least nominal within sampling error; conservative by design, by at most about 2.5 points.
    assert 0.95 - 3 * np.sqrt(0.95 * 0.05 / N_STUDIES) <= coverage <= 0.985
    assert all(c.seed_spread_measured == c.verdict == (seeds > 1) for c in changes)
    excludes_zero = np.array([c.low > 0 or c.high < 0 for c in changes])
    if seeds > 1:
        assert (excludes_zero == np.array([c.p < ALPHA for c in changes])).all()
    else:  # an interval for the test images, but no p-value and no verdict
        assert all(np.isnan(c.p) and not c.resolved for c in changes)


@pytest.mark.parametrize("seeds", [2, 5])
def test_no_change_is_rarely_resolved_and_holm_holds_the_family(seeds):
    """Four variants with no true change against one baseline: each is resolved alone at most 5% of the time,
    and after Holm's correction the chance that any of the four is resolved is at most 5%."""
    sd_change, sd_seed = 0.5, 0.15
    delta = null_delta(sd_change, sd_seed)
    studies = simulate(np.random.default_rng(10 + seeds), N_STUDIES, seeds, [delta] * 4, sd_change, sd_seed)
    changes = [compare_variants(dict(enumerate(e[0])), {k: dict(enumerate(a)) for k, a in enumerate(e[1:])})
               for e in studies]
    alone = np.mean([c[0].p < ALPHA for c in changes])
    family = np.mean([any(v.resolved for v in c.values()) for c in changes])
    print(f"S={seeds}: resolved alone {alone:.3f}, any of 4 after Holm {family:.3f}, of {N_STUDIES} studies")
    assert alone <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / N_STUDIES)
    assert family <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / N_STUDIES)


def test_a_large_change_is_resolved_beside_null_variants():
    seeds, sd_change, sd_seed, large = 5, 0.5, 0.15, 1.0
    null = null_delta(sd_change, sd_seed)
    studies = simulate(np.random.default_rng(7), N_STUDIES, seeds, [large, null, null, null], sd_change, sd_seed)
    changes = [compare_variants(dict(enumerate(e[0])), {k: dict(enumerate(a)) for k, a in enumerate(e[1:])})
               for e in studies]
    power = np.mean([c[0].resolved for c in changes])
    print(f"true change {100 * true_change(large, sd_change, sd_seed):.2f} pts, median se "
          f"{np.median([c[0].se for c in changes]):.2f}: resolved in {power:.3f} of {N_STUDIES} studies")
    assert power >= 0.9
    # Resolvable is a guarantee: an estimate beyond it is resolved whatever the other variants show.
    assert all(v.resolved for c in changes for v in c.values() if abs(v.delta) > v.resolvable)


def arms(rows):
    """{seed: errors} from a list of per-seed 0/1 lists."""
    return {s: np.array(r) for s, r in enumerate(rows)}


def test_a_hand_worked_example():
    # d = [[1, 0, 0, 0], [1, 1, 0, 0]]: per-seed changes 0.25 and 0.5 (variance 0.03125, over S = 2: 0.015625);
    # per-image means 1, .5, 0, 0 (MS_image = 2 * 0.229167 = 0.458333); residuals +-[.125, -.375, .125, .125]
    # (MS_residual = 0.375 / 3 = 0.125); v_image = (0.458333 - 0.125) / 8 = 0.0416667.
    c = paired_change(arms([[0, 0, 0, 0], [0, 0, 0, 0]]), arms([[1, 0, 0, 0], [1, 1, 0, 0]]))
    assert c.delta == pytest.approx(37.5)
    assert c.se_seed == pytest.approx(12.5)
    assert c.se_image == pytest.approx(100 * np.sqrt(0.0416667), rel=1e-5)
    assert c.se == pytest.approx(np.hypot(c.se_seed, c.se_image))
    assert (c.seeds, c.images, c.seed_spread_measured) == ((0, 1), 4, True)


def test_identical_arms_are_no_change_and_never_resolved():
    rng = np.random.default_rng(0)
    errors = {s: rng.random(200) < 0.4 for s in range(3)}
    for seeds in ({0}, {0, 1, 2}):
        c = paired_change({s: errors[s] for s in seeds}, {s: errors[s].copy() for s in seeds})
        assert c.delta == 0 and not c.resolved and (c.p == pytest.approx(1) if len(seeds) > 1 else np.isnan(c.p))
        assert c.low < 0 < c.high and np.isfinite(c.se) and c.se > 0


def test_arms_that_differ_on_every_image_get_a_finite_verdict():
    right, wrong = np.zeros(100, bool), np.ones(100, bool)
    one_seed = paired_change({0: right}, {0: wrong})  # one seed: an interval, but no verdict however large
    assert one_seed.delta == 100 and not one_seed.resolved and np.isfinite(one_seed.high) and one_seed.low > 0
    assert one_seed.disagreement == 1.0
    # Two seeds that agree exactly: a t with 1 df on the estimate's resolution, large but finite.
    two_seeds = paired_change({0: right, 1: right}, {0: wrong, 1: wrong})
    assert two_seeds.resolved and 0 < two_seeds.p < 0.01 and two_seeds.se == pytest.approx(100 / 200)


def test_only_common_seeds_are_paired():
    rng = np.random.default_rng(1)
    base = {s: rng.random(300) < 0.4 for s in range(4)}
    variant = {s: rng.random(300) < 0.45 for s in (1, 2, 5)}
    c = paired_change(base, variant)
    assert c.seeds == (1, 2)
    assert c == paired_change({s: base[s] for s in (1, 2)}, {s: variant[s] for s in (1, 2)})


def test_bad_input_is_named():
    good = np.zeros(10, bool)
    with pytest.raises(ValueError, match="baseline seed 1: 9"):
        paired_change({0: good, 1: good[:9]}, {0: good, 1: good})
    with pytest.raises(ValueError, match="variant seed 0: expected a 1-D array of 0/1"):
        paired_change({0: good}, {0: np.full(10, 2)})
    with pytest.raises(ValueError, match="no seed in common"):
        paired_change({0: good}, {1: good})
    with pytest.raises(ValueError, match="variant 'no_lrn'"):
        compare_variants({0: good}, {"no_lrn": {0: good[:5]}})


def test_compare_variants_applies_holm_over_the_comparable_variants():
    rng = np.random.default_rng(2)
    base = {s: rng.random(500) < 0.4 for s in range(3)}
    variants = {"worse": {s: rng.random(500) < 0.6 for s in range(3)},
                "same": {s: rng.random(500) < 0.4 for s in range(3)},
                "unpaired": {7: rng.random(500) < 0.4}}
    changes = compare_variants(base, variants)
    assert list(changes) == ["worse", "same"]  # nothing to pair "unpaired" with: out of the family
    alone = {name: paired_change(base, variants[name]) for name in changes}
    assert [c.p_holm for c in changes.values()] == pytest.approx(list(holm([c.p for c in alone.values()])))
    assert changes["worse"].resolved and not changes["same"].resolved
    assert changes["worse"].resolvable > alone["worse"].resolvable  # the stricter level alpha / 2


def test_a_one_seed_variant_has_no_verdict_and_stays_out_of_the_holm_family():
    """A variant paired with the baseline at one seed, alone or by overlapping it in one seed only, shows its change
    and a test-image interval, but no p-value, no verdict, and changes nothing for the variants with seeds."""
    rng = np.random.default_rng(3)
    base = {s: rng.random(500) < 0.4 for s in range(3)}
    variants = {"worse": {s: base[s] | (rng.random(500) < 0.08) for s in range(3)},
                "same": {s: rng.random(500) < 0.4 for s in range(3)}}
    without = compare_variants(base, variants)
    # One seed with a small change (in the family it would raise the others' Holm p) and, overlapping the
    # baseline's seeds in one seed only, a huge one whose interval lies far from 0.
    one_seed = {"one": {0: base[0] ^ (rng.random(500) < 0.05)}, "overlap": {2: np.ones(500, bool), 9: base[0]}}
    changes = compare_variants(base, variants | one_seed)
    assert changes["overlap"].delta > 50 and changes["overlap"].low > 0
    for name in one_seed:
        c = changes[name]
        assert len(c.seeds) == 1 and c.low < c.delta < c.high and not c.seed_spread_measured
        assert not c.verdict and not c.resolved and np.isnan(c.p) and np.isnan(c.p_holm) and np.isnan(c.resolvable)
    for name in variants:  # the family is the same two variants: same adjusted p-values, same resolvable sizes
        assert changes[name] == without[name] and changes[name].verdict
    assert changes["worse"].resolved


def test_holm_on_a_textbook_example():
    # Wikipedia, "Holm-Bonferroni method": p = 0.01, 0.03, 0.04, 0.005 at alpha 0.05 rejects hypotheses one and
    # four. Adjusted: sorted and multiplied by 4, 3, 2, 1 (0.02, 0.03, 0.06, 0.04), made non-decreasing.
    adjusted = holm([0.01, 0.03, 0.04, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(adjusted < 0.05) == [True, False, False, True]
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])
    assert holm([0.7, 0.9]) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("df", [1, 2, 4, 9])
def test_reference_distribution_against_scipy(df):
    from alexnet_lightning.study.significance import _quantile, _tail

    for x in (0.5, 2.0, 5.0, 12.7, 50.0):
        assert _tail(x, 1.0, 0.0, df) == pytest.approx(2 * stats.t.sf(x, df), rel=1e-9)  # the paired t
        assert _tail(x, 0.0, 4.0, df) == pytest.approx(2 * stats.norm.sf(x / 2), rel=1e-9)  # the normal
        mixture = integrate.quad(lambda w, x=x: stats.chi2.pdf(w, df) * 2 * stats.norm.sf(x / np.sqrt(df / w + 1)),
                                 0, np.inf, epsabs=1e-13)[0]
        assert _tail(x, 1.0, 1.0, df) == pytest.approx(mixture, rel=1e-6)
    assert _quantile(0.05, 1.0, 0.0, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)
