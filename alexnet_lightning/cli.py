"""The Lightning CLI: `alexnet-lightning fit|validate|test --config configs/paper.yaml [--model.lrn false ...]`.

A preempted or stopped `fit` resumes with `--ckpt_path last`: the newest intact checkpoint in the checkpoint folder,
`<default_root_dir>/checkpoints` unless the config names another (`last.ckpt` unless it is damaged).
"""

import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from alexnet_lightning.data.datamodule import ImageNetDataModule
from alexnet_lightning.diagnostics import Diagnostics
from alexnet_lightning.memory import keep_freed_memory
from alexnet_lightning.module import AlexNetModule
from alexnet_lightning.progress import LogLines
from alexnet_lightning.reliability import (
    AtomicCheckpointIO,
    Sigterm,
    check_writable,
    resume_checkpoint,
    training_callbacks,
)

DESCRIPTION = (
    "A paper-faithful AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) in PyTorch Lightning: train, validate and "
    "test the paper's network (ten-crop test) on ImageNet or the built-in stand-in, with a switch for every ablation."
)


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
    keep_freed_memory()
    return AlexNetCLI(
        AlexNetModule, ImageNetDataModule, args=args, run=run, auto_configure_optimizers=False,
        parser_kwargs={"description": DESCRIPTION},
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
