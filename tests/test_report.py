"""The ablation table: errors per variant, changes with intervals and verdicts from per-image outcomes, the paper's
changes beside them, diagnostics and flags."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from alexnet_lightning.model import outcomes as outcome_files
from alexnet_lightning.study.planner import noise_from_row, resolvable
from alexnet_lightning.study.report import NO_OUTCOMES, load_outcomes, plot, summarise, to_markdown, write_tables
from alexnet_lightning.study.significance import ALPHA, METHOD, compare_variants

IMAGES = 400
K_BETA = 2.0**0.75


def simulated_study():
    """Per-image errors of a small study: no_lrn wrong on 8% more images at every seed, no_overlap changing nothing
    on average, tanh run at one seed only. Returns (results, outcomes) as runner.py would leave them."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, IMAGES)
    errors = {"baseline": {s: rng.random(IMAGES) < 0.3 for s in range(3)}}
    errors["no_lrn"] = {s: errors["baseline"][s] | (rng.random(IMAGES) < 0.12) for s in range(3)}
    errors["no_overlap"] = {s: errors["baseline"][s] ^ (rng.random(IMAGES) < 0.05) for s in range(3)}
    errors["tanh"] = {0: errors["baseline"][0] | (rng.random(IMAGES) < 0.3)}
    results, outcomes = [], {}
    for variant, seeds in errors.items():
        for seed, wrong in seeds.items():
            top5_wrong = wrong & (rng.random(IMAGES) < 0.3)
            results.append({"variant": variant, "seed": seed, "test/top1_error": float(wrong.mean()),
                            "test/top5_error": float(top5_wrong.mean())})
            outcomes.setdefault(variant, {})[seed] = {
                "pred": np.where(wrong, (labels + 1) % 10, labels), "label": labels, "top1_correct": ~wrong,
                "top5_correct": ~top5_wrong, "test_set": "abc", "test_files": IMAGES, "replicas": 1,
            }
    return results, outcomes


def table(text: str, which: int) -> dict[str, str]:
    """The rows of the changes table (0), the planner's (1) or the diagnostics (2), by variant."""
    tables = text.split("\n| variant |")
    return {line.split("|")[1].strip(): line for line in tables[which].splitlines() if line.startswith("| ")}


@pytest.fixture
def study():
    return simulated_study()


@pytest.fixture
def rows(study):
    return {r["variant"]: r for r in summarise(*study)}


def test_errors_are_means_and_spreads_over_seeds_in_percent(study, rows):
    results, _ = study
    baseline = [100 * r["test/top1_error"] for r in results if r["variant"] == "baseline"]
    assert rows["baseline"]["top1_error"] == pytest.approx(np.mean(baseline))
    assert rows["baseline"]["top1_error_spread"] == pytest.approx(np.std(baseline, ddof=1))
    assert rows["baseline"]["seeds"] == 3 and rows["tanh"]["seeds"] == 1
    assert rows["no_lrn"]["paper_top1_delta"] == 1.4 and rows["no_lrn"]["paper_top5_delta"] == 1.2


def test_changes_are_paired_by_seed_and_image_with_holm_over_the_variants(study, rows):
    results, outcomes = study
    wrong = {v: {s: ~o["top1_correct"] for s, o in seeds.items()} for v, seeds in outcomes.items()}
    expected = compare_variants(wrong.pop("baseline"), wrong)
    for name, change in expected.items():
        row = rows[name]
        paired = [np.mean(wrong[name][s].astype(float) - (~outcomes["baseline"][s]["top1_correct"]).astype(float))
                  for s in change.seeds]
        assert row["top1_delta"] == pytest.approx(100 * np.mean(paired))  # the mean paired difference, in points
        assert (row["top1_low"], row["top1_high"], row["top1_p"], row["top1_p_holm"], row["top1_resolvable"]) == (
            change.low, change.high, change.p, change.p_holm, change.resolvable)
        assert row["top1_resolved"] == change.resolved and row["top1_images"] == IMAGES
    assert rows["no_lrn"]["top1_resolved"] and rows["no_lrn"]["top1_low"] > 0
    no_overlap = rows["no_overlap"]
    assert not no_overlap["top1_resolved"] and no_overlap["top1_low"] < 0 < no_overlap["top1_high"]
    assert rows["no_overlap"]["top1_p_holm"] >= rows["no_overlap"]["top1_p"]  # adjusted over the two with seeds
    assert "top1_delta" not in rows["baseline"]


