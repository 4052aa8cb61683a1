"""Every command's --help renders (argparse formats help texts: a bare % in one crashes it), and describes itself."""

import importlib
import runpy
import sys

import pytest

from tests.conftest import PYPROJECT, REPO

SCRIPTS = {
    "ablate": (REPO / "experiments" / "ablate.py", "ablation study"),
    "compare": (REPO / "experiments" / "compare.py", "ablation table, rebuilt"),
    "benchmark": (REPO / "experiments" / "benchmark.py", "Throughput"),
    "benchmark_model_parallel": (REPO / "experiments" / "benchmark_model_parallel.py", "two-tower layout"),
}
DATA_COMMANDS = {  # python -m alexnet_lightning.data [command] --help
    "": "builtin,statistics,prepare",
    "prepare": "resize once",
    "statistics": "mean image",
    "builtin": "stand-in",
}


def help_text(run, capsys, monkeypatch, argv: list[str]) -> str:
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        run()
    assert exited.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_renders_its_help(name, capsys, monkeypatch):
    path, words = SCRIPTS[name]
    monkeypatch.syspath_prepend(str(path.parent))
    out = help_text(lambda: runpy.run_path(str(path), run_name="__main__"), capsys, monkeypatch, [str(path), "--help"])
    assert words in out and "usage:" in out


@pytest.mark.parametrize("command", DATA_COMMANDS)
def test_every_data_command_renders_its_help(command, capsys, monkeypatch):
    argv = ["alexnet_lightning.data", *([command] if command else []), "--help"]
    out = help_text(lambda: runpy.run_module("alexnet_lightning.data", run_name="__main__"), capsys, monkeypatch, argv)
    assert DATA_COMMANDS[command] in out and "usage: python -m alexnet_lightning.data" in out


CONSOLE_SCRIPTS = PYPROJECT["project"]["scripts"]
COMMANDS = {"alexnet-lightning": "paper-faithful AlexNet", "alexnet-ablate": "ablation study",
            "alexnet-plan": "How many seeds does an ablation study need",
            "alexnet-compare": "ablation table",
            "alexnet-classify": "checkpoint or export alone", "alexnet-export": "safetensors",
            "alexnet-figures": "Figures 3 and 4", "alexnet-check": "self-check"}


@pytest.mark.parametrize("name", CONSOLE_SCRIPTS)
def test_every_console_command_renders_its_help(name, capsys, monkeypatch):
    module, function = CONSOLE_SCRIPTS[name].split(":")  # what the installed command calls
    out = help_text(getattr(importlib.import_module(module), function), capsys, monkeypatch, [name, "--help"])
    assert f"usage: {name}" in out and COMMANDS[name] in out


@pytest.mark.parametrize("subcommand", [[], ["fit"], ["validate"], ["test"]])
def test_the_cli_and_its_subcommands_render_their_help_and_describe_the_project(subcommand, capsys, monkeypatch):
    from alexnet_lightning.training.cli import main

    out = help_text(lambda: main([*subcommand, "--help"]), capsys, monkeypatch, ["alexnet-lightning"])
    assert "usage: alexnet-lightning" in out
    if not subcommand:
        assert "paper-faithful AlexNet" in out and "Lightning Trainer command line tool" not in out
    else:
        assert "--model.lrn_formula" in out and "--data.lighting_formula" in out


def test_predict_is_not_offered_and_names_the_command_that_classifies(capsys, monkeypatch):
    from alexnet_lightning.training.cli import main

    out = help_text(lambda: main(["--help"]), capsys, monkeypatch, ["alexnet-lightning"])
    assert "{fit,validate,test}" in out and "predict" not in out.split("subcommands:")[-1]
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--ckpt_path", "x.ckpt"])
    assert exited.value.code == 2 and "alexnet-classify CHECKPOINT PATH" in capsys.readouterr().err


def test_the_cache_follows_xdg_unless_its_own_variable_is_set(monkeypatch, tmp_path):
    from alexnet_lightning.data.sources import cache_dir

    monkeypatch.delenv("ALEXNET_LIGHTNING_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "alexnet-lightning"
    monkeypatch.setenv("ALEXNET_LIGHTNING_CACHE", str(tmp_path / "own"))
    assert cache_dir() == tmp_path / "own"
    monkeypatch.delenv("ALEXNET_LIGHTNING_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "alexnet-lightning"
