import json
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from alexnet_lightning.tracking import read_offline_run
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
import ablate  # noqa: E402
import compare  # noqa: E402


@pytest.fixture
def study_args(tiny_imagefolder, tiny_overlay, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return ["--data-root", str(tiny_imagefolder), "--preset", "quick", "--config", str(tiny_overlay),
            "--results", str(tmp_path / "results"), "--study", "tiny"]


@pytest.mark.slow
def test_a_tiny_study_end_to_end(study_args, tmp_path, monkeypatch, capsys):
    assert ablate.main([*study_args, "--no-lrn"]) == 0
    out = capsys.readouterr().out
    assert "| baseline |" in out and "| no_lrn |" in out
    study = tmp_path / "results" / "tiny"
    for name in ("ablation.md", "ablation.csv", "ablation.json", "learning_curves.png", "deltas.png", "study.json"):
        assert (study / name).stat().st_size > 0, name
    rows = json.loads((study / "ablation.json").read_text())
    assert [r["variant"] for r in rows] == ["baseline", "no_lrn"]
    assert rows[1]["paper_top1_delta"] == 1.4

    # The offline W&B runs hold the resolved config and the test metrics.
    for variant, lrn in (("baseline", True), ("no_lrn", False)):
        cell = study / "runs" / variant / "seed0"
        [run_file] = cell.glob("wandb/offline-run-*/run-*.wandb")
        config, metrics = read_offline_run(run_file)
        assert (config["variant"], config["seed"], config["study"]) == (variant, 0, "tiny")
        assert config["resolved_config"]["model"]["lrn"] is lrn
        assert len(config["data_fingerprint"]) == 16
        result = json.loads((cell / "result.json").read_text())
        assert metrics["test/top1_error"] == pytest.approx(result["test/top1_error"])
        assert (cell / "checkpoints" / "last.ckpt").exists()

    # The comparison command rebuilds the same table from the offline runs.
    assert compare.main(["--study", "tiny", "--results", str(tmp_path / "results"), "--source", "local"]) == 0
    assert capsys.readouterr().out.split("\n", 2)[2].strip() == (study / "ablation.md").read_text().strip()

    # Re-running trains nothing new.
    monkeypatch.setattr(ablate, "train_cell", lambda *a, **k: pytest.fail("a finished cell was retrained"))
    assert ablate.main([*study_args, "--no-lrn"]) == 0
    assert capsys.readouterr().out.count("finished earlier: skipped") == 2

    # The report notebook executes against the study.
    notebook = nbformat.read(REPO / "notebooks" / "ablation_report.ipynb", as_version=4)
    monkeypatch.setenv("ABLATION_STUDY", str(study))
    NotebookClient(notebook, timeout=120, resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("no_lrn" in o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2


def test_an_interrupted_cell_resumes_from_its_checkpoint(study_args, tmp_path, monkeypatch):
    study_dir, identity = ablate.open_study(ablate.parse_args(study_args))
    cell = study_dir / "runs" / "baseline" / "seed0" / "checkpoints"
    cell.mkdir(parents=True)
    torch.save({"state_dict": {}}, cell / "last.ckpt")
    seen = {}

    class Stop(Exception):
        pass

    def fake_main(args, run):
        seen["configs"] = args
        raise Stop

    monkeypatch.setattr(ablate.alexnet_cli, "main", fake_main)
    with pytest.raises(Stop):
        ablate.run_cell(ablate.parse_args(study_args), study_dir, identity, "baseline", 0)
    cell_yaml = Path(seen["configs"][-1]).read_text()
    assert "attempt00" in cell_yaml  # the first attempt's logs are kept; a resumed attempt writes attempt01


@pytest.mark.parametrize(
    "argv, message",
    [(["--no-lrm"], "unrecognized arguments: --no-lrm"),
     (["--variant", "no_lrm"], "unknown variant 'no_lrm'"),
     (["--data-root", "/nonexistent/imagenet"], "--data-root /nonexistent/imagenet does not exist"),
     (["--seeds", "0"], "--seeds must be at least 1"),
     (["--no-split", "--strategy", "towers"], "--strategy towers needs two towers; no_split has one")],
)
def test_bad_input_fails_before_training(argv, message, capsys):
    with pytest.raises(SystemExit):
        ablate.parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_study_folder_of_another_config_is_refused(study_args):
    ablate.open_study(ablate.parse_args(study_args))
    with pytest.raises(SystemExit, match="differs in: epochs"):
        ablate.open_study(ablate.parse_args([*study_args, "--epochs", "3"]))


def test_a_study_folder_from_before_the_readings_were_recorded_is_refused(study_args):
    study_dir, identity = ablate.open_study(ablate.parse_args(study_args))
    assert identity["readings"] == {"lrn_formula": "cuda-convnet2", "lighting_formula": "cuda-convnet2",
                                    "lighting_rescale": False}
    study_file = study_dir / "study.json"
    old = json.loads(study_file.read_text())
    del old["readings"]  # as a study written before this version recorded them
    study_file.write_text(json.dumps(old))
    with pytest.raises(SystemExit, match=r"differs in: readings\). Its LRN and PCA lighting were computed with "
                                         r"\{'lrn_formula': 'printed'"):
        ablate.open_study(ablate.parse_args(study_args))


def test_cells_run_baseline_first_and_one_cell_alone():
    args = ablate.parse_args(["--no-lrn", "--tanh", "--seeds", "2"])
    assert ablate.cells(args) == [("baseline", 0), ("no_lrn", 0), ("tanh", 0), ("baseline", 1), ("no_lrn", 1),
                                  ("tanh", 1)]
    assert ablate.cells(ablate.parse_args(["--variant", "no_lrn", "--seed", "3"])) == [("no_lrn", 3)]
    assert len(ablate.cells(ablate.parse_args(["--all"]))) == 8


def test_the_paper_preset_trains_from_prepared_shards(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_LIGHTNING_CACHE", str(tmp_path / "cache"))
    imagenet = tmp_path / "imagenet"
    imagenet.mkdir()
    args = ablate.parse_args(["--data-root", str(imagenet)])
    assert args.preset == "paper" and args.prepared.parent == tmp_path / "cache" / "prepared"
    config = ablate.cell_config(args, tmp_path / "cell", "baseline", 0, 0)
    assert config["data"] == {"root": str(imagenet), "prepared": str(args.prepared)}
    assert ablate.parse_args(["--data-root", str(imagenet), "--prepared", "none"]).prepared is None
    assert ablate.parse_args([]).prepared is None  # the quick preset reads the built-in files
    (imagenet / "prepared.json").write_text("{}")  # a root that is prepared already is read as it is
    assert ablate.parse_args(["--data-root", str(imagenet)]).prepared is None
