"""Resume from `last` is exact however an epoch ends: cut short by ``limit_train_batches`` (a count or a fraction), by
``max_steps`` in the middle of an epoch or at its end, by ``max_epochs`` with ``max_steps`` set, or with validations
within an epoch (``val_check_interval``), each with loader processes: the resumed run ends with the weights of a run
that was never interrupted (deterministic mode)."""

import pytest
import torch
import yaml

from alexnet_lightning.training.cli import main
from tests.test_cli import QUICK


def overlay(tmp_path, name: str, trainer: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "seed_everything": 3,
        "trainer": {"deterministic": True, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0, "limit_val_batches": 1, **trainer},
        "data": {"batch_size": 16, "num_workers": 2, "statistics_images": 32},
        "model": {"dropout": 0.5},
    }))
    return str(path)


# 60 training images in batches of 16: 3 batches an epoch (the last partial one dropped). (cut short, its
# uninterrupted run, common settings)
CASES = {
    "limit_count": ({"max_epochs": 1}, {"max_epochs": 2}, {"limit_train_batches": 3}),
    "limit_fraction": ({"max_epochs": 1}, {"max_epochs": 2}, {"limit_train_batches": 0.5}),
    "max_steps_mid_epoch": ({"max_steps": 5, "max_epochs": 3}, {"max_steps": 10, "max_epochs": 3}, {}),
    "max_steps_at_an_epochs_end": ({"max_steps": 6, "max_epochs": 3}, {"max_steps": 10, "max_epochs": 3}, {}),
    "max_epochs_with_max_steps_set": ({"max_steps": 10, "max_epochs": 1}, {"max_steps": 10, "max_epochs": 3}, {}),
    "val_check_within_epoch": ({"max_steps": 5, "max_epochs": 2}, {"max_epochs": 2},
                               {"val_check_interval": 2}),
}


@pytest.mark.parametrize("case", [pytest.param("limit_count"),
                                  *(pytest.param(c, marks=pytest.mark.slow) for c in CASES if c != "limit_count")])
def test_resume_from_last_equals_an_uninterrupted_run(case, tiny_imagefolder, tiny_overlay, tmp_path):
    first, whole, common = CASES[case]
    args = [*QUICK, "--config", str(tiny_overlay), "--data.root", str(tiny_imagefolder)]
    cut = tmp_path / "cut"
    main(["fit", *args, "--config", overlay(tmp_path, "first", {**common, **first}),
          "--trainer.default_root_dir", str(cut)])
    resumed = main(["fit", *args, "--config", overlay(tmp_path, "resume", {**common, **whole}),
                    "--trainer.default_root_dir", str(cut), "--ckpt_path", "last"])
    straight = main(["fit", *args, "--config", overlay(tmp_path, "whole", {**common, **whole}),
                     "--trainer.default_root_dir", str(tmp_path / "whole")])
    assert resumed.trainer.global_step == straight.trainer.global_step > 0
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
