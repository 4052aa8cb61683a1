import csv
import errno
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import wandb
import yaml
from lightning.pytorch import Callback
from lightning.pytorch.plugins.io import AsyncCheckpointIO
from PIL import Image

from alexnet_lightning import CONFIGS, files
from alexnet_lightning.model.towers import TowerParallelStrategy
from alexnet_lightning.study import cell as study_cell
from alexnet_lightning.study import identity, runner
from alexnet_lightning.study.identity import open_study
from alexnet_lightning.study.report import read_curves, summarise, write_report, write_tables
from alexnet_lightning.training.checkpoints import AtomicCheckpointIO, RandomState
from alexnet_lightning.training.cli import main
from alexnet_lightning.training.stops import CheckpointOnSigterm, StopOnNonFiniteLoss
from alexnet_lightning.training.wandb_logger import FallbackWandbLogger
from tests.conftest import REPO

QUICK = ["--config", str(CONFIGS / "paper.yaml"), "--config", str(CONFIGS / "presets" / "quick.yaml")]


@pytest.fixture
def tiny_fit(tiny_imagefolder, tiny_overlay):
    def args(root, *extra: str) -> list[str]:
        return ["fit", *QUICK, "--config", str(tiny_overlay), "--data.root", str(tiny_imagefolder),
                "--trainer.default_root_dir", str(root), *extra]
    return args


def weights(cli) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in cli.model.state_dict().items()}


@pytest.fixture
def study(study_args):
    return study_args


class Stop(Exception):
    pass


def stop_at_cli(seen: dict):
    """A stand-in for the CLI that records the arguments of a cell and stops it before any training."""
    def fake_main(args, run=True):
        seen["args"] = args
        raise Stop
    return fake_main


