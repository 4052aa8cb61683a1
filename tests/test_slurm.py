"""A real scheduler: a one-node SLURM (tests/slurm.py) runs a small study as a 4-task array with the documented
sbatch script; one task is requeued during training. The study ends with every cell, the requeued task wrote its
last.ckpt after the signal and resumed from it, and its log holds no traceback."""

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from tests import slurm
from tests.conftest import REPO


@pytest.fixture
def one_node_slurm(tmp_path):
    if reason := slurm.missing():
        if os.environ.get("CI") == "true":
            pytest.fail(f"under CI the SLURM test must run: {reason}")
        pytest.skip(reason)
    with slurm.cluster(tmp_path / "slurm") as env:
        yield env


def squeue(env: dict, job: str) -> list[str]:
    run = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], env=env, capture_output=True, text=True)
    return run.stdout.split("\n")[:-1]


@pytest.mark.slow
def test_a_study_as_a_slurm_array_survives_a_requeue_of_a_task(one_node_slurm, tiny_imagefolder, tmp_path):
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(yaml.safe_dump({"data": {"batch_size": 16, "num_workers": 1, "statistics_images": 32},
                                       "trainer": {"enable_model_summary": False}}))
    study = ["--data-root", str(tiny_imagefolder), "--preset", "quick", "--config", str(overlay), "--results",
             str(tmp_path / "results"), "--study", "array", "--variant", "no_lrn", "--seeds", "2", "--epochs", "2"]
    env = {**one_node_slurm, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO),
           "ALEXNET_ABLATE": f"{sys.executable} -m alexnet_lightning.study.runner"}
    env.pop("WANDB_SERVICE", None)
    logs = tmp_path / "logs"
    logs.mkdir()
    submit = subprocess.run(["sbatch", "--parsable", "--array=0-3", "--cpus-per-task=1", f"--chdir={tmp_path}",
                             f"--output={logs}/task-%a.log", str(REPO / "experiments" / "slurm" / "ablate.sbatch"),
                             *study], env=env, capture_output=True, text=True, check=True)
    job = submit.stdout.strip().split(";")[0]
    runs = tmp_path / "results" / "array" / "runs"
    # Task 1 is the study's cell 1: no_lrn seed 0 (baseline 0, no_lrn 0, baseline 1, no_lrn 1).
    first_epoch = runs / "no_lrn" / "seed0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not first_epoch.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first_epoch.exists(), (logs / "task-1.log").read_text()[-3000:]
    subprocess.run(["scontrol", "requeue", f"{job}_1"], env=env, check=True)
    while squeue(env, job) and time.monotonic() < deadline + 300:
        # A requeued job waits before it may start again; here it may start at once.
        subprocess.run(["scontrol", "update", f"JobId={job}_1", "BeginTime=now"], env=env, capture_output=True)
        time.sleep(1)
    assert not squeue(env, job), squeue(env, job)

    task = (logs / "task-1.log").read_text()
    assert "cell 1: no_lrn seed 0 (this run)" in task
    assert "Stopped by SIGTERM at global step" in task and f"checkpoint {first_epoch}" in task, task[-3000:]
    assert f"resuming from {first_epoch}" in task, task[-3000:]
    assert "Traceback" not in task, task[-5000:]
    for variant in ("baseline", "no_lrn"):
        for seed in (0, 1):
            assert (runs / variant / f"seed{seed}" / "result.json").is_file(), (variant, seed)
    rows = json.loads((tmp_path / "results" / "array" / "ablation.json").read_text())
    assert sorted(row["variant"] for row in rows) == ["baseline", "no_lrn"]
