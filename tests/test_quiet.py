"""A newcomer's terminal: the library messages that say nothing about the run are gone, filtered narrowly (the same
text from another module, or another text from the same module, still shows), and the run's own lines remain."""

import logging
import os
import subprocess
import sys
import warnings

import pytest

from alexnet_lightning.training.quiet import quiet_libraries
from tests.conftest import REPO

NOISE = [
    "args parameter is intended",  # LightningCLI, with the whole argument list
    "litlogger",  # Lightning's tip
    "tensorboardX",  # Lightning's note that TensorBoard is not installed
    "anonymous setting has no effect",  # wandb
    "isinstance(treespec, LeafSpec)",  # Lightning on a newer torch
    "Run history:",  # wandb's per-run printout, which the table holds
    "Test metric",  # Lightning's test table, which the result and the study's table hold
]


def run(args: list[str], tmp_path) -> str:
    srun = tmp_path / "bin" / "srun"  # as on a cluster's login node: Lightning then hints at srun
    srun.parent.mkdir(exist_ok=True)
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
           "PATH": f"{srun.parent}{os.pathsep}{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    env.pop("WANDB_SILENT", None)
    done = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)  # one stream, in the order printed
    out = done.stdout
    assert done.returncode == 0, out
    return out


def test_library_noise_is_filtered_by_message_and_module():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        message = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
        warnings.warn_explicit(message, FutureWarning, "_pytree.py", 1, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(message, FutureWarning, "mine.py", 1, module="mine")
        warnings.warn_explicit("another", FutureWarning, "_pytree.py", 2, module="lightning.pytorch.utilities._pytree")
    assert [str(w.message) for w in caught] == [message, "another"]
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tip = logger.makeRecord(logger.name, logging.INFO, "x.py", 1, "💡 Tip: For seamless cloud logging ...", (), None)
    other = logger.makeRecord(logger.name, logging.INFO, "x.py", 1, "GPU available: False", (), None)
    assert not logger.filter(tip) and logger.filter(other)


@pytest.mark.slow
def test_a_study_prints_its_cells_table_and_files_without_library_noise(study_args, tmp_path):
    out = run(["-m", "alexnet_lightning.study.runner", "--no-lrn", *study_args], tmp_path)
    found = [n for n in NOISE if n in out]
    assert not found, f"library messages in a study's output: {found}\n{out}"
    # The cells are started by the runner or by an array's tasks, never by srun: Lightning's hint would be wrong.
    assert "The `srun` command is available" not in out, out
    checking = out[:out.index("study tiny (quick preset)")]  # the runner builds each variant's CLI to check it
    assert "Seed set to" not in checking and "GPU available" not in checking, checking
    for line in ("study tiny (quick preset)", "[baseline seed 0] training", "[no_lrn seed 0] training", "| no_lrn |",
                 "written: "):
        assert line in out, out


@pytest.mark.slow
def test_a_fit_prints_no_library_noise(tiny_imagefolder, tiny_overlay, tmp_path):
    out = run(["-m", "alexnet_lightning.training.cli", "fit", "--config", "quick", "--config", str(tiny_overlay),
               "--data.root", str(tiny_imagefolder), "--trainer.default_root_dir", str(tmp_path / "run")], tmp_path)
    found = [n for n in NOISE if n in out]
    assert not found, f"library messages in a fit's output: {found}\n{out}"
    assert "max_epochs=1` reached" in out, out
    assert "The `srun` command is available" in out  # a fit of one's own: srun may be what the user meant
