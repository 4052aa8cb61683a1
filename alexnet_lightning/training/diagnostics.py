"""Was the mechanism under study active? Diagnostics that make each row of the ablation table interpretable.

- LRN: for each LRN layer, the mean factor d^beta (d = k + alpha / n * sum a^2, the layer's own per-term weight) by
  which it divides its input, at the start of training and at the end of each epoch. Close to k^beta everywhere,
  LRN divides every unit by nearly the same constant, which the next layer's weights absorb: removing it then
  measures nothing about LRN (the layer is "inert").
- PCA lighting: the standard deviation of the added colour noise relative to that of the pixels.
- From the logged per-epoch errors: the gap between validation and training error at the end (the overfitting the
  dropout row is about) and the first epoch at which the training error reaches a target (the paper measures tanh
  by the time to 25% training error, Section 3.1).

``Diagnostics`` (a Lightning callback the CLI adds to every run) logs the first two as ``diag/...`` metrics and
keeps them in its checkpointed state; ``cell_diagnostics`` collects everything for a cell of the ablation study.
"""

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from alexnet_lightning.data.transforms import lighting_weights
from alexnet_lightning.model.network import LocalResponseNorm

# A layer counts as inert when its mean factor is within this fraction of k^beta, at the start and at the end of
# training. Every unit's factor is at least k^beta, so a mean excess of 2% bounds the mean relative difference
# between LRN and a division by the constant k^beta by 2%: the competition between neighbouring maps that LRN is for
# (Section 3.3) changes their responses by a few percent at most, which the next layer's weights can mimic. The
# paper's network at initialisation on raw pixels is at 0.3%; the quick preset's LRN at 5-35%.
INERT_WITHIN = 0.02
# The training top-1 error whose first epoch is reported (the running error of the epoch, with dropout and
# augmentation). The paper's tanh measure is 25% on CIFAR-10; the quick preset's baseline gets below 80% on the
# 30-class stand-in (chance: 96.7%) after about 6 of its 10 epochs, so the default tells the variants apart by when
# they got there (not reached: None). experiments/ablate.py --train-error-target sets another.
TRAIN_ERROR_TARGET = 0.8