def test_one_seed_is_flagged_its_interval_covering_test_images_only(rows):
    tanh = rows["tanh"]
    assert tanh["top1_seed_spread_measured"] is False and tanh["top1_se_seed"] == 0.0
    assert tanh["top1_paired_seeds"] == 1 and "one seed†" in tanh["flags"]
    assert rows["no_lrn"]["top1_seed_spread_measured"] is True and "one seed" not in rows["no_lrn"]["flags"]


def test_a_one_seed_row_is_never_resolved_nor_bold_and_stays_out_of_the_holm_family(study, tmp_path):
    """tanh has one seed; drop_layer two, of which only one the baseline has. Both show a change and a test-image
    interval, on top-1 and top-5, but no p-value and no verdict, in the rows, the Markdown, the CSV and the JSON;
    the variants with seeds get the same Holm-adjusted p-values as in a study without them."""
    results, outcomes = study
    rng = np.random.default_rng(5)
    for seed in (2, 5):  # a large change: the old report printed it bold, resolved
        o = outcomes["baseline"][seed % 3] | {"top1_correct": rng.random(IMAGES) < 0.2,
                                               "top5_correct": np.ones(IMAGES, bool)}
        outcomes.setdefault("drop_layer", {})[seed] = o
        results.append({"variant": "drop_layer", "seed": seed, "test/top1_error": float(1 - o["top1_correct"].mean()),
                        "test/top5_error": 0.0})
    rows = {r["variant"]: r for r in summarise(results, outcomes)}
    with_seeds = [r for r in results if r["variant"] not in ("tanh", "drop_layer")]
    kept = {v: outcomes[v] for v in ("baseline", "no_lrn", "no_overlap")}
    without = {r["variant"]: r for r in summarise(with_seeds, kept)}
    for m in ("top1", "top5"):
        for name in ("no_lrn", "no_overlap"):
            assert rows[name][f"{m}_p_holm"] == without[name][f"{m}_p_holm"]
            assert rows[name][f"{m}_resolvable"] == without[name][f"{m}_resolvable"]
        for name in ("tanh", "drop_layer"):
            row = rows[name]
            assert row[f"{m}_paired_seeds"] == 1 and row[f"{m}_low"] < row[f"{m}_delta"] < row[f"{m}_high"]
            assert not row[f"{m}_resolved"] and math.isnan(row[f"{m}_p"]) and math.isnan(row[f"{m}_p_holm"])
            assert row[f"{m}_verdict"] == "none: one seed paired with the baseline"
    assert rows["tanh"]["top1_low"] > 0 and rows["drop_layer"]["top1_low"] > 0  # far from 0, still no verdict
    assert rows["no_lrn"]["top1_verdict"] == "resolved" and rows["no_overlap"]["top1_verdict"] == "not resolved"
    assert "one seed† in common with the baseline" in rows["drop_layer"]["flags"]
    lines = table(to_markdown(list(rows.values())), 0)
    for name in ("tanh", "drop_layer"):
        assert "**" not in lines[name] and lines[name].count("no verdict†") == 2
    paths = write_tables(list(rows.values()), tmp_path)
    record = {r["variant"]: r for r in json.loads(paths["json"].read_text())}["tanh"]
    assert record["top1_p"] is None and record["top1_p_holm"] is None and record["top1_resolved"] is False
    with paths["csv"].open() as f:
        record = {r["variant"]: r for r in csv.DictReader(f)}["drop_layer"]
    assert record["top5_verdict"] == "none: one seed paired with the baseline" and record["top5_resolved"] == "False"
    assert plot(list(rows.values()), {}, tmp_path)["deltas"].stat().st_size > 10_000


