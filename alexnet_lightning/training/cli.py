"""The Lightning CLI: `alexnet-lightning fit|validate|test [--config quick] [--config no_lrn] [--model.lrn false ...]`.

Every subcommand starts from the paper's run, the packaged `configs/paper.yaml`; `--config` adds a packaged config by
name (`named_configs`: the presets, the ablations, the strategies, `gpu`) or a file.

A preempted or stopped `fit` resumes with `--ckpt_path last`: the newest intact checkpoint in the checkpoint folder,
`<default_root_dir>/checkpoints` unless the config names another (`last.ckpt` unless it is damaged).
"""

import re
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from alexnet_lightning import CONFIGS
from alexnet_lightning.data.datamodule import ImageNetDataModule
from alexnet_lightning.model.module import AlexNetModule
from alexnet_lightning.progress import LogLines
from alexnet_lightning.signals import Sigterm
from alexnet_lightning.training.allocator import keep_freed_memory
from alexnet_lightning.training.checkpoints import AtomicCheckpointIO, check_writable, resume_checkpoint
from alexnet_lightning.training.diagnostics import Diagnostics
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


class AlexNetCLI(LightningCLI):
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
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        configured = any(isinstance(c, ProgressBar) for c in config.get("callbacks") or [])  # before Lightning adds its
        trainer = super().instantiate_trainer(**kwargs)
        bar = trainer.progress_bar_callback
        if bar is not None and not configured and not sys.stderr.isatty():  # a log file: lines, not bar updates
            trainer.callbacks[trainer.callbacks.index(bar)] = LogLines()
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
    try:
        if args is None:  # the command line, rewritten in place: Lightning warns of `args` beside a command line
            sys.argv[1:] = with_config_files(sys.argv[1:])
        else:
            args = with_config_files(args)
    except ValueError as err:
        print(f"alexnet-lightning: error: --config {err}", file=sys.stderr)
        raise SystemExit(2) from None
    keep_freed_memory()
    paper = {"default_config_files": [str(PAPER)]}  # the paper's run unless a --config says otherwise
    per_parser = {name: paper for name in AlexNetCLI.subcommands()} if run else paper
    return AlexNetCLI(
        AlexNetModule, ImageNetDataModule, args=args, run=run, auto_configure_optimizers=False,
        parser_kwargs={"description": DESCRIPTION.format(names=", ".join(named_configs())), **per_parser},
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [*training_callbacks(), Diagnostics()]},
    )


def console() -> None:
    """The `alexnet-lightning` command (its exit status must not be the CLI object that main returns): 143 after a
    SIGTERM, also one that came too late to stop the stage (say, in its last batch)."""
    with Sigterm.recorded():
        main()
        Sigterm.exit_if_received("the command had finished")


if __name__ == "__main__":
    console()
