"""What keeps a long run resumable, and tells the user what happened when it stops.

The CLI (cli.py) always uses all of it: checkpoints written atomically, the random state in every checkpoint, a
checkpoint before exiting on SIGTERM, a stop with the step and the checkpoint to resume from on a non-finite loss,
the output folders checked before any data is read, and a damaged checkpoint passed over for the newest intact one.
"""

import io
import os
import random
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from alexnet_lightning.files import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside it, fsyncs it and renames it over the old one, so that a full
    disk, a crash or a kill while writing leaves the previous checkpoint whole."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # a remote store: fsspec's own upload
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(Path(path), lambda file: file.write(buffer.getbuffer()), "checkpoint")


class RandomState(L.Callback):
    """Keeps the global random generators' states (torch, CUDA, numpy, python) in every checkpoint and restores them
    on resume, so that dropout goes on with the stream it would have drawn without the interruption. A CUDA state
    is restored to the device of its number where that device exists."""

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        name, keys, *rest = np.random.get_state()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), *rest],  # tensors load with weights_only
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states is None:  # written before this callback existed
            return
        torch.set_rng_state(states["torch"])
        name, keys, *rest = states["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        random.setstate(states["python"])
        if "cuda" in states and torch.cuda.is_available():
            # Written where more (or fewer) GPUs were visible: the states of the devices that exist, in order.
            for device, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, device)


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with a checkpoint file (truncated, a failed CRC, not a checkpoint), or None if it loads."""
    try:
        with zipfile.ZipFile(path) as archive:
            failed = archive.testzip()  # reads every record and checks its CRC
        if failed is not None:
            return f"its record {failed} fails its CRC check"
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # zipfile, torch and pickle raise many kinds on a damaged file
        return f"{type(err).__name__}: {err}"
    return None if isinstance(checkpoint, dict) and "state_dict" in checkpoint else "no state_dict in it"


def resume_checkpoint(*folders: Path) -> Path | None:
    """The newest checkpoint (``*.ckpt``) in the folders that loads; None if there is none. A damaged newer one is
    passed over with a warning naming both; if every one is damaged, an error names them."""
    candidates = [path for folder in folders for path in Path(folder).glob("*.ckpt")]
    damaged: list[tuple[Path, str]] = []
    for path in sorted(candidates, key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            if damaged:
                warnings.warn(f"The checkpoint {damaged[0][0]} is damaged ({damaged[0][1]}); resuming from the newest "
                              f"intact checkpoint {path} instead.", stacklevel=2)
            return path
        damaged.append((path, problem))
    if damaged:
        listed = "; ".join(f"{path} ({problem})" for path, problem in damaged)
        raise ValueError(f"Every checkpoint is damaged: {listed}. Remove them to train from the start.")
    return None


def last_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint on disk that this run wrote or resumed from."""
    paths = {trainer.ckpt_path}
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            paths |= {callback.last_model_path, callback.best_model_path}
    existing = [p for p in paths if p and os.path.isfile(p)]
    return max(existing, key=os.path.getmtime) if existing else None


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt`, the newest state: written at the end of every training epoch, after its validation, and every
    `every_n_train_steps` training steps within an epoch.

    ModelCheckpoint(save_last=True) rewrites `last.ckpt` only when it saves a top-k checkpoint too (Lightning 2.6),
    so a run whose validation error stopped improving kept an old one; a ModelCheckpoint's epoch and step triggers
    exclude each other.
    """

    def __init__(self, every_n_train_steps: int = 1000, dirpath: str | None = None) -> None:
        super().__init__(dirpath=dirpath, filename="last", every_n_train_steps=every_n_train_steps,
                         enable_version_counter=False)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        # Not at an epoch's last batch: a checkpoint written before the epoch's validation resumes past it.
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        if _cut_by_max_steps(trainer):  # saved here, as within an epoch: see on_train_epoch_end
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_batch_end(trainer, module, *args)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # An epoch that max_steps ended before its last batch: Lightning would resume a checkpoint written here as
        # a finished epoch and skip the epoch's other batches; the one written after its last batch resumes within it.
        if _cut_by_max_steps(trainer) and self._last_global_step_saved == trainer.global_step:
            return
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and not trainer.fast_dev_run:
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning 2.6 restarts a run with max_steps from a checkpoint written at an epoch's end (on_train_epoch_end:
        # the epoch processed, not yet completed) within that epoch: it runs it again with no batches and counts it
        # processed twice, so the next epoch is skipped or shuffled as the one after it (Lightning issue #19617).
        # Resumed as a finished epoch, the next starts at its first batch, as without max_steps.
        loop = checkpoint.get("loops", {}).get("fit_loop", {})
        epochs = loop.get("epoch_progress")
        if epochs is None or epochs["current"]["processed"] != epochs["current"]["completed"] + 1:
            return
        for tracker in (epochs["current"], epochs["total"]):
            tracker["completed"] = tracker["processed"]
        batches = loop["epoch_loop.batch_progress"]
        batches["current"] = dict.fromkeys(batches["current"], 0)
        batches["is_last_batch"] = False


def _cut_by_max_steps(trainer: L.Trainer) -> bool:
    """Whether max_steps is reached before the epoch's last batch."""
    batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    return 0 <= trainer.max_steps <= trainer.global_step and batches < trainer.num_training_batches


def check_writable(trainer: L.Trainer) -> None:
    """Fails, naming the folder, if one of the run's output folders cannot be written; meant before any data is
    read. Creates the folders, as the run would."""
    folders = {trainer.default_root_dir}
    folders |= {c.dirpath for c in trainer.checkpoint_callbacks if getattr(c, "dirpath", None)}
    folders |= {logger.save_dir for logger in trainer.loggers if logger.save_dir}
    for folder in sorted(str(f) for f in folders if "://" not in str(f)):
        try:
            os.makedirs(folder, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise OSError(
                err.errno, f"The output folder {folder} cannot be written ({err.strerror}); nothing was trained"
            ) from err


