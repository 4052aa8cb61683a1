"""experiments/benchmark.py runs where the GPU machines run it: without jsonargparse and wandb, which the CLI and the
ablation study need but a bare torch + Lightning image lacks."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

BLOCKER = "import sys\nsys.modules['jsonargparse'] = sys.modules['wandb'] = None  # importing them fails\n"
# Also scipy.io, and the package's editable install: as on a machine with only torch, torchvision and lightning, and
# a clone of this repository. (All of scipy cannot be blocked here: torchmetrics imports it when it is installed.)
BARE = (BLOCKER + "sys.modules['scipy.io'] = None\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'alexnet_lightning' not in repr(f)]\n")


def without_jsonargparse_and_wandb(tmp_path, bare: bool = False) -> dict[str, str]:
    """An environment whose Python processes (and theirs) cannot import jsonargparse or wandb; ``bare``: nor scipy,
    nor the package unless from the working directory or a script's own path."""
    (tmp_path / "sitecustomize.py").write_text(BARE if bare else BLOCKER)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path)] + ([] if bare else [str(REPO)]))}


def test_the_benchmark_imports_without_jsonargparse_and_wandb(tmp_path):
    env = without_jsonargparse_and_wandb(tmp_path)
    code = "import alexnet_lightning.training.cli"
    blocked = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True)
    assert blocked.returncode != 0 and "jsonargparse" in blocked.stderr  # the environment does block them
    run = subprocess.run([sys.executable, "experiments/benchmark.py", "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "--parts" in run.stdout


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_at_tiny_sizes(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "experiments/benchmark.py", "--images", "24", "--classes", "4", "--batch", "8",
         "--core-images", "16", "--workers", "2", "--steps", "fp32", "fp32+no-lrn", "--iters", "2", "--fit-skip", "1",
         "--json", str(out)],
        cwd=REPO, env=without_jsonargparse_and_wandb(tmp_path), capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["device"] == "cpu" and len(report["machine"]["load_average"]) == 3
    shards = report["prepared"]
    assert shards["jpeg_to_raw"] < 0.35 and shards["psnr"]["images"] == 24 and shards["psnr"]["min_db"] > 30
    assert len(report["one_core"]) == 4 and len(report["loader"]) == 2  # no GPU-decoding row on the CPU
    for part in ("one_core", "loader", "step"):
        for name, row in report[part].items():
            assert "error" not in row, (name, row)
    assert set(report["step"]) == {"fp32", "fp32+no-lrn"} and 0 < report["lrn_over_no_lrn"]["fp32"] < 2
    assert report["fit"]["timed_images"] == 16 and report["fit"]["images_per_s"] > 0  # 3 steps of 8, 1 untimed
    for row in (*report["loader"].values(), *report["step"].values(), report["fit"]):
        assert row["paper_90_epochs_h"] == pytest.approx(90 * 1_281_167 / row["images_per_s"] / 3600)
    assert "training step of the paper network" in run.stdout and "fit (Lightning" in run.stdout


def test_the_benchmarks_step_runs_from_a_clone_with_only_torch_torchvision_and_lightning(tmp_path):
    env = without_jsonargparse_and_wandb(tmp_path, bare=True)
    for module in ("scipy.io", "alexnet_lightning"):
        blocked = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True)
        assert blocked.returncode != 0, module  # the environment does block them
    run = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "benchmark.py"), "--parts", "step", "--steps", "fp32",
         "--batch", "2", "--size", "67", "--warmup", "0", "--iters", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "failed" not in run.stdout and "training step of the paper network" in run.stdout
