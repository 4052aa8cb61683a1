import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from alexnet_lightning.data import standin
from alexnet_lightning.training.cli import main, named_configs
from tests.conftest import PYPROJECT, REPO

QUICK = ["--config", "paper", "--config", "quick"]  # packaged configs by name


@pytest.mark.slow
def test_fit_a_few_steps_then_test_from_the_checkpoint(tiny_imagefolder, tiny_overlay, tmp_path):
    common = [*QUICK, "--config", str(tiny_overlay), "--data.root", str(tiny_imagefolder),
              "--trainer.default_root_dir", str(tmp_path)]
    fit = main(["fit", *common, "--trainer.max_steps", "3"])
    assert fit.trainer.global_step == 3
    [checkpoint] = tmp_path.glob("**/checkpoints/last.ckpt")
    assert fit.model.network.classifier.fc8.out_features == 10  # linked from the data
    assert fit.datamodule.hparams.crop_size == 67  # linked from the network

    test = main(["test", *common, "--ckpt_path", str(checkpoint)])
    metrics = test.trainer.callback_metrics
    assert 0 <= float(metrics["test/top1_error"]) <= 1 and 0 <= float(metrics["test/top5_error"]) <= 1
    saved = torch.load(checkpoint, weights_only=False)
    conv1 = saved["state_dict"]["network.features.conv1.weight"]
    torch.testing.assert_close(test.model.network.features.conv1.weight, conv1)
    assert saved["readings"] == {"lrn_formula": "cuda-convnet2", "lighting_formula": "cuda-convnet2",
                                 "lighting_rescale": False}

    # A checkpoint from before the readings were recorded is refused, and tested with the readings it names.
    del saved["readings"], saved["hyper_parameters"]["lrn_formula"]  # as the project wrote them before
    old = tmp_path / "old.ckpt"
    torch.save(saved, old)
    with pytest.raises(ValueError, match=f"checkpoint {old} was trained with lrn_formula='printed', "
                                         "lighting_formula='printed'"):
        main(["test", *common, "--ckpt_path", str(old)])
    main(["test", *common, "--ckpt_path", str(old), "--model.lrn_formula", "printed",
          "--data.lighting_formula", "printed"])


def test_paper_config_resolves_to_the_paper_network(tmp_path):
    cli = main([*QUICK[:2], "--trainer.default_root_dir", str(tmp_path)], run=False)
    layers = cli.model.network.learned_layers()
    classes = standin.NUM_CLASSES  # fc8 has the built-in set's classes
    assert sum(p.numel() for p in cli.model.parameters()) == 60_965_224 - 4_097_000 + 4096 * classes + classes
    assert layers["conv1"].out_channels == 96 and layers["conv2"].groups == 2
    assert cli.datamodule.hparams.batch_size == 128 and cli.trainer.max_epochs == 90


def test_the_quick_preset_logs_the_training_loss_within_each_epoch(tmp_path):
    cli = main(["--config", "quick", "--trainer.default_root_dir", str(tmp_path)], run=False)
    steps = standin.NUM_CLASSES * standin.TRAIN_PER_CLASS // cli.datamodule.hparams.batch_size  # the last one dropped
    assert cli.trainer.log_every_n_steps <= steps  # else Lightning warns at every fit that the epoch is too short


