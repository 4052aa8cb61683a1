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
    """Stops at the first non-finite training loss, naming its step and the checkpoint to resume from, without a
    wait for the GPU each step.

    Reading the loss on the host every step (``bool(...)``) would make the CPU wait for each step's kernels. Instead
    the check stays on the device: a step whose loss is non-finite (on any process) has its gradients zeroed before
    the optimiser steps (``masked_fill_``), so its NaN or inf never reaches the weights or the momentum, and its step
    and loss are kept in device tensors. The host reads them every ``check_every_n_steps`` steps, before every
    checkpoint (a checkpoint is never written after a non-finite loss) and at the end of training, and then raises.
    Between the bad step and the read, at most ``check_every_n_steps`` steps run: steps with a non-finite loss move
    the weights only by their momentum and weight decay (SGD with a zero gradient), steps with a finite loss train
    as usual; the run stops all the same, and the error names the first bad step. Under a multi-process strategy
    the flag is summed over the processes on the device (an all-reduce, no host wait), as the gradients are.
    """

    def __init__(self, check_every_n_steps: int = 100) -> None:
        self.check_every_n_steps = check_every_n_steps
        self._finite: torch.Tensor | None = None  # this optimiser step's losses so far were all finite
        self._first_bad: torch.Tensor | None = None  # [global step, loss] of the first non-finite loss, step -1: none

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._finite, self._first_bad = None, torch.tensor([-1.0, 0.0], dtype=torch.float64, device=module.device)

    def on_before_backward(self, trainer: L.Trainer, module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = (~torch.isfinite(loss.detach())).any().to(torch.float32)
        bad = trainer.strategy.reduce(bad, reduce_op="sum") > 0  # on every process alike, as the gradients
        self._finite = ~bad if self._finite is None else self._finite & ~bad
        first = bad & (self._first_bad[0] < 0)
        step = torch.where(first, float(trainer.global_step), self._first_bad[0])  # a scalar: no copy to the GPU
        self._first_bad = torch.stack([step, torch.where(first, loss.detach().double(), self._first_bad[1])])

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer: Any) -> None:
        if self._finite is None:
            return
        for param in module.parameters():
            if param.grad is not None:
                param.grad.masked_fill_(~self._finite, 0.0)
        self._finite = None

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.check_every_n_steps == 0:
            self.check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # the best checkpoint is written in fit's validation
            self.check(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        """Raises if a non-finite loss was seen: reads the device's record (a wait for the GPU)."""
        if self._first_bad is None:
            return
        step, loss = self._first_bad.tolist()
        if step < 0:
            return
        failed_write = None
        try:  # the checkpoints are written in a thread: the newest may still be under way, and is named once on disk
            trainer.strategy.checkpoint_io.teardown()
        except Exception as error:  # a write that failed: the newest on disk is named, the failure chained below
            failed_write = error
        checkpoint = last_checkpoint(trainer)
        resume = (
            f"resume from the last good checkpoint {checkpoint} (--ckpt_path), e.g. with a lower learning rate"
            if checkpoint
            else "no checkpoint was written yet: start again, e.g. with a lower learning rate"
        )
        self._first_bad = None
        raise FloatingPointError(
            f"The training loss is {loss} at global step {int(step)} (found at step {trainer.global_step}, epoch "
            f"{trainer.current_epoch}); its gradient never reached the weights. To go on, {resume}."
        ) from failed_write


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
