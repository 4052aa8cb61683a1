"""`alexnet-lightning fit --config wandb`: W&B for a plain run, offline without an account, falling back offline with
one warning when W&B cannot be reached (as the study's cells, tests/test_reliability.py), the resolved config logged."""

import socket
import time
import warnings

import pytest
import wandb

from alexnet_lightning.training.cli import main
from alexnet_lightning.training.wandb_logger import FallbackWandbLogger


@pytest.fixture
def fresh_wandb(monkeypatch, request):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setattr(FallbackWandbLogger, "unreachable", False)
    wandb.teardown()  # wandb reads its environment once per process: make it read this one
    request.addfinalizer(wandb.teardown)


def overlay_args(root, tmp_path, *extra: str) -> list[str]:
    return ["--config", "quick", "--config", "wandb", "--data.root", str(root), "--data.num_workers", "0",
            "--data.batch_size", "16", "--data.statistics_images", "32", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path), *extra]


def test_without_an_account_the_overlay_logs_offline_at_once(tiny_imagefolder, tmp_path, monkeypatch, fresh_wandb):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # were it asked, it would wait and warn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = main(overlay_args(tiny_imagefolder, tmp_path), run=False).trainer.logger
        assert isinstance(logger, FallbackWandbLogger) and logger._offline
        logger.experiment.finish()
    assert not [w for w in caught if "W&B could not be reached" in str(w.message)]
    assert list(tmp_path.glob("wandb/offline-run-*"))


def test_unreachable_wandb_falls_back_offline_with_one_warning(tiny_imagefolder, tmp_path, monkeypatch, fresh_wandb):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # a closed port
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)  # a bad key
    monkeypatch.setenv("WANDB_MODE", "online")
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main(overlay_args(tiny_imagefolder, tmp_path, "--trainer.logger.init_args.init_timeout", "2"),
                   run=False)
        run = cli.trainer.logger.experiment
        run.finish()
    ours = [w for w in caught if "W&B could not be reached" in str(w.message)]
    assert run.offline and len(ours) == 1 and time.monotonic() - start < 60
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.mark.slow
def test_the_overlay_fits_offline_with_the_resolved_config(tiny_imagefolder, tmp_path, monkeypatch, fresh_wandb):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main(["fit", *overlay_args(tiny_imagefolder, tmp_path, "--trainer.max_epochs", "1",
                                         "--trainer.logger.init_args.log_model", "true")])
    run = cli.trainer.logger.experiment
    config = dict(run.config)["cli"]
    assert config["data"]["root"] == str(tiny_imagefolder) and config["trainer"]["max_epochs"] == 1
    assert config["model"]["width"] == 0.1875 and config["seed_everything"] == 0
    assert run.offline and [w for w in caught if "not logged as model artifacts" in str(w.message)]
    run.finish()
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
