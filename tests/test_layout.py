"""What the flat layout (before the package was grouped by purpose) wrote still loads: the class paths in its
configs and study.json files, and the module names of the old layout."""

import importlib
import json

import yaml

from alexnet_lightning import CONFIGS, MOVED, current_name
from alexnet_lightning.study import identity, runner
from alexnet_lightning.training.checkpoints import LastCheckpoint
from alexnet_lightning.training.cli import main


def old_names(value):
    """A config as the flat layout wrote it: each class path under its module's old name."""
    if isinstance(value, dict):
        return {k: old_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [old_names(v) for v in value]
    if isinstance(value, str):
        for old, new in MOVED.items():
            if value.startswith(new + "."):
                return old + value[len(new):]
    return value


def test_every_old_module_name_imports_as_its_new_module():
    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new)
    assert current_name("alexnet_lightning.reliability.LastCheckpoint") == (
        "alexnet_lightning.training.checkpoints.LastCheckpoint")
    assert current_name("alexnet_lightning.data.datamodule.ImageNetDataModule") == (
        "alexnet_lightning.data.datamodule.ImageNetDataModule")


def test_a_config_with_the_old_class_paths_runs(tmp_path, tiny_overlay):
    paper = yaml.safe_load((CONFIGS / "paper.yaml").read_text())
    old = old_names(paper)
    assert "alexnet_lightning.reliability.LastCheckpoint" in json.dumps(old)  # the name main at 60d803b wrote
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    cli = main(["--config", str(tmp_path / "old.yaml"), "--config", str(tiny_overlay)], run=False)
    assert any(type(c) is LastCheckpoint for c in cli.trainer.callbacks)


def test_a_study_written_with_the_old_class_paths_is_the_same_study(study_args):
    args = runner.parse_args(study_args)
    recorded = identity.study_identity(args)
    study_file = args.results / args.study / "study.json"
    study_file.parent.mkdir(parents=True)
    study_file.write_text(json.dumps(old_names(recorded)))
    assert "alexnet_lightning.reliability" in study_file.read_text()
    identity.open_study(args)  # refused, as another config, without the old names' translation
    study_file.write_text(json.dumps(old_names(recorded) | {"epochs": 99}))
    try:
        identity.open_study(args)
    except SystemExit as err:
        assert "differs in: epochs" in str(err)
    else:
        raise AssertionError("a study of other epochs was accepted")
