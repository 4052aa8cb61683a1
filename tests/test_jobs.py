"""`alexnet-ablate --jobs N`: cells side by side in child runners, one progress display, one report; SIGTERM stops
every job with a checkpoint and status 143, and a rerun finishes the study with what was written before."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import yaml

from alexnet_lightning.study import jobs
from tests.conftest import REPO


class SlowSteps(L.Callback):
    """Makes every training step take a while, so that a signal finds the cells mid-fit."""

    def on_train_batch_end(self, *args) -> None:
        time.sleep(0.4)


def ablate(argv: list[str]) -> subprocess.Popen:
    """The runner in a process of its own, with its epoch lines (the tiny overlay turns them off)."""
    shown = Path(argv[argv.index("--results") + 1]).parent / "lines.yaml"
    shown.write_text(yaml.safe_dump({"trainer": {"enable_progress_bar": True}}))
    argv = [*argv, "--config", str(shown)]
    return subprocess.Popen([sys.executable, "-m", "alexnet_lightning.study.runner", *argv], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_default_is_one_single_threaded_job_per_core_at_most_one_per_cell(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
    monkeypatch.setattr(jobs.torch.cuda, "is_available", lambda: False)
    assert jobs.default_jobs(10) == 4 and jobs.default_jobs(2) == 2 and jobs.threads_per_job(4) == 1
    assert jobs.threads_per_job(2) == 2
    monkeypatch.setattr(jobs.torch.cuda, "is_available", lambda: True)
    assert jobs.default_jobs(10) == 1


@pytest.mark.slow
def test_two_jobs_finish_a_study_with_every_cell_and_one_report(study_args, tmp_path):
    run = ablate([*study_args, "--no-lrn", "--seeds", "2", "--jobs", "2"])
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out[-3000:]
    study = tmp_path / "results" / "tiny"
    results = [json.loads(p.read_text()) for p in sorted(study.glob("runs/*/seed*/result.json"))]
    assert sorted((r["variant"], r["seed"]) for r in results) == [("baseline", 0), ("baseline", 1), ("no_lrn", 0),
                                                                  ("no_lrn", 1)]
    table = (study / "ablation.md").read_text()  # one report, printed once
    assert out.count("| baseline |") == table.count("| baseline |") > 0 and out.count("written: ") == 1
    # Two jobs, each cell trained by one of them (which ones: how fast each started); the display named the running
    # cells and their epochs.
    logs = [(study / "jobs" / f"job{k}.log").read_text() for k in (1, 2)]
    assert sum(log.count("] training;") for log in logs) == 4
    assert "2 jobs side by side, 1 thread(s) each" in out
    assert "epoch 1/1, " in out and " img/s" in out and "[job 2] " in out


@pytest.mark.slow
def test_sigterm_stops_every_job_with_143_and_a_rerun_finishes_with_what_was_written(study_args, tmp_path):
    slow = tmp_path / "slow.yaml"
    slow.write_text(yaml.safe_dump({"trainer": {"callbacks": [{"class_path": "tests.test_jobs.SlowSteps"}]}}))
    argv = [*study_args, "--no-lrn", "--seeds", "2", "--jobs", "2", "--config", str(slow), "--epochs", "3"]
    run = ablate(argv)
    shown = []
    for line in run.stdout:  # wait until the cells of both jobs are past their first epoch
        shown.append(line)
        if line.count(": epoch ") == 2:
            break
    run.send_signal(signal.SIGTERM)
    out = "".join(shown) + run.communicate(timeout=300)[0]
    assert run.returncode == 143, out[-3000:]
    study = tmp_path / "results" / "tiny"
    stopped = [p.parent.parent for p in study.glob("runs/*/seed*/checkpoints/last.ckpt")]
    assert len(stopped) == 2 and not any((cell / "result.json").exists() for cell in stopped), out[-3000:]
    logs = "".join((study / "jobs" / f"job{k}.log").read_text() for k in (1, 2))
    assert logs.count("Stopped by SIGTERM at global step") == 2
    finished = {p: p.stat().st_mtime_ns for p in study.glob("runs/*/seed*/result.json")}

    rerun = ablate(argv)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out[-3000:]
    assert len(list(study.glob("runs/*/seed*/result.json"))) == 4 and (study / "ablation.json").is_file()
    assert out.count("resuming from") == 2  # the stopped cells went on from their checkpoints
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished.items())  # and finished ones were kept
