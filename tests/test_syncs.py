"""No read of a tensor on the host in a training step: on a GPU each such read waits for the step's kernels."""

import traceback
from collections import Counter

import pytest
import torch

from alexnet_lightning.training.cli import main

READS = ("item", "__bool__", "tolist", "__float__", "__int__")  # what reads a tensor's value on the host


def fit_counting_reads(steps: int, common: list[str], folder, monkeypatch) -> Counter:
    counts: Counter = Counter()
    with monkeypatch.context() as patch:
        for name in READS:
            real = getattr(torch.Tensor, name)

            def counted(self, *args, real=real, name=name):
                # Not the loader's reads of its own host tensors (in its workers, or here with num_workers 0), nor the
                # in-memory path's draws of each sample's crop and mirror from its seed: a CPU generator's numbers,
                # the loader's work done in the main process (data/in_memory.py), never a device tensor
                stack = traceback.extract_stack()
                ours = [frame.filename for frame in stack if "alexnet_lightning" in frame.filename]
                host = ours and ours[-1].endswith("data/in_memory.py")  # the seeds and draws stay on the host
                if not host and not any("torch/utils/data/" in frame.filename for frame in stack):
                    counts[name] += 1
                return real(self, *args)

            patch.setattr(torch.Tensor, name, counted)
        fit = main(["fit", *common, "--trainer.default_root_dir", str(folder), "--trainer.max_steps", str(steps)])
    assert fit.trainer.global_step == steps
    return counts


@pytest.mark.slow
def test_a_training_step_reads_no_tensor_on_the_host(tiny_imagefolder, tiny_overlay, tmp_path, monkeypatch):
    """Two fits alike but for their number of steps (within one epoch, no validation): what a step reads is the
    difference. The CLI's callbacks (the non-finite-loss stop, checkpoints, progress lines, diagnostics) included."""
    common = ["--config", "paper", "--config", "quick", "--config", str(tiny_overlay), "--data.root",
              str(tiny_imagefolder), "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "true"]
    few = fit_counting_reads(1, common, tmp_path / "few", monkeypatch)
    more = fit_counting_reads(3, common, tmp_path / "more", monkeypatch)
    assert sum(few.values()) > 0  # the hook counts (the end of fit reads the metrics)
    per_step = {name: (more[name] - few[name]) / 2 for name in READS}  # once-per-fit reads may differ by one
    assert all(count <= 0 for count in per_step.values()), str(per_step)
