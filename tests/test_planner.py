"""The seed planner (alexnet_lightning/study/planner.py): its power formula on exact cases, its command, and its
promise checked by simulating studies through the project's real test (compare_variants, Holm).

The simulated world is tests/test_significance.py's per-image logistic model (image difficulty, a run's luck per
image, a seed-level shift of each arm's error, an image's own response to the change), not the planner's normal
formula. Its noise (seed spread, per-image variances) is "known" by measuring it on 2,000 simulated seeds.
Tolerances: an achieved power over N studies has binomial standard error sqrt(q (1 - q) / N); the checks allow
three of them (N = 1000 at 80%: 0.038).
"""

import json

import numpy as np
import pytest
from scipy import optimize, stats

from alexnet_lightning.study import planner
from alexnet_lightning.study.planner import Noise, noise_from_row, power, resolvable, seeds_needed
from alexnet_lightning.study.significance import ALPHA, compare_variants, paired_change
from alexnet_lightning.study.summary import _change_fields
from tests.test_significance import IMAGES, null_delta, simulate, true_change

N_STUDIES = 1000
SD_SEED, SD_CHANGE, VARIANTS = 0.15, 0.5, 3  # one variant with a change, two without, one Holm family
TOLERANCE = 3 * np.sqrt(0.8 * 0.2 / N_STUDIES)


def row(change):
    """A summary row's top-1 fields for a Change (as summary.summarise writes them)."""
    return _change_fields("top1", change, {}, {}) | {"variant": "no_lrn"}


def families(rng, seeds, delta):
    """compare_variants over N_STUDIES simulated studies: the change `delta` (logit) first, then two null ones."""
    null = null_delta(SD_CHANGE, SD_SEED)
    studies = simulate(rng, N_STUDIES, seeds, [delta, null, null], SD_CHANGE, SD_SEED)
    return [compare_variants(dict(enumerate(e[0])), {k: dict(enumerate(a)) for k, a in enumerate(e[1:])})
            for e in studies]


def model_noise(rng, delta):
    """The model's noise for a change `delta`, measured on 20 simulated pilots of 100 seeds (variances averaged)."""
    noises = [noise_from_row(row(paired_change(*({s: e for s, e in enumerate(arm)} for arm in pilot))), "top1")
              for pilot in simulate(rng, 20, 100, [delta], SD_CHANGE, SD_SEED)]
    return Noise(*(float(np.sqrt(np.mean([n.seed_spread**2 for n in noises]))),
                   float(np.mean([n.image_var for n in noises])), float(np.mean([n.residual_var for n in noises]))))


@pytest.mark.slow
def test_the_planned_seeds_resolve_the_change_with_the_promised_power():
    rng = np.random.default_rng(11)
    delta = 0.3
    theta = 100 * true_change(delta, SD_CHANGE, SD_SEED)
    noise = model_noise(rng, delta)
    level = ALPHA / VARIANTS
    seeds = seeds_needed(theta, noise, IMAGES, level)
    achieved = np.mean([f[0].resolved for f in families(rng, seeds, delta)])
    print(f"true change {theta:.2f} pts, {noise}: {seeds} seeds planned (promised power "
          f"{power(theta, noise, IMAGES, seeds, level):.3f}, {seeds - 1} seeds "
          f"{power(theta, noise, IMAGES, seeds - 1, level):.3f}); achieved {achieved:.3f} of {N_STUDIES} studies")
    assert 0.8 - TOLERANCE <= achieved < 0.97
    assert power(theta, noise, IMAGES, seeds - 1, level) < 0.8 <= power(theta, noise, IMAGES, seeds, level)


@pytest.mark.slow
def test_the_resolvable_change_at_the_study_seeds_has_about_the_promised_power():
    rng = np.random.default_rng(12)
    seeds, level = 5, ALPHA / VARIANTS
    noise = model_noise(rng, 0.4)
    theta = resolvable(noise, IMAGES, seeds, level)
    delta = optimize.brentq(lambda d: 100 * true_change(d, SD_CHANGE, SD_SEED) - theta, 0.0, 3.0)
    achieved = np.mean([f[0].resolved for f in families(rng, seeds, delta)])
    print(f"resolvable at {seeds} seeds: {theta:.2f} pts ({noise}); achieved {achieved:.3f} of {N_STUDIES} studies")
    assert 0.8 - TOLERANCE <= achieved <= 0.8 + 2 * TOLERANCE


