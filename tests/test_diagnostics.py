"""The diagnostics that make a row of the ablation table interpretable, each against an independent computation."""

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from alexnet_lightning.model.module import AlexNetModule
from alexnet_lightning.model.network import AlexNet, LocalResponseNorm
from alexnet_lightning.model.towers import TowerParallelStrategy
from alexnet_lightning.training.diagnostics import (
    INERT_WITHIN,
    Diagnostics,
    epochs_to,
    lrn_factor,
    lrn_factors,
    lrn_inert,
    pca_noise_ratio,
    val_minus_train,
)
from tests.test_towers import BATCH, EXACT, data, join, spawn, trainer

K_BETA = 2.0**0.75


def divisor_by_loops(a: torch.Tensor, size: int, per_term: float, towers: int) -> torch.Tensor:
    """d^beta unit by unit: k + per_term * sum of a_j^2 over maps j = i - 2 .. i + 2 of i's tower (beta 0.75, k 2)."""
    n, c, h, w = a.shape
    per_tower = c // towers
    d = torch.empty_like(a, dtype=torch.float64)
    for i in range(c):
        first = i // per_tower * per_tower
        window = range(max(first, i - size // 2), min(first + per_tower, i + (size - 1) // 2 + 1))
        d[:, i] = 2.0 + per_term * sum(a[:, j].double() ** 2 for j in window)
    return d**0.75


@pytest.mark.parametrize("formula, per_term", [("cuda-convnet2", 1e-4 / 5), ("printed", 1e-4)])
@pytest.mark.parametrize("towers", [1, 2])
def test_the_lrn_factor_is_the_mean_divisor_the_layer_divides_by(formula, per_term, towers):
    layer = LocalResponseNorm(towers, formula=formula)
    a = 300 * torch.rand(3, 12, 4, 5, generator=torch.Generator().manual_seed(0)) + 1  # raw-pixel-sized activations
    expected = divisor_by_loops(a, 5, per_term, towers).mean().item()
    assert lrn_factor(layer, a) == pytest.approx(expected, rel=1e-12)
    # And what the layer itself divided by, read off its output: a / b = d^beta (all inputs positive here).
    assert lrn_factor(layer, a) == pytest.approx((a.double() / layer(a.double())).mean().item(), rel=1e-9)
    assert expected / K_BETA - 1 > 0.05  # a strong LRN: the check above sees the window's weight


def test_lrn_factors_run_the_layers_before_each_lrn():
    torch.manual_seed(0)
    network = AlexNet(num_classes=10, width=0.25, input_size=67)
    x = 255 * torch.randn(4, 3, 67, 67)
    seen = {}
    for name in ("conv1_lrn", "conv2_lrn"):
        getattr(network.features, name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: i[0]}))
    network(x)
    factors = lrn_factors(network, x)
    assert factors == {name: pytest.approx(lrn_factor(getattr(network.features, f"{name}_lrn"), seen[f"{name}_lrn"]))
                       for name in ("conv1", "conv2")}
    assert lrn_factors(AlexNet(num_classes=10, width=0.25, input_size=67, lrn=False), x) == {}


def test_a_layer_is_inert_when_its_factor_stays_within_the_margin_of_k_beta():
    near, far = K_BETA * (1 + INERT_WITHIN / 2), K_BETA * (1 + 2 * INERT_WITHIN)
    assert lrn_inert({"conv1": near, "conv2": near}, {"conv1": near, "conv2": near}, K_BETA) is True
    assert lrn_inert({"conv1": near, "conv2": near}, {"conv1": far, "conv2": near}, K_BETA) is False  # active later
    assert lrn_inert({"conv1": near}, {"conv1": near, "conv2": far}, K_BETA) is False
    assert lrn_inert({}, {}, K_BETA) is None


@pytest.mark.parametrize("formula", ["cuda-convnet2", "printed"])
def test_the_pca_noise_ratio_matches_a_monte_carlo_estimate(formula):
    generator = torch.Generator().manual_seed(0)
    eigval = torch.tensor([0.06, 0.012, 0.003], dtype=torch.float64)
    eigvec = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))[0]
    draws = 400_000
    pixels = torch.randn(draws, 3, generator=generator, dtype=torch.float64) * eigval.sqrt() @ eigvec.T
    weights = eigval.sqrt() if formula == "cuda-convnet2" else eigval  # what each alpha_i multiplies (Section 4.1)
    noise = (torch.randn(draws, 3, generator=generator, dtype=torch.float64) * 0.1 * weights) @ eigvec.T
    estimate = (noise.square().sum(1).mean() / pixels.square().sum(1).mean()).sqrt().item()
    assert pca_noise_ratio(eigval, 0.1, formula) == pytest.approx(estimate, rel=0.01)
    assert pca_noise_ratio(eigval, None, formula) == 0.0
    assert pca_noise_ratio(eigval, 0.1) == pytest.approx(0.1)  # the authors' code: lighting_std by construction


