import csv
import json
import math

import pytest

from alexnet_lightning.report import summarise, to_markdown, write_tables


def runs(variant, top1, top5):
    return [{"variant": variant, "seed": s, "test/top1_error": a, "test/top5_error": b}
            for s, (a, b) in enumerate(zip(top1, top5))]


@pytest.fixture
def rows():
    results = (
        runs("baseline", [0.40, 0.42, 0.41], [0.18, 0.20, 0.19])
        + runs("no_lrn", [0.43, 0.44, 0.45], [0.19, 0.22, 0.20])
        + runs("no_overlap", [0.405, 0.415, 0.42], [0.18, 0.20, 0.19])
        + runs("tanh", [0.50], [0.30])
    )
    return {r["variant"]: r for r in summarise(results)}


def test_means_spreads_and_deltas_on_known_numbers(rows):
    base, no_lrn = rows["baseline"], rows["no_lrn"]
    assert base["top1_error"] == pytest.approx(41.0)
    assert base["top1_error_spread"] == pytest.approx(1.0)
    assert no_lrn["top1_error"] == pytest.approx(44.0)
    # Paired by seed: +3, +2, +4 points.
    assert no_lrn["top1_delta"] == pytest.approx(3.0)
    assert no_lrn["top1_delta_spread"] == pytest.approx(1.0)
    assert no_lrn["top5_delta"] == pytest.approx((1 + 2 + 1) / 3)
    assert no_lrn["paper_top1_delta"] == 1.4 and no_lrn["paper_top5_delta"] == 1.2


def test_a_change_within_the_seed_spread_is_not_resolved(rows):
    assert rows["no_lrn"]["top1_resolved"]
    no_overlap = rows["no_overlap"]  # +0.5, -0.5, +1.0 points: mean 0.33, spread 0.76
    assert no_overlap["top1_delta"] == pytest.approx(1 / 3)
    assert no_overlap["top1_delta_spread"] == pytest.approx(0.7638, abs=1e-4)
    assert not no_overlap["top1_resolved"]
    tanh = rows["tanh"]  # one seed: no spread to compare with
    assert tanh["top1_delta"] == pytest.approx(10.0) and math.isnan(tanh["top1_delta_spread"])
    assert not tanh["top1_resolved"]
    assert not rows["baseline"]["top1_resolved"]


def test_markdown_marks_unresolved_changes_and_shows_the_paper(rows):
    lines = {line.split("|")[1].strip(): line for line in to_markdown(list(rows.values())).splitlines()
             if line.startswith("| ") and not line.startswith("| variant")}
    assert "+3.00 ± 1.00 |" in lines["no_lrn"] and "(n.r.)" not in lines["no_lrn"].split("|")[4]
    assert "+0.33 ± 0.76 (n.r.)" in lines["no_overlap"]
    assert "+10.00 (n.r.)" in lines["tanh"]
    assert "+1.40" in lines["no_lrn"] and "+1.20" in lines["no_lrn"]


def test_tables_are_written_as_markdown_csv_and_json(rows, tmp_path):
    paths = write_tables(list(rows.values()), tmp_path)
    data = json.loads(paths["json"].read_text())
    assert [r["variant"] for r in data] == ["baseline", "no_lrn", "no_overlap", "tanh"]
    assert data[3]["top1_delta_spread"] is None  # NaN is not JSON
    with paths["csv"].open() as f:
        records = list(csv.DictReader(f))
    assert float(records[1]["top1_delta"]) == pytest.approx(3.0)
    assert paths["md"].read_text().startswith("| variant |")