def test_the_markdown_shows_intervals_verdicts_the_paper_and_names_the_method(rows):
    text = to_markdown(list(rows.values()))
    lines = table(text, 0)
    no_lrn, no_overlap, tanh = rows["no_lrn"], rows["no_overlap"], rows["tanh"]
    assert f"**{no_lrn['top1_delta']:+.2f} [{no_lrn['top1_low']:+.2f}, {no_lrn['top1_high']:+.2f}]**" in lines["no_lrn"]
    assert (f"{no_overlap['top1_delta']:+.2f} [{no_overlap['top1_low']:+.2f}, {no_overlap['top1_high']:+.2f}] n.r.; "
            f"resolvable ±{no_overlap['top1_resolvable']:.2f}") in lines["no_overlap"]
    assert f"{no_lrn['top1_p']:.3g} / {no_lrn['top1_p_holm']:.3g}" in lines["no_lrn"]
    # One seed: its change and test-image interval, never bold, no p-value (issue 19; it was printed bold).
    assert f"| {tanh['top1_delta']:+.2f} [{tanh['top1_low']:+.2f}, {tanh['top1_high']:+.2f}] no verdict† | – |" in (
        lines["tanh"])
    assert "**" not in lines["tanh"]
    assert "| +1.40 | +1.20 |" in lines["no_lrn"]
    assert METHOD in text and "seed-to-seed spread was not measured" in text
    assert f"ten-crop test on {IMAGES} images" in text
    assert "| variant | LRN conv1 (start → end)" in text  # the diagnostics table follows
    # Between them the planner's table: the change resolvable at 80% power at the row's seeds, after Holm over 3.
    noise = noise_from_row(no_lrn, "top1")
    at_seeds = resolvable(noise, IMAGES, 3, ALPHA / 3)
    assert f"| no_lrn | top-1 | 3 | {IMAGES} | {noise.seed_spread:.2f} | {at_seeds:.2f} | +1.40 |" in text
    assert at_seeds > no_lrn["top1_resolvable"]  # 80% power asks more than the estimate's 50%


def test_without_outcomes_the_change_is_the_seed_mean_and_has_no_interval(study):
    results, _ = study
    rows = {r["variant"]: r for r in summarise(results)}
    base = {r["seed"]: r["test/top1_error"] for r in results if r["variant"] == "baseline"}
    expected = np.mean([100 * (r["test/top1_error"] - base[r["seed"]]) for r in results if r["variant"] == "no_lrn"])
    assert rows["no_lrn"]["top1_delta"] == pytest.approx(expected)
    assert math.isnan(rows["no_lrn"]["top1_low"]) and not rows["no_lrn"]["top1_resolved"]
    assert "no interval" in rows["no_lrn"]["flags"]
    text = to_markdown(list(rows.values()))
    assert f"{expected:+.2f} (no interval)" in text and NO_OUTCOMES in text


def test_inert_lrn_is_flagged_on_its_row_and_on_the_row_that_removes_it(study):
    results, outcomes = study
    for r in results:
        if r["variant"] != "no_lrn":  # the no-LRN network has no LRN to measure
            active = r["variant"] == "no_overlap" and r["seed"] == 0
            factor = K_BETA * (1.2 if active else 1.0001)
            r |= {"diag/conv1_lrn_factor_start": K_BETA * 1.0001, "diag/conv1_lrn_factor_end": factor,
                  "diag/conv2_lrn_factor_start": K_BETA, "diag/conv2_lrn_factor_end": K_BETA,
                  "diag/lrn_k_beta": K_BETA, "diag/lrn_inert": not active}
        r |= {"diag/pca_noise_ratio": 0.1, "diag/val_minus_train_top1": 0.05, "diag/train_error_target": 0.5,
              "diag/epochs_to_train_error_target": None if r["variant"] == "tanh" else 3}
    rows = {r["variant"]: r for r in summarise(results, outcomes)}
    assert "LRN inert" in rows["baseline"]["flags"]
    assert "LRN inert in the baseline" in rows["no_lrn"]["flags"]
    assert "LRN inert in 2 of 3 seeds" in rows["no_overlap"]["flags"]
    assert rows["no_overlap"]["conv1_lrn_factor_end"] == pytest.approx(K_BETA * (1.2 + 2 * 1.0001) / 3)
    assert rows["baseline"]["val_minus_train_top1"] == pytest.approx(5.0)
    lines = table(to_markdown(list(rows.values())), 2)
    assert "| +0.01% → +6.67% |" in lines["no_overlap"]  # conv1's excess over k^beta, mean over seeds
    assert "| +5.00 | 0.10 | 3, 3, 3 |" in lines["baseline"]
    assert "| not reached |" in lines["tanh"]