def test_epochs_to_a_training_error_and_the_final_gap():
    assert epochs_to([(0, 0.9), (1, 0.6), (2, 0.5), (3, 0.4)], 0.5) == 3  # reached in the third epoch
    assert epochs_to([(0, 0.9), (1, 0.6)], 0.5) is None
    curves = {"train/top1_error": [(0, 0.8), (1, 0.3), (2, 0.2)], "val/top1_error": [(0, 0.7), (1, 0.35)]}
    assert val_minus_train(curves) == pytest.approx(0.05)  # the last epoch with both
    assert val_minus_train({}) is None


def test_the_callback_measures_at_the_first_step_and_at_each_epoch_end(tmp_path):
    torch.manual_seed(0)
    module = AlexNetModule(0.01, 0.9, 5e-4, 0.1, 3, lr_schedule="step", num_classes=10, width=0.25, input_size=67)
    generator = torch.Generator().manual_seed(1)
    images = 255 * torch.randn(24, 3, 67, 67, generator=generator)
    data = DataLoader(TensorDataset(images, torch.randint(10, (24,), generator=generator)), batch_size=8)
    initial = lrn_factors(module.network, images[:8])
    callback = Diagnostics()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, data)
    assert callback.start == pytest.approx(initial, rel=1e-9)  # the first batch, before any step
    assert callback.end == pytest.approx(lrn_factors(module.network, images[16:]), rel=1e-9)  # the last batch
    summary = callback.summary()
    assert summary["diag/conv1_lrn_factor_start"] == callback.start["conv1"]
    assert summary["diag/lrn_k_beta"] == pytest.approx(K_BETA)
    assert summary["diag/lrn_inert"] is lrn_inert(callback.start, callback.end, K_BETA)
    assert summary["diag/pca_noise_ratio"] is None  # no ImageNetDataModule
    assert trainer.callback_metrics["diag/conv2_lrn_factor_end"].item() == pytest.approx(callback.end["conv2"])
    restored = Diagnostics()
    restored.load_state_dict(callback.state_dict())
    assert restored.summary() == summary
    early = Diagnostics()  # checkpointed in the first epoch, before the start was averaged at the epoch's end
    early._measured["start"] = dict(initial)
    early.load_state_dict(early.state_dict())
    assert early.start == initial


def _towers_worker(rank: int, world_size: int, port: int, optimisation: dict, folder: Path) -> None:
    join(rank, world_size, port)
    torch.manual_seed(0)
    callback = Diagnostics()
    run = trainer(world_size, 1, strategy=TowerParallelStrategy(), callbacks=[callback])
    run.fit(AlexNetModule(**optimisation, **EXACT), data(BATCH), data(BATCH))
    torch.save(callback.summary(), folder / f"rank{rank}.pt")


@pytest.mark.slow
def test_under_the_two_tower_strategy_the_factors_are_the_whole_layers(paper_optimisation, tmp_path):
    torch.manual_seed(0)
    callback = Diagnostics()
    trainer(1, 1, callbacks=[callback]).fit(AlexNetModule(**paper_optimisation, **EXACT), data(BATCH, shuffled=True),
                                            data(BATCH))
    spawn(_towers_worker, 2, paper_optimisation, tmp_path)
    def excess(summary: dict) -> dict:  # the factors' excess over k^beta, small on these unit-scale images
        return {k: v - K_BETA for k, v in summary.items() if "_lrn_factor_" in k}

    expected = excess(callback.summary())
    assert len(expected) == 4 and all(v > 1e-6 for v in expected.values())
    for rank in range(2):  # each tower measures its half of the maps; averaged, they are the whole layer's
        towers = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert excess(towers) == pytest.approx(expected, rel=1e-3)
        assert towers["diag/lrn_inert"] is callback.summary()["diag/lrn_inert"]
