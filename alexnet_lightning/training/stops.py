"""How a run stops: on SIGTERM with a checkpoint and status 143, on a non-finite loss before it reaches the weights."""

import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from alexnet_lightning.signals import Sigterm
from alexnet_lightning.training.checkpoints import RandomState, last_checkpoint


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
        self.saved = str(Path(folder) / "last.ckpt")  # where `--ckpt_path last` and runner.py look
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


def training_callbacks() -> list[L.Callback]:
    """The callbacks every training run has: the CLI's defaults, and the benchmark's fit, which measures the way
    training runs."""
    return [RandomState(), StopOnNonFiniteLoss(), CheckpointOnSigterm()]
