"""The Lightning CLI: `alexnet-lightning fit|validate|test [--config quick] [--config no_lrn] [--model.lrn false ...]`.

Every subcommand starts from the paper's run, the packaged `configs/paper.yaml`; `--config` adds a packaged config by
name (`named_configs`: the presets, the ablations, the strategies, `gpu`) or a file.

A preempted or stopped `fit` resumes with `--ckpt_path last`: the newest intact checkpoint in the checkpoint folder,
`<default_root_dir>/checkpoints` unless the config names another (`last.ckpt` unless it is damaged).

`--config wandb` logs to Weights & Biases (configs/wandb.yaml): offline without an account, and offline with one
warning when W&B cannot be reached, as the study's cells do; the resolved config is logged with the run.
Lightning's `predict` is left out: `alexnet-classify CHECKPOINT PATH...` classifies images.
"""

import re
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import AsyncCheckpointIO, CheckpointIO

from alexnet_lightning import CONFIGS
from alexnet_lightning.data.datamodule import ImageNetDataModule
from alexnet_lightning.model.module import AlexNetModule
from alexnet_lightning.progress import LogLines
from alexnet_lightning.signals import Sigterm
from alexnet_lightning.training.allocator import keep_freed_memory
from alexnet_lightning.training.checkpoints import AtomicCheckpointIO, check_writable, resume_checkpoint
from alexnet_lightning.training.diagnostics import Diagnostics
from alexnet_lightning.training.quiet import ignore_args_warning, quiet_libraries
from alexnet_lightning.training.stops import training_callbacks

DESCRIPTION = (
    "A paper-faithful AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) in PyTorch Lightning: train, validate and "
    "test the paper's network (ten-crop test) on ImageNet or the built-in stand-in, with a switch for every ablation. "
    "Every subcommand starts from the paper's configuration; --config NAME adds a packaged config ({names}) or a "
    "file, e.g. `alexnet-lightning fit --config quick --config no_lrn`."
)
PAPER = CONFIGS / "paper.yaml"


def named_configs() -> dict[str, Path]:
    """The packaged configs by name: paper, gpu, the presets, the ablations and the strategies (the W&B sweep file
    is no training config)."""
    folders = (CONFIGS, CONFIGS / "presets", CONFIGS / "strategy", CONFIGS / "ablations")
    return {path.stem: path for folder in folders for path in sorted(folder.glob("*.yaml"))
            if path.name != "sweep.yaml"}


def config_file(value: str) -> str:
    """A `--config` value as a file: a file that exists as given, else a packaged config's name. A word or a
    `.yaml` path that is neither is an error listing the names; anything else (jsonargparse takes a YAML string
    too) is left to jsonargparse."""
    names = named_configs()
    if Path(value).is_file():
        return value
    if value in names:
        return str(names[value])
    if re.fullmatch(r"[\w.-]+", value) or value.endswith((".yaml", ".yml")):
        raise ValueError(f"{value!r} is neither a file nor a packaged config; the packaged configs: "
                         f"{', '.join(names)}")
    return value


def with_config_files(args: list[str]) -> list[str]:
    """The arguments with each `--config`/`-c` value made a file (config_file)."""
    out, after_flag = [], False
    for arg in args:
        if after_flag:
            arg = config_file(arg)
        elif arg.startswith("--config="):
            arg = "--config=" + config_file(arg.removeprefix("--config="))
        out.append(arg)
        after_flag = arg in ("--config", "-c")
    return out


class SaveConfigToLoggers(SaveConfigCallback):
    """Lightning's config.yaml in the log folder, and the resolved config in the W&B run's config (as ``cli``)."""

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if wandb_loggers:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            for logger in wandb_loggers:
                logger.experiment.config.update({"cli": config}, allow_val_change=True)


class AlexNetCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test; not predict (``alexnet-classify`` classifies images)."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name != "predict"}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One place for each fact: the data decides the class count, the network its crop size.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("model.input_size", "data.crop_size")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # Checkpoints are written atomically, unless the config brings its own CheckpointIO.
        config = self._get(self.config_init, "trainer", default={})
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        own_io = getattr(config.get("strategy"), "_checkpoint_io", None) or any(
            isinstance(p, CheckpointIO) for p in plugins
        )
        if not own_io:
            # Written in a thread from a copy taken at the step (on the GPU: a device copy, no wait), so that a
            # checkpoint of ~490 MB (weights and momentum) does not stop training while it is written and fsynced.
            kwargs["plugins"] = [*plugins, AsyncCheckpointIO(AtomicCheckpointIO())]
        configured = any(isinstance(c, ProgressBar) for c in config.get("callbacks") or [])  # before Lightning adds its
        trainer = super().instantiate_trainer(**kwargs)
        bar = trainer.progress_bar_callback
        if bar is not None and not configured:
            # A log file: lines, not bar updates. A terminal: the bar redrawn every 25 steps, since each redraw reads
            # the logged loss on the host, a wait for the GPU.
            mine = TQDMProgressBar(refresh_rate=25) if sys.stderr.isatty() else LogLines()
            trainer.callbacks[trainer.callbacks.index(bar)] = mine
        for callback in trainer.checkpoint_callbacks:  # one folder for all attempts, where `--ckpt_path last` looks
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
        return trainer

    def before_fit(self) -> None:
        check_writable(self.trainer)
        self._resolve_last()

    def before_validate(self) -> None:
        self._resolve_last()

    def before_test(self) -> None:
        self._resolve_last()

    def _resolve_last(self) -> None:
        """`--ckpt_path last`: the newest intact checkpoint of the checkpoint folders, a damaged newer one passed over
        with a warning (Lightning's own `last` would take the newest `last*.ckpt`, damaged or not)."""
        config = self.config_init[self.subcommand]
        folders = {Path(c.dirpath) for c in self.trainer.checkpoint_callbacks
                   if getattr(c, "dirpath", None) and "://" not in str(c.dirpath)}
        if config.get("ckpt_path") == "last" and (found := resume_checkpoint(*folders)):
            config["ckpt_path"] = str(found)


def main(args: list[str] | None = None, run: bool = True) -> AlexNetCLI:
    """The CLI on `args` (default: the command line's); `--config` values may name packaged configs."""
    if (sys.argv[1:] if args is None else args)[:1] == ["predict"]:
        print("alexnet-lightning: error: there is no predict subcommand: `alexnet-classify CHECKPOINT PATH...` "
              "classifies images from a checkpoint", file=sys.stderr)
        raise SystemExit(2)
    try:
        if args is None:  # the command line, rewritten in place: Lightning warns of `args` beside a command line
            sys.argv[1:] = with_config_files(sys.argv[1:])
        else:
            args = with_config_files(args)
    except ValueError as err:
        print(f"alexnet-lightning: error: --config {err}", file=sys.stderr)
        raise SystemExit(2) from None
    keep_freed_memory()
    quiet_libraries()
    with warnings.catch_warnings():
        if args is not None:
            ignore_args_warning()
        return AlexNetCLI(**cli_kwargs(run), args=args, run=run)


def cli_kwargs(run: bool, **parser_kwargs: Any) -> dict[str, Any]:
    paper = {"default_config_files": [str(PAPER)], **parser_kwargs}  # the paper's run unless a --config says otherwise
    per_parser = {name: paper for name in AlexNetCLI.subcommands()} if run else paper
    return {
        "model_class": AlexNetModule, "datamodule_class": ImageNetDataModule, "auto_configure_optimizers": False,
        "parser_kwargs": {"description": DESCRIPTION.format(names=", ".join(named_configs())), **per_parser},
        "save_config_callback": SaveConfigToLoggers, "save_config_kwargs": {"overwrite": True},
        "trainer_defaults": {"callbacks": [*training_callbacks(), Diagnostics()]},
    }


class _Parsed(Exception):
    """Carries the parsed config out of ConfigParse's constructor."""


class ConfigParse(AlexNetCLI):
    """The CLI's parse of its arguments, stopped before it seeds or instantiates anything."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        raise _Parsed(yaml.safe_load(parser.dump(self.config, skip_none=False)))


def resolved_config(configs: list[Path]) -> dict[str, Any]:
    """The config that `alexnet-lightning` resolves from these config files (after the paper's), as a dict: the one
    merger of configs (a later file's `class_path` replaces the class and its arguments; a list replaces a list).
    A config it cannot read raises jsonargparse's ArgumentError."""
    with warnings.catch_warnings():
        ignore_args_warning()
        try:
            ConfigParse(**cli_kwargs(False, exit_on_error=False), args=with_config_files(
                [a for path in configs for a in ("--config", str(path))]), run=False)
        except _Parsed as parsed:
            return parsed.args[0]
    raise AssertionError("LightningCLI returned without parsing its arguments")


def console() -> None:
    """The `alexnet-lightning` command (its exit status must not be the CLI object that main returns): 143 after a
    SIGTERM, also one that came too late to stop the stage (say, in its last batch)."""
    with Sigterm.recorded():
        main()
        Sigterm.exit_if_received("the command had finished")


if __name__ == "__main__":
    console()