@pytest.mark.parametrize("seeds", [2, 3, 6, 12])
def test_without_an_image_part_the_power_is_the_noncentral_t(seeds):
    noise, level, change = Noise(2.0, 0.0, 0.0), ALPHA / 7, 3.0
    se, critical = 2.0 / np.sqrt(seeds), stats.t.ppf(1 - level / 2, seeds - 1)
    expected = stats.nct.sf(critical, seeds - 1, change / se) + stats.nct.cdf(-critical, seeds - 1, change / se)
    assert power(change, noise, 10**6, seeds, level) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert power(change, noise, 10**6, 1, level) == 0.0  # one seed: no verdict, no power


def test_a_study_gives_back_its_own_variance_parts_and_plans_consistently():
    rng = np.random.default_rng(3)
    errors = simulate(rng, 1, 4, [0.3], SD_CHANGE, SD_SEED)[0]
    change = paired_change(*({s: e for s, e in enumerate(arm)} for arm in errors))
    noise = noise_from_row(row(change), "top1")
    v_seed, v_image = noise.parts(IMAGES, 4)
    assert v_seed == pytest.approx(change.se_seed**2) and v_image == pytest.approx(change.se_image**2)
    level = ALPHA / 7
    at_four = resolvable(noise, IMAGES, 4, level)
    assert power(at_four, noise, IMAGES, 4, level) == pytest.approx(0.8, abs=1e-6)
    assert at_four > change.resolvable  # 80% power asks more than the 50% of the printed "resolvable"
    needed = seeds_needed(at_four, noise, IMAGES, level)
    assert needed == 4 or (needed == 3 and power(at_four, noise, IMAGES, 3, level) >= 0.8)
    assert seeds_needed(at_four / 2, noise, IMAGES, level) > needed
    one_seed = row(paired_change({0: errors[0][0]}, {0: errors[1][0]}))
    assert noise_from_row(one_seed, "top1") is None  # one seed: no seed spread to plan with, unless named
    assert noise_from_row(one_seed, "top1", seed_spread=1.0).seed_spread == 1.0


def test_the_command_plans_a_finished_study_and_one_not_yet_run(tmp_path, capsys):
    from tests.test_report import simulated_study, study_folder

    results = study_folder(tmp_path, simulated_study())
    for r in results:
        (tmp_path / "runs" / r["variant"] / f"seed{r['seed']}" / "result.json").write_text(
            json.dumps(r | {"val/top1_error": r["test/top1_error"]}))
    assert planner.main([str(tmp_path), "--change", "5"]) == 0
    out = capsys.readouterr().out
    lines = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in out.splitlines() if "| no_" in line}
    assert "seeds for Δ = 5" in out and "0.05/3" in out  # Holm over the study's three variants, planned
    assert lines["no_lrn", "top-1"].split("|")[7].strip() == "+1.40"
    assert "| tanh | top-1 | – |" not in out and "| tanh | top-1 | 1 | 400 | – | – |" in out

    argv = ["--test-images", "50000", "--variants", "7", "--seed-spread", "1.0", "--disagreement", "0.2",
            "--images-per-second", "2500", "--seeds", "3", "--change", "1.4"]
    assert planner.main(argv) == 0
    out = capsys.readouterr().out
    hours = 8 * 3 * 90 * 1_281_167 / 2500 / 3600
    assert f"--seeds: 3 seeds, 24 cells (7 variants and the baseline) of 90 epochs x 1,281,167 images at 2500 " \
           f"img/s: {hours:,.0f} GPU-hours of training." in out
    assert "| no_lrn | top-1 | 3 | 50,000 | 1.00 |" in out


@pytest.mark.parametrize("argv, message", [
    (["--test-images", "50000"], "--test-images without --pilot needs --seed-spread and --disagreement"),
    ([], "give a study folder, or --test-images"),
    (["/nonexistent"], "/nonexistent is not a study folder"),
    (["x", "--power", "1.5"], "--power must be between 0 and 1"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        planner.main(argv)
    assert message in capsys.readouterr().err
