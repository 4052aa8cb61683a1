import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient
from torchvision.datasets import ImageFolder

from alexnet_lightning import CONFIGS
from alexnet_lightning.model import outcomes
from alexnet_lightning.study import cell as study_cell
from alexnet_lightning.study import compare, runner
from alexnet_lightning.study.identity import base_configs, open_study
from alexnet_lightning.study.significance import METHOD
from alexnet_lightning.training.diagnostics import TRAIN_ERROR_TARGET
from tests.conftest import REPO


@pytest.mark.slow
def test_a_tiny_two_seed_study_end_to_end(study_args, tiny_imagefolder, tmp_path, monkeypatch, capsys):
    from wandb.sdk import wandb_config

    logged, update = [], wandb_config.Config.update  # what each cell hands W&B's run config (alexnet-compare reads it)
    monkeypatch.setattr(wandb_config.Config, "update", lambda self, d, *a, **k: (logged.append(dict(d)),
                                                                                  update(self, d, *a, **k))[1])
    assert runner.main([*study_args, "--no-lrn", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "| baseline |" in out and "| no_lrn |" in out and METHOD in out
    study = tmp_path / "results" / "tiny"
    for name in ("ablation.md", "ablation.csv", "ablation.json", "learning_curves.png", "deltas.png", "study.json"):
        assert (study / name).stat().st_size > 0, name
    rows = json.loads((study / "ablation.json").read_text())
    assert [r["variant"] for r in rows] == ["baseline", "no_lrn"]
    no_lrn = rows[1]
    assert no_lrn["paper_top1_delta"] == 1.4
    for m in ("top1", "top5"):  # an interval over both seeds and the 30 test images, and a verdict
        assert no_lrn[f"{m}_paired_seeds"] == 2 and no_lrn[f"{m}_images"] == 30
        assert no_lrn[f"{m}_seed_spread_measured"] is True and isinstance(no_lrn[f"{m}_resolved"], bool)
        assert no_lrn[f"{m}_low"] <= no_lrn[f"{m}_delta"] <= no_lrn[f"{m}_high"]
        assert 0 < no_lrn[f"{m}_p"] <= no_lrn[f"{m}_p_holm"] <= 1 and no_lrn[f"{m}_resolvable"] > 0
    assert f"{no_lrn['top1_delta']:+.2f} [{no_lrn['top1_low']:+.2f}, {no_lrn['top1_high']:+.2f}]" in out
    val_order = ImageFolder(str(tiny_imagefolder / "val")).targets

    # Each cell: per-image outcomes in the test set's order, diagnostics in result.json, the CSV log and W&B.
    for variant, lrn in (("baseline", True), ("no_lrn", False)):
        for seed in (0, 1):
            cell = study / "runs" / variant / f"seed{seed}"
            result = json.loads((cell / "result.json").read_text())
            kept = outcomes.read(cell / outcomes.FILE)
            assert kept["label"].tolist() == val_order and kept["test_files"] == 30 and len(kept["test_set"]) == 16
            assert 1 - kept["top1_correct"].mean() == pytest.approx(result["test/top1_error"], abs=1e-6)
            assert 1 - kept["top5_correct"].mean() == pytest.approx(result["test/top5_error"], abs=1e-6)
            assert result["diag/pca_noise_ratio"] == pytest.approx(0.1)  # the authors' lighting: lighting_std
            assert result["diag/train_error_target"] == TRAIN_ERROR_TARGET
            assert "diag/epochs_to_train_error_target" in result and "diag/val_minus_train_top1" in result
            assert ("diag/conv1_lrn_factor_end" in result) is lrn and ("diag/lrn_inert" in result) is lrn
            [metrics_csv] = cell.glob("csv/attempt00/metrics.csv")
            header = metrics_csv.read_text().splitlines()[0].split(",")
            assert "diag/val_minus_train_top1" in header and ("diag/conv2_lrn_factor_start" in header) is lrn
            assert len(list(cell.glob("wandb/offline-run-*/run-*.wandb"))) == 1
            [config] = [c for c in logged if (c.get("variant"), c.get("seed")) == (variant, seed)]
            assert config["study"] == "tiny" and config["resolved_config"]["model"]["lrn"] is lrn
            assert len(config["data_fingerprint"]) == 16
            assert (cell / "checkpoints" / "last.ckpt").exists()

    # The comparison command rebuilds the same table from the study folder.
    assert compare.main(["--study", "tiny", "--results", str(tmp_path / "results"), "--source", "local"]) == 0
    assert capsys.readouterr().out.split("\n", 2)[2].strip() == (study / "ablation.md").read_text().strip()
    # Without the outcome files (W&B holds none) it says that the table has no intervals.
    shutil.copytree(study, tmp_path / "copy" / "tiny", ignore=shutil.ignore_patterns(outcomes.FILE))
    assert compare.main(["--study", "tiny", "--results", str(tmp_path / "copy"), "--source", "local"]) == 0
    out = capsys.readouterr().out
    assert "No per-image outcome files" in out and f"{no_lrn['top1_delta']:+.2f} (no interval)" in out

    # Re-running trains nothing new.
    monkeypatch.setattr(study_cell, "train_cell", lambda *a, **k: pytest.fail("a finished cell was retrained"))
    assert runner.main([*study_args, "--no-lrn", "--seeds", "2"]) == 0
    assert capsys.readouterr().out.count("finished earlier: skipped") == 4

    # The report notebook executes against the study.
    notebook = nbformat.read(REPO / "notebooks" / "ablation_report.ipynb", as_version=4)
    monkeypatch.setenv("ABLATION_STUDY", str(study))
    NotebookClient(notebook, timeout=120, resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("no_lrn" in o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2


def test_an_interrupted_cell_resumes_from_its_checkpoint(study_args, tmp_path, monkeypatch):
    study_dir, identity = open_study(runner.parse_args(study_args))
    cell = study_dir / "runs" / "baseline" / "seed0" / "checkpoints"
    cell.mkdir(parents=True)
    torch.save({"state_dict": {}}, cell / "last.ckpt")
    seen = {}

    class Stop(Exception):
        pass

    def fake_main(args, run):
        seen["configs"] = args
        raise Stop

    monkeypatch.setattr(study_cell.alexnet_cli, "main", fake_main)
    with pytest.raises(Stop):
        study_cell.run_cell(runner.parse_args(study_args), study_dir, identity, "baseline", 0)
    cell_yaml = Path(seen["configs"][-1]).read_text()
    assert "attempt00" in cell_yaml  # the first attempt's logs are kept; a resumed attempt writes attempt01


@pytest.mark.parametrize(
    "argv, message",
    [(["--no-lrm"], "unrecognized arguments: --no-lrm"),
     (["--variant", "no_lrm"], "unknown variant 'no_lrm'"),
     (["--data-root", "/nonexistent/imagenet"], "--data-root /nonexistent/imagenet does not exist"),
     (["--seeds", "0"], "--seeds must be at least 1"),
     (["--train-error-target", "25"], "--train-error-target must be a fraction between 0 and 1, got 25.0"),
     (["--no-split", "--strategy", "towers"], "--strategy towers needs two towers; no_split has one"),
     (["--config", "quik"], "argument --config: 'quik' is neither a file nor a packaged config; the packaged configs: "
                            "gpu, paper, wandb, quick, towers, drop_layer")],
)
def test_bad_input_fails_before_training(argv, message, capsys):
    with pytest.raises(SystemExit):
        runner.parse_args(argv)
    assert message in capsys.readouterr().err


def test_packaged_configs_by_name_and_results_under_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = runner.parse_args(["--config", "gpu", "--strategy", "towers"])
    assert args.results == Path("results") and args.extra_configs == [CONFIGS / "gpu.yaml"]
    assert base_configs(args) == [CONFIGS / "paper.yaml", CONFIGS / "presets" / "quick.yaml",
                                         CONFIGS / "gpu.yaml", CONFIGS / "strategy" / "towers.yaml"]
    (tmp_path / "gpu").write_text("trainer:\n  max_epochs: 2\n")  # a file as given comes before a name
    assert runner.parse_args(["--config", "gpu"]).extra_configs == [Path("gpu")]


def test_a_study_folder_of_another_config_is_refused(study_args):
    open_study(runner.parse_args(study_args))
    with pytest.raises(SystemExit, match="differs in: epochs"):
        open_study(runner.parse_args([*study_args, "--epochs", "3"]))


def test_a_study_folder_from_before_the_readings_were_recorded_is_refused(study_args):
    study_dir, identity = open_study(runner.parse_args(study_args))
    assert identity["readings"] == {"lrn_formula": "cuda-convnet2", "lighting_formula": "cuda-convnet2",
                                    "lighting_rescale": False}
    study_file = study_dir / "study.json"
    old = json.loads(study_file.read_text())
    del old["readings"]  # as a study written before this version recorded them
    study_file.write_text(json.dumps(old))
    with pytest.raises(SystemExit, match=r"differs in: readings\). Its LRN and PCA lighting were computed with "
                                         r"\{'lrn_formula': 'printed'"):
        open_study(runner.parse_args(study_args))


def test_cells_run_baseline_first_and_one_cell_alone():
    args = runner.parse_args(["--no-lrn", "--tanh", "--seeds", "2"])
    assert runner.cells(args) == [("baseline", 0), ("no_lrn", 0), ("tanh", 0), ("baseline", 1), ("no_lrn", 1),
                                  ("tanh", 1)]
    assert runner.cells(runner.parse_args(["--variant", "no_lrn", "--seed", "3"])) == [("no_lrn", 3)]
    assert len(runner.cells(runner.parse_args(["--all", "--seeds", "1"]))) == 8
    assert runner.parse_args([]).seeds == 5 and len(runner.cells(runner.parse_args(["--no-lrn"]))) == 10


def test_the_paper_preset_trains_from_prepared_shards(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_LIGHTNING_CACHE", str(tmp_path / "cache"))
    imagenet = tmp_path / "imagenet"
    imagenet.mkdir()
    args = runner.parse_args(["--data-root", str(imagenet)])
    assert args.preset == "paper" and args.prepared.parent == tmp_path / "cache" / "prepared"
    config = study_cell.cell_config(args, tmp_path / "cell", "baseline", 0, 0)
    assert config["data"] == {"root": str(imagenet), "prepared": str(args.prepared)}
    assert runner.parse_args(["--data-root", str(imagenet), "--prepared", "none"]).prepared is None
    assert runner.parse_args([]).prepared is None  # the quick preset reads the built-in files
    (imagenet / "prepared.json").write_text("{}")  # a root that is prepared already is read as it is
    assert runner.parse_args(["--data-root", str(imagenet)]).prepared is None


@pytest.mark.slow
def test_a_tiny_two_tower_study_trains_on_two_processes_and_the_first_alone_writes_the_study(study_args, tmp_path):
    # A subprocess: Lightning's launcher starts the command again for the second tower. Its own session, so that a
    # process hanging in a collective is killed with the rest on a timeout.
    command = [sys.executable, "-m", "alexnet_lightning.study.runner", *study_args, "--no-lrn", "--strategy", "towers"]
    runner = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        out, err = runner.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(runner.pid, signal.SIGKILL)
        out, err = runner.communicate()
        pytest.fail(f"the two-process study did not end in 600 s:\n{out[-2000:]}\n{err[-3000:]}")
    assert runner.returncode == 0, err[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in err and "Traceback" not in err  # the second tower took part
    assert out.count("study tiny (quick preset)") == 1 and "another process" not in out
    assert out.count("[baseline seed 0] training") == 1 and out.count("[no_lrn seed 0] training") == 1

    study = tmp_path / "results" / "tiny"
    assert {p.name for p in study.iterdir()} == {"study.json", "ablation.md", "ablation.csv", "ablation.json",
                                                 "learning_curves.png", "deltas.png", "runs"}
    assert json.loads((study / "study.json").read_text())["base_config"]["trainer"]["devices"] == 2
    with open(study / "ablation.csv") as file:
        assert [row["variant"] for row in csv.DictReader(file)] == ["baseline", "no_lrn"]
    assert [r["variant"] for r in json.loads((study / "ablation.json").read_text())] == ["baseline", "no_lrn"]
    table = (study / "ablation.md").read_text()
    # The changes, the planner's (top-1 and top-5: no seed spread to plan with at one seed) and the diagnostics.
    assert table.count("| baseline |") == 2 and table.count("| no_lrn |") == 4
    assert not [p for p in study.rglob("*.tmp")]  # no write left half done
    for variant in ("baseline", "no_lrn"):
        cell = study / "runs" / variant / "seed0"
        result = json.loads((cell / "result.json").read_text())
        assert result["variant"] == variant and 0 <= result["test/top1_error"] <= 1
        kept = outcomes.read(cell / outcomes.FILE)
        assert kept["test_files"] == 30 and 1 - kept["top1_correct"].mean() == pytest.approx(result["test/top1_error"])
        assert [p.name for p in (cell / "csv").iterdir()] == ["attempt00"]  # one logger, one W&B run
        assert len(list(cell.glob("wandb/offline-run-*"))) == 1
        assert "TowerParallelStrategy" in (cell / "csv" / "attempt00" / "config.yaml").read_text()
        state = torch.load(cell / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        assert state["network.features.conv1.weight"].shape[0] == 18  # both towers' 9 kernels
