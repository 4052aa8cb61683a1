"""Preemption as a scheduler does it: SIGTERM to the whole process group, the loader processes included. The run
stops in order (one checkpoint after the signal, status 143, no traceback: the workers ignore the signal), and the
resumed run's progress lines time the epoch in that process, not since the machine booted."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from tests.conftest import REPO


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_loader_workers_stops_in_order_and_resumes(tiny_imagefolder, tmp_path):
    overlay = tmp_path / "long.yaml"
    overlay.write_text(yaml.safe_dump({
        "trainer": {"max_epochs": 3, "enable_model_summary": False},  # progress: LogLines' lines, in a log
        "data": {"batch_size": 16, "num_workers": 2, "statistics_images": 32},
    }))
    study = ["--data-root", str(tiny_imagefolder), "--preset", "quick", "--config", str(overlay),
             "--results", str(tmp_path / "results"), "--study", "s", "--variant", "baseline", "--seed", "0"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO)}
    env.pop("WANDB_SERVICE", None)
    runner = [sys.executable, "-m", "alexnet_lightning.study.runner", *study]
    last = tmp_path / "results" / "s" / "runs" / "baseline" / "seed0" / "checkpoints" / "last.ckpt"

    child = subprocess.Popen(runner, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not last.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first = last.stat().st_mtime_ns
        os.killpg(child.pid, signal.SIGTERM)  # the main process, its loader workers, W&B's service
        _, err = child.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err, err[-3000:]
    stops = re.findall(r"Stopped by SIGTERM at global step (\d+); checkpoint (\S+)\.", err)
    assert len(stops) == 1 and stops[0][1] == str(last), err[-3000:]
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == int(stops[0][0]) < 9 and last.stat().st_mtime_ns > first  # written after it

    start = time.monotonic()
    rerun = subprocess.run(runner, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - start
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert torch.load(last, weights_only=False)["global_step"] == 9  # 3 epochs of 3 whole batches of 16
    epochs = re.findall(r"epoch \d+/3 done in (\d+) s \((\d+) img/s\)", rerun.stderr)
    assert epochs, rerun.stderr[-3000:]
    assert all(int(s) <= seconds + 1 and int(rate) > 0 for s, rate in epochs), (epochs, seconds)
