"""What keeps a long run resumable, and tells the user what happened when it stops.

The CLI (cli.py) always uses all of it: checkpoints written atomically, the random state in every checkpoint, a
checkpoint before exiting on SIGTERM, a stop with the step and the checkpoint to resume from on a non-finite loss,
the output folders checked before any data is read, and a damaged checkpoint passed over for the newest intact one.
"""

import fcntl
import io
import os
import random
import signal
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException


def write_atomic(path: Path, write: Callable[[BinaryIO], object], what: str = "file", exclusive: bool = False) -> None:
    """Calls ``write(file)`` on a hidden temporary file beside ``path``, fsyncs it and renames it over ``path``, so
    that a full disk, a crash or a kill while writing leaves the previous file whole, and a reader sees the old file
    or the new one, never part of one. An OSError names the path.

    ``exclusive``: creates ``path`` only if there is none, else raises FileExistsError; of several processes that
    create it at once, one wins.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # hidden: never taken for the file itself
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if exclusive:
            os.link(tmp, path)  # unlike a rename, fails if the path exists
            tmp.unlink()
        else:
            os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(
            err.errno,
            f"Could not write the {what} {path} ({err.strerror or err}); the previous {what} at that path, if any, "
            f"is intact.",
        ) from err


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
    on resume, so that dropout goes on with the stream it would have drawn without the interruption."""

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
            torch.cuda.set_rng_state_all(states["cuda"])


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


class StopOnNonFiniteLoss(L.Callback):
    """Stops at the first non-finite training loss, before its gradient reaches the weights, naming the step and
    the checkpoint to resume from."""

    def on_before_backward(self, trainer: L.Trainer, module: L.LightningModule, loss: torch.Tensor) -> None:
        if trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss).all()), all=True):
            return
        checkpoint = last_checkpoint(trainer)
        resume = (
            f"resume from the last good checkpoint {checkpoint} (--ckpt_path), e.g. with a lower learning rate"
            if checkpoint
            else "no checkpoint was written yet: start again, e.g. with a lower learning rate"
        )
        raise FloatingPointError(
            f"The training loss is {loss.item()} at global step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"stopped before it reached the weights. To go on, {resume}."
        )


class Sigterm:
    """SIGTERM while no trainer runs a stage, when Lightning's handler is not installed (between the cells of a
    study, while data is prepared): ``recorded()`` makes the process note the signal instead of dying wherever it
    is, and the runner stops at its next safe point with ``exit_if_received``. Lightning's handler, while installed,
    calls this one too (it keeps the handler it replaces)."""

    received = False

    @classmethod
    @contextmanager
    def recorded(cls) -> Iterator[None]:
        previous = signal.signal(signal.SIGTERM, cls._record)
        cls.received = False
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)
            cls.received = False

    @classmethod
    def _record(cls, signum: int, frame: Any) -> None:
        cls.received = True

    @classmethod
    def exit_if_received(cls, done: str) -> None:
        """Exits with status 143 (128 + SIGTERM) if the signal came, saying what is done."""
        if cls.received:
            print(f"Stopped by SIGTERM; {done}. To go on, rerun the same command.", file=sys.stderr)
            raise SystemExit(128 + signal.SIGTERM)


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
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            super().on_train_batch_end(trainer, module, *args)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and not trainer.fast_dev_run:
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM (a scheduler's preemption) while fitting: a checkpoint `last.ckpt`, then exit status 143
    (128 + SIGTERM) with a message saying where the checkpoint is and how to resume; in validation or testing outside
    a fit, the exit without a checkpoint.

    Lightning already handles the signal during a stage: its handler sets `trainer.received_sigterm` and its loops
    raise `SIGTERMException` after the current batch, a SystemExit of status 0 that would make a preempted run look
    finished to a scheduler or to experiments/ablate.py. This callback adds the checkpoint and the status. The
    checkpoint is written at the end of the training batch, but at an epoch's last batch only after the validation
    or when the signal stops it: a validation it stops is saved as begun with none of its batches done, so that the
    resumed run does it again, whole (Lightning resumes a checkpoint written after the last training batch past the
    validation). A signal recorded before Lightning installed its handler (``Sigterm``) is delivered again when the
    stage starts.
    """

    def __init__(self) -> None:
        self.saved: str | None = None

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.saved = None

    def _deliver_recorded(self, trainer: L.Trainer, *args: Any) -> None:
        if Sigterm.received and not trainer.received_sigterm:
            os.kill(os.getpid(), signal.SIGTERM)

    on_sanity_check_start = on_train_start = on_validation_start = on_test_start = _deliver_recorded

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if trainer.received_sigterm and self.saved is None and not last_batch:
            self._save(trainer)

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if self.saved is None and fitting:  # stopped in the validation or at the end of an epoch
            self._save(trainer)
        if trainer.is_global_zero:
            where = f"checkpoint {self.saved}" if self.saved else "no checkpoint (not fitting)"
            print(
                f"Stopped by SIGTERM at global step {trainer.global_step}; {where}. To resume, rerun with "
                f"`--ckpt_path last` (alexnet-lightning fit) or rerun the same command (experiments/ablate.py).",
                file=sys.stderr,
            )
        exception.code = 128 + signal.SIGTERM

    def _save(self, trainer: L.Trainer) -> None:
        callback = trainer.checkpoint_callback
        folder = callback.dirpath if callback and callback.dirpath else Path(trainer.default_root_dir) / "checkpoints"
        self.saved = str(Path(folder) / "last.ckpt")  # where `--ckpt_path last` and ablate.py look
        if not trainer.validating:
            trainer.save_checkpoint(self.saved)
            return
        # Lightning restarts a validation that has begun and not finished one batch ("mid-evaluation") from its first
        # batch, with its counts from zero.
        progress = trainer.fit_loop.epoch_loop.val_loop.batch_progress
        kept = progress.state_dict()
        progress.reset()
        progress.total.ready = progress.total.started = 1
        try:
            trainer.save_checkpoint(self.saved)
        finally:
            progress.load_state_dict(kept)


@contextmanager
def locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """Holds an exclusive lock on the file ``path`` (created if need be) for the block, among processes that share a
    folder; yields False, without the lock, if another process holds it and ``wait`` is False. The system drops a
    lock when its process ends, however it ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


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


def training_callbacks() -> list[L.Callback]:
    """The callbacks every training run has: the CLI's defaults, and the benchmark's fit, which measures the way
    training runs."""
    return [RandomState(), StopOnNonFiniteLoss(), CheckpointOnSigterm()]