def study_folder(tmp_path, study):
    results, outcomes = study
    for r in results:
        cell = tmp_path / "runs" / r["variant"] / f"seed{r['seed']}"
        cell.mkdir(parents=True)
        o = outcomes[r["variant"]][r["seed"]]
        rows = torch.from_numpy(np.stack([o["pred"], o["label"], o["top1_correct"], o["top5_correct"]], 1))
        outcome_files.write(cell / outcome_files.FILE, rows.long(), "abc", IMAGES, 1)
    return results


def test_outcome_files_are_checked_against_their_results_and_each_other(tmp_path, study):
    results = study_folder(tmp_path, study)
    loaded = load_outcomes(tmp_path, results)
    assert sorted(loaded) == ["baseline", "no_lrn", "no_overlap", "tanh"] and sorted(loaded["baseline"]) == [0, 1, 2]
    assert np.array_equal(loaded["no_lrn"][1]["top1_correct"], study[1]["no_lrn"][1]["top1_correct"])
    wrong = [dict(r) for r in results]
    wrong[4]["test/top1_error"] += 0.01
    with pytest.warns(UserWarning, match=r"runs/no_lrn/seed1/outcomes.npz gives a top-1 error of .* does not belong"):
        assert sorted(load_outcomes(tmp_path, wrong)["no_lrn"]) == [0, 2]  # that cell has no interval
    other = tmp_path / "runs" / "tanh" / "seed0" / outcome_files.FILE
    o = outcome_files.read(other)
    rows = torch.from_numpy(np.stack([o["pred"], o["label"], o["top1_correct"], o["top5_correct"]], 1)).long()
    outcome_files.write(other, rows, "another set", IMAGES, 1)
    with pytest.warns(UserWarning, match="tanh/seed0/outcomes.npz and .* were tested on different images"):
        assert "tanh" not in load_outcomes(tmp_path, results)
    other.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="Cannot read the outcome file .*tanh/seed0/outcomes.npz"):
        assert "tanh" not in load_outcomes(tmp_path, results)


def test_tables_and_the_forest_plot_are_written(rows, tmp_path):
    paths = write_tables(list(rows.values()), tmp_path)
    data = json.loads(paths["json"].read_text())
    assert [r["variant"] for r in data] == ["baseline", "no_lrn", "no_overlap", "tanh"]
    assert data[1]["top1_low"] == pytest.approx(rows["no_lrn"]["top1_low"]) and data[0]["top1_error_spread"] > 0
    assert data[3]["top1_error_spread"] is None  # NaN is not JSON
    with paths["csv"].open() as f:
        records = list(csv.DictReader(f))
    assert float(records[1]["top1_p_holm"]) == pytest.approx(rows["no_lrn"]["top1_p_holm"])
    assert paths["md"].read_text().startswith("| variant |")
    plotted = plot(list(rows.values()), {}, tmp_path)
    assert plotted["deltas"].stat().st_size > 10_000


def test_the_forest_plots_legend_covers_no_row(rows, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figures the plot closes
    for ablations in (["no_lrn"], ["no_lrn", "no_overlap"]):  # one row: a legend inside a panel covered it
        figures.clear()
        plot([rows["baseline"], *(rows[name] for name in ablations)], {}, tmp_path)
        forest = figures[-1]
        renderer = forest.canvas.get_renderer()
        legends = [*forest.legends, *(ax.get_legend() for ax in forest.axes if ax.get_legend())]
        assert len(legends) == 1
        legend = legends[0].get_window_extent(renderer)
        for ax in forest.axes:
            assert not legend.overlaps(ax.get_window_extent(renderer)), ablations
    monkeypatch.undo()
    plt.close("all")
