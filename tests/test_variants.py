import json
from pathlib import Path

import pytest
import yaml

from alexnet_lightning.model.network import AlexNet
from alexnet_lightning.study import runner
from alexnet_lightning.study.identity import base_configs, open_study, study_identity
from alexnet_lightning.study.variants import ABLATIONS, VARIANTS, generated_files
from alexnet_lightning.training.cli import main


def test_committed_overlays_and_sweep_are_generated_from_the_registry():
    for path, text in generated_files().items():
        assert path.read_text() == text, f"{path} is stale: run python -m alexnet_lightning.study.variants"


def test_every_model_override_is_an_argument_of_the_network():
    network_args = set(AlexNet.__init__.__code__.co_varnames)
    for variant in VARIANTS.values():
        assert set(variant.overrides.get("model", {})) <= network_args, variant.name
        assert set(variant.overrides) <= {"model", "data"}, variant.name


def test_registry_holds_the_paper_table():
    assert ABLATIONS == ["no_lrn", "no_overlap", "no_split", "no_pca", "no_dropout", "drop_layer", "tanh"]
    assert (VARIANTS["no_lrn"].paper_top1, VARIANTS["no_lrn"].paper_top5) == (1.4, 1.2)
    assert (VARIANTS["no_split"].paper_top1, VARIANTS["no_split"].paper_top5) == (1.7, 1.2)
    assert yaml.safe_load(generated_files()[next(iter(generated_files()))]) == VARIANTS["no_lrn"].overrides


def write(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_the_study_resolves_its_config_as_the_cli_does(study_args, tmp_path, capsys):
    # a later file's class_path replaces the class and its arguments; its list of callbacks replaces the list
    csv = write(tmp_path / "csv.yaml", {"trainer": {"logger": {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": "x", "flush_logs_every_n_steps": 7}}}})
    tensorboard = write(tmp_path / "tb.yaml", {"trainer": {
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "y"}},
        "callbacks": [{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}]}})
    args = runner.parse_args([*study_args, "--config", csv, "--config", tensorboard])
    config = study_identity(args)["base_config"]
    with pytest.raises(SystemExit):
        main(["fit", *(a for p in base_configs(args) for a in ("--config", str(p))), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {k: config[k] for k in ("trainer", "model", "data")} == {k: printed[k] for k in ("trainer", "model", "data")}
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == "y"
    assert "flush_logs_every_n_steps" not in config["trainer"]["logger"]["init_args"]
    monitor = "lightning.pytorch.callbacks.LearningRateMonitor"
    assert [c["class_path"] for c in config["trainer"]["callbacks"]] == [monitor]


def test_a_config_that_restates_a_default_is_the_same_study(study_args, tmp_path):
    open_study(runner.parse_args(study_args))
    restated = write(tmp_path / "restated.yaml", {"model": {"dropout": 0.5}, "data": {"lighting_std": 0.1}})
    open_study(runner.parse_args([*study_args, "--config", restated]))  # the same config: not refused
    changed = write(tmp_path / "changed.yaml", {"model": {"dropout": 0.4}})
    with pytest.raises(SystemExit, match="differs in: base_config"):
        open_study(runner.parse_args([*study_args, "--config", changed]))


def test_a_study_json_holding_its_files_merged_is_the_same_study(study_args):
    # main at 60d803b recorded the merge of the preset's files, not the resolved config
    args = runner.parse_args(study_args)
    merged: dict = {}
    for path in base_configs(args):
        for section, values in (yaml.safe_load(path.read_text()) or {}).items():
            merged[section] = {**merged.get(section, {}), **values} if isinstance(values, dict) else values
    study_file = args.results / args.study / "study.json"
    study_file.parent.mkdir(parents=True)
    study_file.write_text(json.dumps(study_identity(args) | {"base_config": merged}))
    open_study(args)


def test_a_recorded_config_this_version_cannot_read_is_a_clear_error(study_args):
    args = runner.parse_args(study_args)
    study_file = args.results / args.study / "study.json"
    study_file.parent.mkdir(parents=True)
    study_file.write_text(json.dumps(study_identity(args) | {"base_config": {"model": {"no_such_option": 1}}}))
    with pytest.raises(SystemExit, match=r"study.json is not one this version reads .*no_such_option"):
        open_study(args)
