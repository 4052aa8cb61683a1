"""alexnet-compare: the table from a study folder's own files, or from W&B's public API (faked here), and clear
errors where neither can be read."""

import json
import sys
import types

import pytest

from alexnet_lightning.study import compare


def write_cell(study, variant: str, seed: int, top1: float) -> None:
    cell = study / "runs" / variant / f"seed{seed}"
    cell.mkdir(parents=True)
    cell.joinpath("result.json").write_text(json.dumps(
        {"variant": variant, "seed": seed, "val/top1_error": top1, "test/top1_error": top1, "test/top5_error": 0.2}))


def test_the_table_comes_from_the_study_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")  # the folder is there: it is read, W&B is not asked
    monkeypatch.setitem(sys.modules, "wandb", None)
    for seed, (base, no_lrn) in enumerate([(0.40, 0.45), (0.42, 0.44)]):
        write_cell(tmp_path / "s", "baseline", seed, base)
        write_cell(tmp_path / "s", "no_lrn", seed, no_lrn)
    assert compare.main(["--study", "s", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 finished run(s) of study 's' from local" in out and "No per-image outcome files" in out
    assert "| baseline | 2 | 41.00 ± 1.41 |" in out and "+3.50 (no interval)" in out


def test_the_table_comes_from_wandb_runs_of_the_study(tmp_path, capsys, monkeypatch):
    asked = {}

    def runs(project, filters):
        asked.update(project=project, filters=filters)
        run = types.SimpleNamespace
        return [run(state="finished", config={"variant": "baseline", "seed": 0},
                    summary={"test/top1_error": 0.4, "test/top5_error": 0.2, "train/loss": 1.0}),
                run(state="finished", config={"variant": "no_lrn", "seed": 0},
                    summary={"test/top1_error": 0.5, "test/top5_error": 0.3}),
                run(state="crashed", config={"variant": "no_lrn", "seed": 1}, summary={})]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=lambda timeout: types.SimpleNamespace(
        runs=runs)))
    monkeypatch.setenv("WANDB_MODE", "online")
    assert compare.main(["--study", "s", "--results", str(tmp_path), "--project", "me/p"]) == 0
    assert asked == {"project": "me/p", "filters": {"group": "s"}}
    out = capsys.readouterr().out
    assert "2 finished run(s) of study 's' from wandb" in out and "+10.00 (no interval)" in out


def test_wandb_that_cannot_be_read_and_a_missing_folder_are_clear_errors(tmp_path, capsys, monkeypatch):
    def refuse(timeout):
        raise ValueError("Could not find project me/p")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=refuse))
    assert compare.main(["--study", "s", "--results", str(tmp_path), "--source", "wandb", "--project", "me/p"]) == 1
    assert "W&B project 'me/p' could not be read (ValueError: Could not find project me/p)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(["--study", "s", "--results", str(tmp_path), "--source", "local"])
    assert f"no study folder {tmp_path / 's'}" in capsys.readouterr().err
