"""The private Lightning APIs the code relies on (pyproject bounds Lightning below 2.7 for them). A Lightning
upgrade that moves one fails here, with a message naming it and where the code uses it, rather than deep inside a
run. The names come from `grep -rn "\\._[a-z]" alexnet_lightning` and the loops' progress attributes."""

import inspect
from importlib.metadata import version

import pytest
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy


def trainer() -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False)


def path(obj, dotted: str):
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def method(owner: type, name: str, parameters: list[str]):
    found = getattr(owner, name)
    assert list(inspect.signature(found).parameters)[1:len(parameters) + 1] == parameters, "its parameters changed"
    return found


# (the private API, where the code uses it, a check that raises if it moved)
PRIVATE = [
    ("ModelCheckpoint._save_none_monitor_checkpoint", "training/checkpoints.py LastCheckpoint.on_train_epoch_end",
     lambda: method(ModelCheckpoint, "_save_none_monitor_checkpoint", ["trainer", "monitor_candidates"])),
    ("ModelCheckpoint._monitor_candidates", "training/checkpoints.py LastCheckpoint.on_train_epoch_end",
     lambda: method(ModelCheckpoint, "_monitor_candidates", ["trainer"])),
    ("Trainer.fit_loop.epoch_loop.batch_progress.is_last_batch",
     "training/checkpoints.py LastCheckpoint, training/stops.py",
     lambda: path(trainer(), "fit_loop.epoch_loop.batch_progress.is_last_batch")),
    ("Trainer.fit_loop.epoch_loop.batch_progress.current.processed", "data/datamodule.py (the resumable sampler)",
     lambda: path(trainer(), "fit_loop.epoch_loop.batch_progress.current.processed")),
    ("Trainer.fit_loop.epoch_loop.val_loop.batch_progress", "training/stops.py",
     lambda: path(trainer(), "fit_loop.epoch_loop.val_loop.batch_progress.current.processed")),
    ("the fit loop's checkpoint state (epoch_progress, epoch_loop.batch_progress)",
     "training/checkpoints.py LastCheckpoint.on_load_checkpoint",
     lambda: (lambda state: (state["epoch_progress"]["total"]["completed"],
                             state["epoch_loop.batch_progress"]["current"]["ready"],
                             state["epoch_loop.batch_progress"]["is_last_batch"]))(trainer().fit_loop.state_dict())),
    ("DDPStrategy._configure_launcher", "model/towers.py TowerParallelStrategy",
     lambda: method(DDPStrategy, "_configure_launcher", [])),
    ("DDPStrategy._ddp_kwargs", "model/towers.py TowerParallelStrategy.setup_distributed",
     lambda: DDPStrategy()._ddp_kwargs.keys()),
    ("Strategy._checkpoint_io", "training/cli.py AlexNetCLI.instantiate_trainer",
     lambda: SingleDeviceStrategy("cpu")._checkpoint_io),
    ("LightningCLI._get", "training/cli.py AlexNetCLI.instantiate_trainer",
     lambda: method(LightningCLI, "_get", ["config", "key", "default"])),
    ("WandbLogger._wandb_init", "training/wandb_logger.py FallbackWandbLogger",
     lambda: WandbLogger(offline=True)._wandb_init["project"]),
    ("WandbLogger._experiment, WandbLogger._offline", "training/wandb_logger.py FallbackWandbLogger.experiment",
     lambda: (WandbLogger(offline=True)._experiment, WandbLogger(offline=True)._offline)),
    ("LightningModule._trainer", "model/module.py AlexNetModule (the readings' check)",
     lambda: LightningModule()._trainer),
]


@pytest.mark.parametrize("name, used_by, check", PRIVATE, ids=[p[0] for p in PRIVATE])
def test_each_private_lightning_api_the_code_uses_is_there(name, used_by, check, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    try:
        check()
    except (AttributeError, KeyError, TypeError, AssertionError, ImportError) as err:
        pytest.fail(f"Lightning {version('lightning')} moved or changed {name}, a private API that {used_by} uses "
                    f"({type(err).__name__}: {err}). Adapt that code, or keep Lightning below this version in "
                    f"pyproject.toml.")
