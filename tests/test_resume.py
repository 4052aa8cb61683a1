"""A fit killed with SIGKILL mid-epoch resumes from its last checkpoint and, in deterministic mode, ends with the
weights and metrics of a run that was never interrupted (model, optimiser, scheduler, data position, random state)."""

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from alexnet_lightning.training.cli import main
from tests.conftest import REPO
from tests.test_cli import QUICK


class KillAtStep(L.Callback):
    """SIGKILLs its own process when a training batch of the given global step ends, before that step's checkpoint:
    Lightning runs checkpoint callbacks after all others. The checkpoints are written in a thread (AsyncCheckpointIO):
    it first waits for the one in flight, the previous step's, so that the kill comes after it, at the same point in
    every run (on a busy machine the write could still be under way, and the run resumed from the one before)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.strategy.checkpoint_io.teardown()  # waits for the writes in flight
            os.kill(os.getpid(), signal.SIGKILL)


def overlay(path: Path, kill_at: int | None = None) -> Path:
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"every_n_train_steps": 1, "save_last": True, "save_top_k": -1}}]
    if kill_at is not None:
        callbacks.append({"class_path": "tests.test_resume.KillAtStep", "init_args": {"step": kill_at}})
    path.write_text(yaml.safe_dump({
        "seed_everything": 3,
        "trainer": {"max_epochs": 2, "deterministic": True, "log_every_n_steps": 1, "callbacks": callbacks,
                    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0},
        "data": {"batch_size": 15, "num_workers": 2, "statistics_images": 32},  # 4 full batches of the 60
        "model": {"dropout": 0.5},  # dropout draws from the global random stream, which must resume too
    }))
    return path


def step_losses(root: Path) -> dict[int, str]:
    """train/loss_step by global step, over every CSV log of the run (a resumed run writes a new version)."""
    losses = {}
    for log in sorted(root.glob("lightning_logs/version_*/metrics.csv")):
        for row in csv.DictReader(log.open()):
            if row.get("train/loss_step"):
                losses[int(row["step"])] = row["train/loss_step"]
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("in_memory", ["true", "false"])  # from memory, and file by file in loader processes
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tiny_imagefolder, tiny_overlay, tmp_path, in_memory):
    common = [*QUICK, "--config", str(tiny_overlay), "--data.root", str(tiny_imagefolder),
              "--data.in_memory", in_memory]
    # 60 training images in batches of 16: 4 steps per epoch. Killed in step 6, the second of epoch 1.
    killed_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "alexnet_lightning.training.cli", "fit", *common, "--config",
           str(overlay(tmp_path / "kill.yaml", kill_at=6)), "--trainer.default_root_dir", str(killed_dir)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
    last = killed_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == 5 and saved["epoch"] == 1  # mid-epoch: one batch of epoch 1 done

    resumed = main(["fit", *common, "--config", str(overlay(tmp_path / "resume.yaml")),
                    "--trainer.default_root_dir", str(killed_dir), "--ckpt_path", str(last)])
    whole = main(["fit", *common, "--config", str(overlay(tmp_path / "whole.yaml")),
                  "--trainer.default_root_dir", str(tmp_path / "whole")])
    assert resumed.trainer.global_step == whole.trainer.global_step == 8
    for name, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    for key in ("val/top1_error", "val/top5_error", "train/top1_error", "val/loss"):
        assert torch.equal(resumed.trainer.callback_metrics[key], whole.trainer.callback_metrics[key]), key
    # Every step's loss, before and after the kill, is the uninterrupted run's.
    assert step_losses(killed_dir) == step_losses(tmp_path / "whole")
    assert len(step_losses(killed_dir)) == 8
    # Resumed from the checkpoint written at the end of epoch 0's last batch: epoch 1 is trained whole.
    boundary = main(["fit", *common, "--config", str(overlay(tmp_path / "boundary.yaml")),
                     "--trainer.default_root_dir", str(tmp_path / "boundary"),
                     "--ckpt_path", str(tmp_path / "whole" / "checkpoints" / "epoch=0-step=4.ckpt")])
    assert boundary.trainer.global_step == 8
    for name, value in whole.model.state_dict().items():
        assert torch.equal(boundary.model.state_dict()[name], value), name