def test_the_gpu_config_adds_the_speed_options_to_the_paper_run(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored afterwards
    cli = main([*QUICK[:2], "--config", "gpu", "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.trainer.precision == "bf16-mixed" and torch.backends.cudnn.benchmark
    assert cli.model.hparams.channels_last and cli.model.hparams.compile
    assert not cli.trainer.validate_loop.inference_mode  # pytorch/pytorch#135892
    assert cli.model.hparams.lr == 0.01 and cli.trainer.max_epochs == 90  # the paper's run otherwise


@pytest.mark.parametrize(
    "args, named",
    [(["--model.bogus", "1"], "bogus"),
     (["--model.drop_layer", "conv6"], "drop_layer"),
     (["--model.towers", "3"], "towers"),
     (["--data.mean", "median"], "mean"),
     (["--model.lr", "fast"], "lr")],
)
def test_bad_options_fail_before_training_naming_the_option(args, named, capsys, no_data_reads):
    with pytest.raises(SystemExit):
        main(["fit", *QUICK, *args])
    assert named in capsys.readouterr().err


@pytest.mark.parametrize("text, named", [("model:\n  lrm: false\n", "lrm"), ("data:\n  batch_size: x\n", "batch_size")])
def test_unknown_key_or_wrong_type_in_a_config_file_is_named(text, named, tmp_path, capsys, no_data_reads):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SystemExit):
        main(["fit", *QUICK, "--config", str(bad)])
    assert named in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, error, message",
    [(["--model.width", "0"], ValueError, r"width must be in \(0, 1\], got 0"),
     (["--model.input_size", "32"], ValueError, "input_size=32 is too small"),
     (["--data.root", "/nonexistent/imagenet"], FileNotFoundError, "Data root /nonexistent/imagenet does not exist")],
)
def test_impossible_values_fail_before_any_data_is_read_naming_the_option(args, error, message, no_data_reads):
    with pytest.raises(error, match=message):
        main(["fit", *QUICK, *args])


@pytest.mark.slow
def test_without_a_terminal_progress_is_one_line_per_epoch(tiny_imagefolder, tiny_overlay, tmp_path, capfd):
    from alexnet_lightning.progress import LogLines

    # Without the statistics that other tests cached beside the data: computed here, with a line.
    data = shutil.copytree(tiny_imagefolder, tmp_path / "data", ignore=shutil.ignore_patterns("alexnet_stats_*"))
    common = [*QUICK, "--config", str(tiny_overlay), "--data.root", str(data),
              "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "true"]
    fit = main(["fit", *common, "--trainer.max_epochs", "2"])  # pytest's captured output is not a terminal
    assert isinstance(fit.trainer.progress_bar_callback, LogLines)
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split(" done")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert re.search(r"Training-set statistics: (\d+)/\1 done in", err)  # other progress: a line at the end
    assert all("train/top1_error" in line and "val/top1_error" in line for line in lines)
    assert "\r" not in out + err and "it/s" not in out + err  # no bar updates
    # Within a long epoch, a line every `every_s` seconds (here: every step).
    fit.trainer.progress_bar_callback.every_s = 0
    fit.trainer.fit_loop.max_epochs = 3
    fit.trainer.fit(fit.model, fit.datamodule)
    assert [line.split(" (")[0] for line in capfd.readouterr().err.splitlines() if " step " in line] == [
        f"epoch 3 step {k}/4" for k in range(1, 5)]


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
def test_without_a_config_every_subcommand_runs_the_papers_configuration(subcommand, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the packaged config is found from any folder
    with pytest.raises(SystemExit):
        main([subcommand, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert (config["model"]["lr"], config["model"]["momentum"], config["model"]["weight_decay"]) == (0.01, 0.9, 5e-4)
    assert config["trainer"]["max_epochs"] == 90 and config["data"]["batch_size"] == 128
    with pytest.raises(SystemExit):  # a preset given later overrides it
        main([subcommand, "--config", "quick", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    model = config["model"]
    assert config["trainer"]["max_epochs"] == 14 and model["width"] == 0.1875 and model["lr"] == 0.03


def test_packaged_configs_by_name_or_by_path_and_the_paper_given_twice_adds_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    named = main(["--config", "quick", "--config", "no_lrn", "--trainer.logger", "false"], run=False)
    assert named.model.hparams.lrn is False and named.model.hparams.width == 0.1875 and named.trainer.max_epochs == 14
    assert named.model.hparams.momentum == 0.9 and named.model.hparams.lr_factor == 0.1  # the paper's, underneath
    overlay = tmp_path / "mine.yaml"
    overlay.write_text("model:\n  dropout: 0.0\n")
    both = main([*QUICK, "--config", "towers", "--config", "mine.yaml", "--trainer.logger", "false"], run=False)
    assert both.model.hparams.dropout == 0.0 and both.trainer.strategy.__class__.__name__ == "TowerParallelStrategy"
    kinds = [type(c).__name__ for c in both.trainer.checkpoint_callbacks]
    assert sorted(kinds) == ["LastCheckpoint", "ModelCheckpoint"]  # not twice: the paper's file is the default too


@pytest.mark.parametrize("value", ["quik", "configs/paper.yaml"])
def test_a_config_that_is_neither_a_file_nor_a_packaged_name_lists_the_names(value, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", value])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"--config '{value}' is neither a file nor a packaged config" in err
    assert all(name in err for name in ("paper", "gpu", "quick", "towers", "no_lrn", "tanh")) and "sweep" not in err


def test_every_packaged_config_is_package_data():
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]
    package = REPO / "alexnet_lightning"
    files = [p.relative_to(package) for p in (package / "configs").rglob("*") if p.is_file()]
    assert len(files) >= 12 and set(named_configs().values()) <= {package / f for f in files}
    for file in files:  # a pattern matches from the right, so one of as many parts matches exactly
        assert any(file.match(p) and len(file.parts) == len(Path(p).parts) for p in patterns["alexnet_lightning"]), file
