"""The self-check (training/check.py): its table, its exit status, and that it runs without jsonargparse or wandb."""

import subprocess
import sys

import torch

from alexnet_lightning.training import check
from tests.conftest import PYPROJECT, REPO
from tests.test_benchmark import without_jsonargparse_and_wandb


def test_a_failed_check_exits_non_zero_naming_it_and_a_skipped_one_is_listed(monkeypatch, capsys):
    monkeypatch.setattr(check, "CHECKS", {
        "passes": lambda device: ("figure 1", True),
        "fails": lambda device: ("figure 2", False),
        "crashes": lambda device: 1 / 0,
        "not here": lambda device: (_ for _ in ()).throw(check.Skip("no GPU")),
    })
    assert check.main([]) == 1
    out, err = capsys.readouterr()
    assert "FAILED: fails, crashes" in err
    assert "| passes" in out and "ZeroDivisionError" in out and "skipped on this machine: not here" in out
    monkeypatch.setattr(check, "CHECKS", {"passes": lambda device: ("figure 1", True)})
    assert check.main([]) == 0


def test_the_cpu_checks_run_without_jsonargparse_and_wandb(tmp_path):
    run = subprocess.run([sys.executable, "-m", "alexnet_lightning.training.check", "--only", "bf16 step vs fp32",
                          "device decode vs CPU decode"], cwd=REPO, env=without_jsonargparse_and_wandb(tmp_path),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| bf16 step vs fp32" in run.stdout and "| yes" in run.stdout
    if not torch.cuda.is_available():
        assert "skipped on this machine: device decode vs CPU decode" in run.stdout


def test_the_console_script_is_declared():
    assert PYPROJECT["project"]["scripts"]["alexnet-check"] == "alexnet_lightning.training.check:console"