def lrn_factor(layer: LocalResponseNorm, a: Tensor) -> float:
    """The mean of d^beta over all units of the input a [N, C, H, W] of ``layer``, with its own per-term weight
    (alpha / n for the cuda-convnet2 formula, alpha for the printed one) and its window within each tower."""
    per_term = layer.alpha / layer.size if layer.formula == "cuda-convnet2" else layer.alpha
    n, c, h, w = a.shape
    squares = a.double().square().reshape(n * layer.towers, 1, c // layer.towers, h, w)
    before, after = layer.size // 2, (layer.size - 1) // 2  # maps i - before .. i + after, as the layer sums
    window = F.avg_pool3d(F.pad(squares, (0, 0, 0, 0, before, after)), (layer.size, 1, 1), stride=1) * layer.size
    return float((layer.k + per_term * window).pow(layer.beta).mean())


def lrn_factors(network: torch.nn.Module, x: Tensor) -> dict[str, float]:
    """{conv layer: mean d^beta} for each LRN layer of an AlexNet (or one tower of it), on the batch x.

    Runs the feature layers up to the last LRN without gradients; features have no dropout, so train and eval
    mode agree, in the network's own precision (bf16-true, 64-true); a compiled network runs its layers eagerly here."""
    layers = list(network.features.named_children())
    last = max((i for i, (_, layer) in enumerate(layers) if isinstance(layer, LocalResponseNorm)), default=-1)
    factors = {}
    with torch.no_grad():
        x = x.to(next(network.parameters()).dtype)
        for name, layer in layers[: last + 1]:
            if isinstance(layer, LocalResponseNorm):
                factors[name.removesuffix("_lrn")] = lrn_factor(layer, x)
            x = layer(x)
    return factors


def lrn_inert(start: dict[str, float], end: dict[str, float], k_beta: float) -> bool | None:
    """Every layer's factor within INERT_WITHIN of k^beta at the start and at the end; None without measures."""
    factors = [*start.values(), *end.values()]
    return all(f / k_beta - 1 < INERT_WITHIN for f in factors) if factors else None


def pca_noise_ratio(eigval: Tensor, lighting_std: float | None, formula: str = "cuda-convnet2") -> float:
    """The standard deviation of the PCA lighting noise over that of the pixels, both over the three colours.

    The noise sum_i alpha_i w_i p_i (alpha_i ~ N(0, std^2), orthonormal p_i, ``transforms.lighting_weights``) has
    total variance std^2 sum_i w_i^2; the pixels have sum_i lambda_i, the trace of their RGB covariance. Both are in
    [0, 1]-scale units, so the ratio is the same at any value_scale and under cuda-convnet2's rescale (which scales
    image and noise alike): std for the cuda-convnet2 formula (w_i = sqrt(lambda_i)), smaller for the printed one.
    0 without lighting."""
    if lighting_std is None:
        return 0.0
    eigval = eigval.double().clamp_min(0)
    weights = lighting_weights(eigval, formula)
    return float(lighting_std * torch.sqrt(weights.square().sum() / eigval.sum()))


def epochs_to(errors: list[tuple[int, float]], target: float) -> int | None:
    """The number of epochs after which the training error first was at or below target, from per-epoch
    (0-based epoch, error) pairs; None when it never was."""
    return next((epoch + 1 for epoch, error in sorted(errors) if error <= target), None)


def val_minus_train(curves: dict[str, list[tuple[int, float]]]) -> float | None:
    """Validation minus training top-1 error at the last epoch that has both (positive: worse on unseen images).

    The training error is the running one of the epoch, with augmentation and dropout on."""
    train, val = dict(curves.get("train/top1_error", [])), dict(curves.get("val/top1_error", []))
    common = sorted(train.keys() & val.keys())
    return val[common[-1]] - train[common[-1]] if common else None


class Diagnostics(L.Callback):
    """Logs the LRN factors (``diag/<conv>_lrn_factor_start``, ``diag/<conv>_lrn_factor_end`` at the end of each
    epoch, the last one the end of training), ``diag/lrn_inert`` and ``diag/pca_noise_ratio``; ``summary()`` gives
    them for result files. The start is measured on the first training batch before any step, the end of an epoch
    on its last batch: one forward pass of the layers up to the last LRN per epoch, without gradients. Values are
    averaged over processes at the end of each epoch (towers hold half the maps each, replicas see different
    batches), in one collective that every process reaches."""

    def __init__(self) -> None:
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}
        self.k_beta: float | None = None
        self.noise_ratio: float | None = None
        self._measured: dict[str, dict[str, float]] = {"start": {}, "end": {}}  # this process's, this epoch
        self._last_batch: Tensor | None = None

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        hparams = getattr(datamodule, "hparams", {})
        if "pca_lighting" in hparams and hasattr(datamodule, "statistics"):
            std = hparams["lighting_std"] if hparams["pca_lighting"] else None
            self.noise_ratio = pca_noise_ratio(datamodule.statistics().eigval, std, hparams["lighting_formula"])
        layers = [m for m in module.network.modules()
                  if isinstance(m, LocalResponseNorm)]
        self.k_beta = layers[0].k ** layers[0].beta if layers else None

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        x = batch[0]
        if len(x) == 0:  # every file of the batch was unreadable
            return
        if not self.start and not self._measured["start"] and trainer.global_step == 0:
            self._measured["start"] = lrn_factors(module.network, x)
        self._last_batch = x

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._last_batch is not None:
            self._measured["end"] = lrn_factors(module.network, self._last_batch)
            self._last_batch = None
        self._average(trainer, module)
        metrics = self.summary()
        if trainer.current_epoch > 0:  # the start once, in the first epoch's row
            metrics = {k: v for k, v in metrics.items() if not k.endswith("_start")}
        for key, value in metrics.items():
            if value is not None:
                module.log(key, float(value))

    def _average(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Each phase's factors averaged over the processes that measured them."""
        names = [name.removesuffix("_lrn") for name, m in module.network.features.named_children()
                 if isinstance(m, LocalResponseNorm)]
        if not names:
            return
        local = torch.tensor([[self._measured[phase].get(name, math.nan) for name in names]
                              for phase in ("start", "end")], dtype=torch.float64)
        sums = torch.stack([local.nan_to_num(0.0), (~local.isnan()).double()]).to(module.device)
        sums = trainer.strategy.reduce(sums, reduce_op="sum").cpu()
        for phase, totals, counts in zip(("start", "end"), sums[0], sums[1]):
            if counts.min() > 0:
                setattr(self, phase, {name: float(t / c) for name, t, c in zip(names, totals, counts)})
        self._measured = {"start": {}, "end": {}}

    def summary(self) -> dict[str, float | bool | None]:
        """The diagnostics so far, under their logged names (LRN entries only for a network with LRN)."""
        result: dict[str, float | bool | None] = {"diag/pca_noise_ratio": self.noise_ratio}
        for phase, factors in (("start", self.start), ("end", self.end)):
            result |= {f"diag/{name}_lrn_factor_{phase}": value for name, value in factors.items()}
        if self.k_beta is not None:
            result["diag/lrn_k_beta"] = self.k_beta
            result["diag/lrn_inert"] = lrn_inert(self.start, self.end, self.k_beta)
        return result

    def state_dict(self) -> dict[str, Any]:
        # Checkpointed within the first epoch, the start is this process's own measure, not yet averaged.
        start = self.start or self._measured["start"]
        return {"start": start, "end": self.end, "k_beta": self.k_beta, "noise_ratio": self.noise_ratio}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start, self.end = dict(state["start"]), dict(state["end"])
        self.k_beta, self.noise_ratio = state["k_beta"], state["noise_ratio"]


def cell_diagnostics(
    trainer: L.Trainer, curves: dict[str, list[tuple[int, float]]], target: float = TRAIN_ERROR_TARGET
) -> dict[str, Any]:
    """A finished cell's diagnostics: the callback's, and the error gap and epochs to ``target`` from its curves
    (``report.read_curves``, over all attempts of a resumed run)."""
    found = [c for c in trainer.callbacks if isinstance(c, Diagnostics)]
    result: dict[str, Any] = found[0].summary() if found else {}
    gap = val_minus_train(curves)
    result["diag/val_minus_train_top1"] = None if gap is None or math.isnan(gap) else gap
    result["diag/train_error_target"] = target
    result["diag/epochs_to_train_error_target"] = epochs_to(curves.get("train/top1_error", []), target)
    return result
