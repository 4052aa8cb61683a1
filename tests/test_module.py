import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from alexnet_lightning.model.module import AlexNetModule

SMALL = {"num_classes": 10, "width": 0.125, "input_size": 67}


def test_paper_config_gives_the_paper_optimiser(paper_optimisation):
    module = AlexNetModule(**paper_optimisation, **SMALL)
    config = module.configure_optimizers()
    optimizer = config["optimizer"]
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 0.0005)
    assert config["lr_scheduler"]["monitor"] == "val/top1_error"
    assert module.network.classifier.fc8.out_features == 10


def test_plateau_schedule_divides_by_ten_at_most_three_times(paper_optimisation):
    module = AlexNetModule(**paper_optimisation, **SMALL, lr_patience=0)
    config = module.configure_optimizers()
    scheduler, optimizer = config["lr_scheduler"]["scheduler"], config["optimizer"]
    lrs = []
    for _ in range(8):  # the validation error never improves
        scheduler.step(0.5)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == 0.01  # the first value sets the best so far
    assert sorted(set(lrs), reverse=True) == pytest.approx([0.01, 1e-3, 1e-4, 1e-5])


def step_schedule_lrs(module: AlexNetModule, epochs: int) -> list[float]:
    """The learning rate of each epoch under the module's step schedule."""
    config = module.configure_optimizers()
    scheduler, optimizer = config["lr_scheduler"], config["optimizer"]
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_step_schedule_is_an_option(paper_optimisation):
    module = AlexNetModule(**paper_optimisation | {"lr_schedule": "step", "lr_step_epochs": 2}, **SMALL)
    assert step_schedule_lrs(module, 10) == pytest.approx([0.01] * 2 + [1e-3] * 2 + [1e-4] * 2 + [1e-5] * 4)


def test_step_schedule_at_named_epochs(paper_optimisation):
    module = AlexNetModule(**paper_optimisation | {"lr_schedule": "step", "lr_milestones": [3, 4, 7]}, **SMALL)
    assert step_schedule_lrs(module, 8) == pytest.approx([0.01] * 3 + [1e-3] + [1e-4] * 3 + [1e-5])
    for bad in ([3, 4], [4, 3, 7], [0, 3, 7]):  # not lr_reductions of them, not increasing, before the first epoch
        with pytest.raises(ValueError, match="lr_milestones"):
            AlexNetModule(**paper_optimisation | {"lr_schedule": "step", "lr_milestones": bad}, **SMALL)


def test_ten_crop_test_step_averages_the_softmax_over_crops(paper_optimisation):
    torch.manual_seed(0)
    module = AlexNetModule(**paper_optimisation, **SMALL, init="kaiming").eval()
    crops = torch.randn(3, 10, 3, 67, 67)
    labels = torch.tensor([1, 2, 3])
    with torch.no_grad():
        loss = module._step("test", (crops, labels))
        probs = torch.stack([module(crops[:, i]).softmax(-1) for i in range(10)]).mean(0)
    expected = -probs[torch.arange(3), labels].log().mean()
    torch.testing.assert_close(loss, expected)
    single = module.network(crops[:, 0]).softmax(-1)
    assert not torch.allclose(probs, single)  # the crops did differ


def test_an_empty_batch_is_skipped(paper_optimisation):
    module = AlexNetModule(**paper_optimisation, **SMALL)
    assert module.training_step((torch.empty(0, 3, 67, 67), torch.empty(0, dtype=torch.long)), 0) is None


def test_a_few_steps_log_errors_and_lower_the_loss(paper_optimisation, tmp_path):
    torch.manual_seed(0)
    # Two classes told apart by the sign of the image: learnable in a few steps.
    x = torch.randn(64, 3, 67, 67).abs() * torch.tensor([1.0, -1.0]).repeat(32)[:, None, None, None]
    y = (x.mean((1, 2, 3)) < 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    args = paper_optimisation | {"lr_schedule": "step", "lr": 0.05}
    module = AlexNetModule(**args, num_classes=2, width=0.125, input_size=67, init="kaiming", dropout=0)
    trainer = L.Trainer(max_epochs=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(module, loader, loader)
    metrics = trainer.callback_metrics
    assert {"train/loss_epoch", "val/loss", "train/top1_error", "val/top1_error"} <= set(metrics)
    assert "val/top5_error" not in metrics  # two classes have no top-5
    assert metrics["val/top1_error"] < 0.2


def test_a_checkpoint_records_the_readings_and_one_from_before_them_is_refused(paper_optimisation):
    from alexnet_lightning.model.module import LEGACY_READINGS

    module = AlexNetModule(**paper_optimisation, **SMALL)
    checkpoint = {"state_dict": {}}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["readings"] == {"lrn_formula": "cuda-convnet2", "lighting_formula": None,
                                      "lighting_rescale": None}  # no data module: its readings are unknown
    module.on_load_checkpoint(checkpoint)  # the same readings load
    # Written before the readings were recorded: the printed formulas, which this run does not compute.
    # (Without a data module only the network's reading is compared.)
    with pytest.raises(ValueError, match=r"trained with lrn_formula='printed', this run computes "
                                         r"lrn_formula='cuda-convnet2'.*pass --model.lrn_formula printed;"):
        module.on_load_checkpoint({"state_dict": {}})
    printed = AlexNetModule(**paper_optimisation, **SMALL, lrn_formula="printed")
    printed.on_load_checkpoint({"state_dict": {}})
    assert set(LEGACY_READINGS) == set(checkpoint["readings"])