@pytest.mark.parametrize("strategy", [[], ["--config", str(CONFIGS / "strategy" / "towers.yaml")]])
def test_every_cli_trainer_checkpoints_atomically_mid_epoch_with_the_random_state(strategy, tmp_path):
    cli = main([*QUICK, *strategy, "--trainer.default_root_dir", str(tmp_path)], run=False)
    trainer = cli.trainer
    io = trainer.strategy.checkpoint_io  # written in a thread, so that training goes on meanwhile, atomically
    assert isinstance(io, AsyncCheckpointIO) and isinstance(io.checkpoint_io, AtomicCheckpointIO)
    assert isinstance(trainer.strategy, TowerParallelStrategy) == bool(strategy)
    for kind in (RandomState, StopOnNonFiniteLoss, CheckpointOnSigterm):
        assert sum(isinstance(c, kind) for c in trainer.callbacks) == 1, kind
    [mid_epoch] = [c for c in trainer.checkpoint_callbacks if c._every_n_train_steps]
    assert (mid_epoch._every_n_train_steps, mid_epoch.filename, mid_epoch.save_top_k) == (1000, "last", 1)
    assert {c.dirpath for c in trainer.checkpoint_callbacks} == {str(tmp_path / "checkpoints")}


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.zeros(100)}, path)
    before = path.read_bytes()
    written = []

    class FullDisk:  # writes half of what it is given, then reports a full disk
        def __init__(self, name, mode):
            self.file = open(name, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(bytes(data[: len(data) // 2]))
            self.file.flush()
            written.append(os.path.getsize(self.file.name))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "open", FullDisk, raising=False)
    with pytest.raises(OSError) as raised:
        AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.ones(10_000)}, path)
    assert raised.value.errno == errno.ENOSPC and written[0] > len(before)  # it failed mid-write
    assert str(path) in str(raised.value) and "previous checkpoint" in str(raised.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary file left behind
    assert torch.load(path)["step"] == 1


@pytest.mark.parametrize("how", ["read-only folder", "a file in the way"])
def test_an_unwritable_output_folder_fails_before_any_data_is_read(how, tiny_fit, tmp_path, no_data_reads):
    if how == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root ignores folder permissions")
        tmp_path.joinpath("out").mkdir(mode=0o500)
        folder = tmp_path / "out" / "run"
    else:
        tmp_path.joinpath("out").write_text("")
        folder = tmp_path / "out" / "run"
    with pytest.raises(OSError, match=f"output folder {folder} cannot be written"):
        main(tiny_fit(folder))


class NaNAtStep(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            batch[0].fill_(float("nan"))


@pytest.mark.slow
@pytest.mark.parametrize("slow_writes", [False, True])  # a checkpoint still being written when the loss is found
def test_a_non_finite_loss_stops_naming_the_step_and_the_checkpoint(tiny_fit, tmp_path, monkeypatch, slow_writes):
    if slow_writes:  # as on a busy machine, or for a large checkpoint: the writing thread is behind the training
        write = AtomicCheckpointIO.save_checkpoint
        monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", lambda *a, **k: (time.sleep(3), write(*a, **k)))
    cli = main(tiny_fit(tmp_path, "--trainer.max_epochs", "3")[1:], run=False)
    cli.trainer.callbacks.append(NaNAtStep(5))  # the second batch of the second epoch (4 batches an epoch)
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"  # written at the end of the first epoch
    with pytest.raises(FloatingPointError, match=f"nan at global step 5 .* last good checkpoint {checkpoint}"):
        cli.trainer.fit(cli.model, cli.datamodule)
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 4
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())  # stopped before the weights


@pytest.mark.slow
def test_a_resumed_run_continues_the_random_stream_and_ends_as_an_uninterrupted_one(tiny_fit, tmp_path):
    whole = main(tiny_fit(tmp_path / "whole", "--trainer.max_epochs", "2"))
    # The first epoch (4 steps), then a fresh CLI that reseeds as a new process would, resuming with `last`.
    main(tiny_fit(tmp_path / "split", "--trainer.max_epochs", "1"))
    resumed = main(tiny_fit(tmp_path / "split", "--trainer.max_epochs", "2", "--ckpt_path", "last"))
    assert resumed.trainer.ckpt_path == str(tmp_path / "split" / "checkpoints" / "last.ckpt")
    assert resumed.trainer.global_step == 8
    expected, got = weights(whole), weights(resumed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)  # the same dropout masks and data
    assert float(whole.trainer.callback_metrics["train/loss_step"]) == float(
        resumed.trainer.callback_metrics["train/loss_step"])


@pytest.mark.slow
def test_two_runs_with_the_same_seed_give_identical_metrics(tiny_fit, tmp_path):
    runs = [main(tiny_fit(tmp_path / name, "--trainer.deterministic", "true", "--seed_everything", "7",
                          "--data.num_workers", "2", "--trainer.max_steps", "5", "--trainer.max_epochs", "2"))
            for name in ("a", "b")]
    metrics = [{k: float(v) for k, v in run.trainer.callback_metrics.items()} for run in runs]
    assert "val/top1_error" in metrics[0] and "train/loss_step" in metrics[0]
    assert metrics[0] == metrics[1]
    first, second = weights(runs[0]), weights(runs[1])
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("server", ["closed port", "silent server"])
def test_unreachable_wandb_goes_offline_with_one_warning_whatever_the_run_id(server, tmp_path, monkeypatch, request):
    listener, accepted = socket.create_server(("127.0.0.1", 0)), []
    port = listener.getsockname()[1]
    if server == "closed port":
        listener.close()
    else:  # accepts connections and never answers
        threading.Thread(target=lambda: [accepted.append(listener.accept()) for _ in range(100)], daemon=True).start()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)  # a bad key
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setattr(FallbackWandbLogger, "unreachable", False)
    wandb.teardown()  # wandb reads its environment once per process: make it read this one
    request.addfinalizer(wandb.teardown)  # and the next test's
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # As runner.py's cells make it: a run id, resume="allow", and, from the CLI, every argument of wandb.init
        logger = FallbackWandbLogger(project="p", save_dir=str(tmp_path), init_timeout=2, id="cell00000000",
                                     resume="allow", settings=None)
        logger.log_metrics({"x": 1.0}, step=0)
        run = logger.experiment
        run.finish()
        second = FallbackWandbLogger(project="p", save_dir=str(tmp_path / "2"), init_timeout=2, id="cell00000001",
                                     resume="allow", settings=None)
        second.experiment.finish()  # goes offline at once: no second wait or warning
    elapsed = time.monotonic() - start
    assert run.offline and run.id == "cell00000000" and second.experiment.offline and elapsed < 30
    assert (server == "silent server") == bool(accepted)  # it was asked, and did not answer
    ours = [w for w in caught if "W&B could not be reached" in str(w.message)]
    assert len(ours) == 1 and f"logging offline into {tmp_path}" in str(ours[0].message)
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.mark.slow
def test_sigterm_checkpoints_exits_non_zero_and_the_study_resumes_the_cell(tiny_imagefolder, tmp_path):
    overlay = tmp_path / "long.yaml"  # long enough that the signal comes mid-run
    overlay.write_text(yaml.safe_dump({
        "trainer": {"max_epochs": 3, "enable_progress_bar": False, "enable_model_summary": False},
        "data": {"batch_size": 15, "num_workers": 0, "statistics_images": 32},
    }))
    study = ["--data-root", str(tiny_imagefolder), "--preset", "quick", "--config", str(overlay),
             "--results", str(tmp_path / "results"), "--study", "s", "--jobs", "1", "--seeds", "1"]  # jobs: test_jobs
    # Started from a process that runs W&B itself, whose wandb-core service the study would inherit (WANDB_SERVICE).
    wandb.init(mode="offline", dir=tmp_path, project="parent").finish()
    assert os.environ.get("WANDB_SERVICE")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    ablate = [sys.executable, str(REPO / "experiments" / "ablate.py")]
    cell = tmp_path / "results" / "s" / "runs" / "baseline" / "seed0"
    last = cell / "checkpoints" / "last.ckpt"

    child = subprocess.Popen([*ablate, *study, "--no-lrn"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not last.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)  # after the first epoch's checkpoint
    out, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM, err[-2000:]
    stopped = torch.load(last, weights_only=False)
    assert 4 <= stopped["global_step"] < 12
    assert f"Stopped by SIGTERM at global step {stopped['global_step']}; checkpoint {last}" in err
    assert not (tmp_path / "results" / "s" / "runs" / "no_lrn").exists()  # the study stopped, no next cell

    rerun = subprocess.run([*ablate, *study, "--variant", "baseline", "--seed", "0"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming from {last}" in rerun.stdout
    assert "Restored all states from the checkpoint" in rerun.stdout + rerun.stderr
    assert torch.load(last, weights_only=False)["global_step"] == 12  # 3 epochs of 4 batches, none lost
    with open(cell / "csv" / "attempt01" / "metrics.csv") as file:
        epochs = [int(row["epoch"]) for row in csv.DictReader(file) if row["epoch"]]
    assert min(epochs) == stopped["epoch"]  # the resumed attempt trained no earlier epoch again
    assert (cell / "result.json").exists()


# Exact resume: the newest state in last.ckpt, loader workers, the plateau schedule


@pytest.mark.slow
def test_last_ckpt_holds_the_newest_state_when_the_validation_error_stops_improving(tiny_fit, tmp_path):
    # A learning rate too small to change a float32 weight: the validation error of the first epoch is never beaten.
    main(tiny_fit(tmp_path, "--model.lr", "1e-30", "--trainer.max_epochs", "3"))
    assert [p.name for p in (tmp_path / "checkpoints").glob("epoch=*")] == ["epoch=0-step=4.ckpt"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert (last["global_step"], last["epoch"]) == (12, 2)  # the end of the third epoch


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [True, False])
def test_a_run_resumed_from_an_epochs_end_with_loader_workers_ends_as_an_uninterrupted_one(persistent, tiny_fit,
                                                                                           tmp_path):
    options = ["--trainer.deterministic", "true", "--data.num_workers", "2"]
    options += [] if persistent else ["--data.persistent_workers", "false"]
    whole = main(tiny_fit(tmp_path / "whole", *options, "--trainer.max_epochs", "2"))
    main(tiny_fit(tmp_path / "split", *options, "--trainer.max_epochs", "1"))
    resumed = main(tiny_fit(tmp_path / "split", *options, "--trainer.max_epochs", "2", "--ckpt_path", "last"))
    assert resumed.trainer.global_step == whole.trainer.global_step == 8
    expected, got = weights(whole), weights(resumed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.slow
def test_a_resumed_run_keeps_every_step_of_the_plateau_schedule(tiny_fit, tmp_path):
    plateau = ["--trainer.deterministic", "true", "--model.lr_schedule", "plateau", "--model.lr_patience", "0"]
    whole = main(tiny_fit(tmp_path / "whole", *plateau, "--trainer.max_epochs", "3"))
    main(tiny_fit(tmp_path / "split", *plateau, "--trainer.max_epochs", "1"))
    resumed = main(tiny_fit(tmp_path / "split", *plateau, "--trainer.max_epochs", "3", "--ckpt_path", "last"))
    [expected], [got] = (run.trainer.lr_scheduler_configs for run in (whole, resumed))
    assert expected.scheduler.state_dict() == got.scheduler.state_dict()
    assert expected.scheduler.last_epoch == 3  # one step per epoch
    assert all(torch.equal(weights(whole)[k], v) for k, v in weights(resumed).items())


# Signals: SIGTERM at any phase of runner.py ends it with status 143 after a checkpoint or a written result


class TermAt(Callback):
    """Sends SIGTERM to its own process when the given batch of the given stage starts, once."""

    def __init__(self, stage: str, batch: int):
        self.stage, self.batch, self.sent = stage, batch, False

    def _maybe(self, stage: str, index: int) -> None:
        if (stage, index) == (self.stage, self.batch) and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_start(self, trainer, module, batch, index):
        self._maybe("train", index)

    def on_validation_batch_start(self, trainer, module, batch, index, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._maybe("validate", index)

    def on_test_batch_start(self, trainer, module, batch, index, dataloader_idx=0):
        self._maybe("test", index)


@pytest.fixture
def sigterm_caught():
    """A SIGTERM handler of the test's own, so that a signal which the code under test leaves unhandled cannot end
    the test run."""
    previous = signal.signal(signal.SIGTERM, lambda *args: None)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["training", "validation", "test", "last test batch", "between cells"])
def test_sigterm_in_any_phase_ends_the_study_with_143_and_the_rerun_loses_nothing(phase, study, tmp_path, monkeypatch,
                                                                                   sigterm_caught):
    # 60 training images in batches of 15 (4 batches), 30 validation and test images (2 batches), one epoch.
    stage, batch = {"training": ("train", 1), "validation": ("validate", 0), "test": ("test", 0),
                    "last test batch": ("test", 1), "between cells": (None, None)}[phase]
    cell = tmp_path / "results" / "tiny" / "runs" / "baseline" / "seed0"
    real_main, real_run_cell = study_cell.alexnet_cli.main, runner.run_cell

    def main_with_signal(args, run=True):
        cli = real_main(args, run=run)
        if stage and str(cell / "cell.yaml") in args:
            cli.trainer.callbacks.append(TermAt(stage, batch))
        return cli

    def run_cell_then_signal(*args):
        real_run_cell(*args)
        if phase == "between cells":
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patches:
        patches.setattr(study_cell.alexnet_cli, "main", main_with_signal)
        patches.setattr(runner, "run_cell", run_cell_then_signal)
        with pytest.raises(SystemExit) as stopped:
            runner.main([*study, "--no-lrn"])
    assert stopped.value.code == 128 + signal.SIGTERM
    assert not (cell.parent.parent / "no_lrn").exists()  # the next cell never started
    assert (cell / "result.json").exists() == (phase in ("last test batch", "between cells"))

    assert runner.main([*study, "--no-lrn"]) == 0
    result = json.loads((cell / "result.json").read_text())
    assert {"val/top1_error", "val/loss", "test/top1_error"} <= set(result)
    curves = read_curves(sorted(cell.glob("csv/attempt*/metrics.csv")))
    assert [epoch for epoch, _ in curves["val/top1_error"]] == [0]  # an interrupted validation was done again
    assert torch.load(cell / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


@pytest.mark.slow
def test_a_fit_stopped_in_a_validation_does_it_again_and_ends_as_an_uninterrupted_one(tiny_fit, tmp_path,
                                                                                      sigterm_caught):
    options = ["--trainer.deterministic", "true", "--trainer.max_epochs", "2", "--model.lr_schedule", "plateau",
               "--model.lr_patience", "0"]
    whole = main(tiny_fit(tmp_path / "whole", *options))
    stopped = main(tiny_fit(tmp_path / "split", *options)[1:], run=False)
    stopped.trainer.callbacks.append(TermAt("validate", 0))  # in the first epoch's validation
    with pytest.raises(SystemExit) as exit_:
        stopped.trainer.fit(stopped.model, stopped.datamodule)
    assert exit_.value.code == 128 + signal.SIGTERM
    resumed = main(tiny_fit(tmp_path / "split", *options, "--ckpt_path", "last"))
    assert all(torch.equal(weights(whole)[k], v) for k, v in weights(resumed).items())
    curves = [read_curves(sorted(root.glob("lightning_logs/version_*/metrics.csv")))["val/top1_error"]
              for root in (tmp_path / "whole", tmp_path / "split")]
    assert curves[0] == curves[1] and [epoch for epoch, _ in curves[1]] == [0, 1]


def test_the_command_exits_143_after_a_sigterm_that_came_too_late_to_stop_its_stage(monkeypatch, sigterm_caught):
    from alexnet_lightning.training import cli

    monkeypatch.setattr(cli, "main", lambda: os.kill(os.getpid(), signal.SIGTERM))  # say, in the last test batch
    with pytest.raises(SystemExit) as stopped:
        cli.console()
    assert stopped.value.code == 128 + signal.SIGTERM


# Arguments: validated before any data is read


@pytest.mark.parametrize("epochs", ["-1", "0"])
def test_epochs_below_one_are_refused(epochs, capsys):
    with pytest.raises(SystemExit):
        runner.parse_args(["--epochs", epochs])
    assert f"--epochs must be at least 1, got {epochs}" in capsys.readouterr().err


@pytest.mark.parametrize("overlay, message", [({"data": {"batch_size": -1}}, "batch_size must be at least 1, got -1"),
                                              ({"model": {"dropout": 1.5}}, r"dropout must be in \[0, 1\), got 1.5"),
                                              ({"model": {"lr": -0.01}}, "lr must be positive, got -0.01")])
def test_impossible_numbers_stop_the_study_before_any_data_is_read(overlay, message, tmp_path, no_data_reads):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(overlay))
    with pytest.raises(SystemExit, match=message):
        runner.main(["--config", str(bad), "--results", str(tmp_path / "results")])
    assert not (tmp_path / "results").exists()


def test_an_impossible_batch_size_stops_the_command_before_any_data_is_read(no_data_reads):
    with pytest.raises(ValueError, match="batch_size must be at least 1, got -1"):
        main(["fit", *QUICK, "--data.batch_size", "-1"])


def test_the_presets_own_number_of_epochs_given_again_is_the_same_study(study):
    open_study(runner.parse_args(study))  # the tiny overlay's one epoch
    open_study(runner.parse_args([*study, "--epochs", "1"]))
    study_file = runner.parse_args(study).results / "tiny" / "study.json"
    recorded = json.loads(study_file.read_text())
    study_file.write_text(json.dumps(recorded | {"epochs": None}))  # as written before the epochs were resolved
    open_study(runner.parse_args([*study, "--epochs", "1"]))
    with pytest.raises(SystemExit, match="differs in: epochs"):
        open_study(runner.parse_args([*study, "--epochs", "2"]))


# Damage: a damaged checkpoint falls back to the newest intact one, a damaged result is named and its cell redone


@pytest.mark.slow
def test_a_damaged_last_checkpoint_falls_back_to_the_newest_intact_one(tiny_fit, tmp_path):
    main(tiny_fit(tmp_path, "--trainer.max_epochs", "1"))
    last, [epoch] = tmp_path / "checkpoints" / "last.ckpt", (tmp_path / "checkpoints").glob("epoch=*.ckpt")
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated, as by a copy that stopped
    warning = rf"checkpoint {re.escape(str(last))} is damaged \(.*\); resuming from the newest intact checkpoint "
    with pytest.warns(UserWarning, match=warning + re.escape(f"{epoch} instead")):
        resumed = main(tiny_fit(tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last"))
    assert resumed.trainer.ckpt_path == str(epoch) and resumed.trainer.global_step == 8


def test_a_study_resumes_a_cell_from_its_newest_intact_checkpoint(study, monkeypatch, capsys):
    args = runner.parse_args(study)
    study_dir, identity = open_study(args)
    folder = study_dir / "runs" / "baseline" / "seed0" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 4}, folder / "epoch=0-step=4.ckpt")
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    monkeypatch.setattr(study_cell.alexnet_cli, "main", stop_at_cli({}))
    with pytest.warns(UserWarning, match="last.ckpt is damaged"), pytest.raises(Stop):
        study_cell.run_cell(args, study_dir, identity, "baseline", 0)
    assert f"resuming from {folder / 'epoch=0-step=4.ckpt'}" in capsys.readouterr().out
    (folder / "epoch=0-step=4.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="Every checkpoint is damaged: .*epoch=0-step=4.ckpt .*last.ckpt"):
        study_cell.run_cell(args, study_dir, identity, "baseline", 0)


@pytest.mark.parametrize("text", ['{"variant": "baseline", "seed": 0, "test/top1_', '{"seed": 0}', "[]",
                                  '{"variant": "baseline", "seed": 0, "test/top1_error": 0.5}'])
def test_a_damaged_result_is_named_and_its_cell_runs_again(text, study, monkeypatch, capsys):
    args = runner.parse_args(study)
    study_dir, identity = open_study(args)
    result = study_dir / "runs" / "baseline" / "seed0" / "result.json"
    result.parent.mkdir(parents=True)
    result.write_text(text)
    with pytest.warns(UserWarning, match=f"The result {re.escape(str(result))} is damaged"):
        write_report(study_dir)  # the table leaves it out, naming it
    seen = {}
    monkeypatch.setattr(study_cell.alexnet_cli, "main", stop_at_cli(seen))
    with pytest.raises(Stop):
        study_cell.run_cell(args, study_dir, identity, "baseline", 0)
    assert f"The result {result} is damaged" in capsys.readouterr().out
    assert str(result.parent / "cell.yaml") in seen["args"]


def test_a_damaged_study_file_stops_the_study_naming_it(study):
    args = runner.parse_args(study)
    study_dir, _ = open_study(args)
    (study_dir / "study.json").write_text('{"preset": "quick", "base_')
    with pytest.raises(SystemExit, match=f"the study file {re.escape(str(study_dir / 'study.json'))} is damaged"):
        open_study(args)


# Concurrency: study files written whole, cells of one study at once


def open_study_once_it_appears(args) -> None:
    study_file, deadline = args.results / args.study / "study.json", time.monotonic() + 60
    while not study_file.exists() and time.monotonic() < deadline:
        pass
    open_study(args)


def test_cells_of_a_new_study_started_together_agree_on_its_study_file(study, monkeypatch):
    # The first cell writes study.json; three more start the moment it appears. A large identity makes the write
    # take long enough for them to read the file meanwhile.
    large = identity.study_identity(runner.parse_args(study)) | {"padding": "x" * 30_000_000}
    monkeypatch.setattr(identity, "study_identity", lambda args: large)
    context = multiprocessing.get_context("fork")
    cells = [context.Process(target=open_study_once_it_appears, args=(runner.parse_args(study),)) for _ in range(3)]
    cells.append(context.Process(target=open_study, args=(runner.parse_args(study),)))
    for cell in cells:
        cell.start()
    for cell in cells:
        cell.join(90)
    assert [cell.exitcode for cell in cells] == [0] * 4
    assert json.loads((runner.parse_args(study).results / "tiny" / "study.json").read_text()) == large


def test_a_reader_never_sees_a_report_file_half_written(tmp_path):
    rows = summarise([{"variant": "baseline", "seed": 0, "test/top1_error": 0.4, "test/top5_error": 0.2}])
    rows[0]["change"] = "x" * 20_000_000  # a write that takes a while
    write_tables(rows, tmp_path)
    seen, writer = [], threading.Thread(target=lambda: [write_tables(rows, tmp_path) for _ in range(3)])
    writer.start()
    while writer.is_alive():
        seen.append(len(json.loads((tmp_path / "ablation.json").read_text())))
    assert seen and set(seen) == {1}


def test_a_cell_that_another_process_runs_is_skipped(study, monkeypatch, capsys):
    args = runner.parse_args(study)
    study_dir, identity = open_study(args)
    lock = study_dir / "runs" / "baseline" / "seed0" / ".cell.lock"
    lock.parent.mkdir(parents=True)
    monkeypatch.setattr(study_cell.alexnet_cli, "main", stop_at_cli({}))
    with files.locked(lock):  # as another process running the cell holds it
        study_cell.run_cell(args, study_dir, identity, "baseline", 0)
    assert "[baseline seed 0] running in another process: skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_two_cells_of_one_study_started_together_both_finish(study, tmp_path):
    runner = [sys.executable, str(REPO / "experiments" / "ablate.py"), *study]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cells = [subprocess.Popen([*runner, "--variant", variant, "--seed", "0"], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for variant in ("baseline", "no_lrn")]
    outputs = [cell.communicate(timeout=600) for cell in cells]
    assert [cell.returncode for cell in cells] == [0, 0], [err[-2000:] for _, err in outputs]
    rows = json.loads((tmp_path / "results" / "tiny" / "ablation.json").read_text())
    assert sorted(row["variant"] for row in rows) == ["baseline", "no_lrn"]  # the report written last has both


# Odd inputs: every kind of file an ImageNet-style folder holds is decoded right or skipped, naming it


def write_grey16(path, value: int, big_endian: bool = False) -> None:
    pixels = np.full((8, 8), value, ">u2" if big_endian else "<u2")
    Image.frombytes("I;16B" if big_endian else "I;16", (8, 8), pixels.tobytes()).save(path)


ODD_FILES = {  # name: (writer, the RGB of its first pixel, or None: skipped with a warning naming the file)
    "cmyk.jpg": (lambda p: Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p), (255, 0, 0)),
    "grey.jpg": (lambda p: Image.new("L", (8, 8), 100).save(p), (100, 100, 100)),
    "png.JPEG": (lambda p: Image.new("RGB", (8, 8), (10, 200, 30)).save(p, format="PNG"), (10, 200, 30)),
    "sixteen.png": (lambda p: write_grey16(p, 32896), (128, 128, 128)),  # 16-bit grey: 32896 = 128 * 257
    "sixteen.tif": (lambda p: write_grey16(p, 25700, big_endian=True), (100, 100, 100)),
    "sixteen.pgm": (lambda p: write_grey16(p, 12850), (50, 50, 50)),  # opened in PIL's mode I
    "palette.png": (lambda p: palette_with_transparency(p), (255, 255, 255)),  # the transparent index: white
    "one-bit.png": (lambda p: Image.new("1", (8, 8), 1).save(p), (255, 255, 255)),
    "animated.gif": (lambda p: frames(p), (255, 0, 0)),  # the first frame
    "frames.tif": (lambda p: frames(p), (255, 0, 0)),
    "rotated.jpg": (lambda p: exif_rotated(p), (0, 0, 255)),  # EXIF orientation ignored: the pixels as stored
    "float.tif": (lambda p: Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(p), None),
    "empty.JPEG": (lambda p: p.write_bytes(b""), None),
    "bomb.png": (lambda p: Image.new("RGB", (64, 64)).save(p), None),  # over twice PIL's limit, set to 1000 below
}


def palette_with_transparency(path) -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 255, 0, 0, 0, 255] + [0] * 762)
    image.save(path, transparency=0)


def frames(path) -> None:
    first, second = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 255, 0))
    first.save(path, save_all=True, append_images=[second])


def exif_rotated(path) -> None:
    image = Image.new("RGB", (16, 8), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    image.save(path, exif=exif, quality=100)


def test_odd_image_files_decode_to_their_rgb_or_are_skipped_naming_the_file(tmp_path, monkeypatch):
    from alexnet_lightning.data.datamodule import ImageNetDataModule

    for split in ("train", "val"):
        for name, (write, _) in ODD_FILES.items():
            (tmp_path / split / "odd").mkdir(parents=True, exist_ok=True)
            write(tmp_path / split / "odd" / name)
        (tmp_path / split / "odd" / "notes.txt").write_text("not an image")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.warns(UserWarning, match=re.escape(f"Ignoring 1 file(s) of {tmp_path / 'train'}")):
        folder = ImageNetDataModule(4, root=str(tmp_path))._dataset("train", lambda image: image)
    by_name = {Path(path).name: index for index, (path, _) in enumerate(folder.folder.samples)}
    assert set(by_name) == set(ODD_FILES)  # uppercase extensions and GIF included, the text file left out
    for name, (_, rgb) in ODD_FILES.items():
        if rgb is None:
            with pytest.warns(UserWarning, match=f"Skipping unreadable image {re.escape(str(tmp_path))}.*{name}"):
                assert folder[by_name[name]] is None, name
        else:
            image = np.asarray(folder[by_name[name]][0])
            assert image.dtype == np.uint8 and image.shape[2] == 3, name
            assert np.abs(image[0, 0].astype(int) - rgb).max() <= 2, (name, image[0, 0])
    assert np.asarray(folder[by_name["rotated.jpg"]][0]).shape[:2] == (8, 16)


def test_a_class_folder_without_a_readable_image_stops_before_training_naming_it(tiny_imagefolder, tmp_path):
    from alexnet_lightning.data.datamodule import ImageNetDataModule

    root = shutil.copytree(tiny_imagefolder, tmp_path / "data")
    broken = sorted(path for path in (root / "train").iterdir() if path.is_dir())[3]
    for path in broken.iterdir():
        path.write_bytes(path.read_bytes()[:100])  # every file truncated
    data = ImageNetDataModule(16, root=str(root), resize_size=72, crop_size=67, num_workers=0)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{broken} (every file is unreadable, e.g. {broken}")):
        data.setup("fit")
