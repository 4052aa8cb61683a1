"""The LightningModule: the paper's objective, optimiser, learning-rate schedule and error rates (Section 5)."""

import inspect
from collections.abc import Mapping
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.optim.lr_scheduler import MultiStepLR, ReduceLROnPlateau
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from alexnet_lightning.data.datamodule import ImageNetDataModule
from alexnet_lightning.model import outcomes
from alexnet_lightning.model.network import AlexNet

# Which reading of each mechanism a run was trained with, where the printed paper and the authors' code differ
# (docs/paper.md#cuda-convnet2). Checkpoints and studies written before the record existed computed the printed
# formulas.
READINGS = {"lrn_formula": AlexNet, "lighting_formula": ImageNetDataModule, "lighting_rescale": ImageNetDataModule}
LEGACY_READINGS = {"lrn_formula": "printed", "lighting_formula": "printed", "lighting_rescale": False}


def readings(model: Mapping[str, Any], data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The readings of a run from its model and data arguments, defaults filled in; those of the data are None
    when the run has no ImageNetDataModule."""
    record = {}
    for name, owner in READINGS.items():
        arguments = model if owner is AlexNet else data
        default = inspect.signature(owner).parameters[name].default
        record[name] = None if arguments is None else arguments.get(name, default)
    return record


def at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """Logits in float32 if they came in a narrower type (bf16 under bf16-mixed or -true), for the loss and the error
    rates: bf16's spacing (0.125 at 20) would make ties at the top-5 boundary. float64 stays float64 (64-true)."""
    return logits.float() if torch.finfo(logits.dtype).bits < 32 else logits


class AlexNetModule(L.LightningModule):
    """AlexNet trained by SGD on softmax cross-entropy, reporting top-1 and top-5 error.

    The paper's values of the optimisation arguments are written once, in configs/paper.yaml.

    Args:
        lr: initial learning rate, the same for all layers.
        momentum: SGD momentum.
        weight_decay: L2 weight decay, applied to every parameter as in the paper's update rule.
        lr_factor: the learning rate is multiplied by this at each reduction.
        lr_reductions: how many times the learning rate is reduced at most.
        lr_schedule: "plateau" reduces it when the validation top-1 error stops improving (the paper), judged after
            each validation; "step" reduces it every `lr_step_epochs` epochs (a deviation, for runs of a known length).
        lr_patience: epochs without improvement of the validation top-1 error before a reduction ("plateau").
        lr_step_epochs: epochs between reductions ("step").
        lr_milestones: the epochs after which the "step" schedule reduces the learning rate, in place of every
            `lr_step_epochs` epochs (as many as `lr_reductions`; None: every `lr_step_epochs`). Like
            `lr_step_epochs`, unused by "plateau", so that a config may switch a preset's schedule to "plateau".
        channels_last: speed option (deviation, same results): keep the network's weights and maps in
            channels-last memory order, which is faster for convolutions on many GPUs and CPUs.
        compile: speed option (deviation, same results): torch.compile the network, LRN fused with the layers
            around it (``network.lrn_by_ops``); needs a C++ compiler (CPU) or Triton (GPU) at the first step. The
            network is compiled in place (``nn.Module.compile``), so its parameters keep their names: a checkpoint
            does not depend on the option. Each input shape gets a static graph (``dynamic=False``): training drops
            its last partial batch (data.datamodule), and validation's and testing's few shapes compile once each.
        compile_mode: torch.compile's mode: "reduce-overhead" also replays the GPU's kernels as CUDA graphs,
            "max-autotune" times kernel choices at the first step (both untested for speed; docs/guide.md,
            Speed options).
        network: the arguments of alexnet_lightning.model.network.AlexNet (lrn, towers, dropout, ...).
    """

    def __init__(
        self,
        lr: float,
        momentum: float,
        weight_decay: float,
        lr_factor: float,
        lr_reductions: int,
        lr_schedule: Literal["plateau", "step"] = "plateau",
        lr_patience: int = 5,
        lr_step_epochs: int = 30,
        lr_milestones: list[int] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default",
        **network: Any,
    ):
        super().__init__()
        if lr_schedule not in ("plateau", "step"):
            raise ValueError(f"lr_schedule must be 'plateau' or 'step', got {lr_schedule!r}")
        for name, value, valid, allowed in (
            ("lr", lr, lr > 0, "positive"),
            ("momentum", momentum, 0 <= momentum < 1, "in [0, 1)"),
            ("weight_decay", weight_decay, weight_decay >= 0, "at least 0"),
            ("lr_factor", lr_factor, 0 < lr_factor < 1, "in (0, 1)"),
            ("lr_reductions", lr_reductions, lr_reductions >= 0, "at least 0"),
            ("lr_patience", lr_patience, lr_patience >= 0, "at least 0"),
            ("lr_step_epochs", lr_step_epochs, lr_step_epochs >= 1, "at least 1"),
        ):
            if not valid:
                raise ValueError(f"{name} must be {allowed}, got {value}")
        milestones_ok = lr_milestones is None or (len(lr_milestones) == lr_reductions
                                                  and lr_milestones == sorted(set(lr_milestones))
                                                  and (not lr_milestones or lr_milestones[0] >= 1))
        if not milestones_ok:
            raise ValueError(f"lr_milestones must be {lr_reductions} increasing epochs from 1 (lr_reductions), "
                             f"got {lr_milestones}")
        self.save_hyperparameters()
        self.network = AlexNet(**network)
        num_classes = self.network.classifier.fc8.out_features
        for stage in ("train", "val", "test"):
            # validate_args=False: the checks run torch.unique on every update, a wait for the GPU each step.
            metrics = {"top1": MulticlassAccuracy(num_classes, top_k=1, average="micro", validate_args=False)}
            if num_classes >= 5:
                metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro", validate_args=False)
            setattr(self, f"{stage}_metrics", MetricCollection(metrics))
        self.train_metrics.persistent(True)  # a checkpoint written mid-epoch holds the epoch's counts so far
        self.test_outcomes: torch.Tensor | None = None  # the last test's per-image rows (outcomes.per_image)
        self._test_rows: list[torch.Tensor] = []

    def readings(self) -> dict[str, Any]:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        return readings(self.hparams, datamodule.hparams if isinstance(datamodule, ImageNetDataModule) else None)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["readings"] = self.readings()
        checkpoint["inference"] = self.inference_record()

    def inference_record(self) -> dict[str, Any]:
        """What classifying with this network needs besides its weights (alexnet_lightning.use.record reads it): the
        network's options, the readings, the data's preprocessing and classes (None without an ImageNetDataModule)
        and the errors measured so far; only tensors, strings, numbers, lists and dicts, which
        ``torch.load(weights_only=True)`` reads."""
        options = inspect.signature(AlexNet).parameters
        network = {k: v for k, v in self.hparams.items() if k in options}
        network["num_classes"] = self.network.classifier.fc8.out_features
        trainer = self._trainer
        datamodule = trainer.datamodule if trainer is not None else None
        data = datamodule.inference_record() if isinstance(datamodule, ImageNetDataModule) else None
        measured = {} if trainer is None else {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("_error") and v.numel() == 1}
        return {"format": 1, "network": network, "readings": self.readings(), "data": data, "measured": measured,
                "epoch": trainer.current_epoch if trainer is not None else None,
                "global_step": trainer.global_step if trainer is not None else None}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        recorded, current = checkpoint.get("readings", LEGACY_READINGS), self.readings()
        differ = {k: v for k, v in recorded.items() if v is not None and current.get(k) not in (None, v)}
        if differ:
            where = f"The checkpoint {self.trainer.ckpt_path}" if self._trainer is not None else "The checkpoint"
            found = ", ".join(f"{k}={v!r}" for k, v in differ.items())
            options = " ".join(f"--{'model' if READINGS[k] is AlexNet else 'data'}.{k} {v}" for k, v in differ.items())
            raise ValueError(
                f"{where} was trained with {found}, this run computes "
                + ", ".join(f"{k}={current[k]!r}" for k in differ)
                + f" (docs/paper.md#cuda-convnet2). To use it, pass {options}; or train afresh."
            )
        state = checkpoint["state_dict"]  # written while compile replaced the network by its compiled wrapper
        checkpoint["state_dict"] = {key.replace("._orig_mod.", ".", 1): value for key, value in state.items()}
        for name, value in self.state_dict().items():  # checkpoints from before the counts were kept
            if name.startswith("train_metrics."):
                checkpoint["state_dict"].setdefault(name, value)

    def configure_model(self) -> None:
        self.apply_speed_options(self.network)

    def apply_speed_options(self, network: nn.Module) -> None:
        """channels_last and compile on ``network`` in place (this module's network, or a strategy's split of it):
        its parameters keep their names and the module keeps its attribute, so checkpoints are the same with or
        without the options. Compilation is lazy: it happens at the first forward."""
        if self.hparams.channels_last:
            network.to(memory_format=torch.channels_last)
        if self.hparams.compile and network._compiled_call_impl is None:  # the hook may run more than once
            network.compile(mode=self.hparams.compile_mode, dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.network(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        return self._step("train", batch)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step("val", batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step("test", batch)

    def _step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor | None:
        x, y = batch
        if y.numel() == 0:  # every file of the batch was unreadable and skipped by the data module
            return None
        if x.dim() == 5:  # ten-crop testing: average the softmax over the crops (Section 4.1)
            batch_size, crops = x.shape[:2]
            probs = at_least_float32(self(x.flatten(0, 1))).softmax(-1).view(batch_size, crops, -1).mean(1)
            scores, loss = probs, F.nll_loss(probs.clamp_min(1e-12).log(), y)
        else:
            scores = at_least_float32(self(x))
            loss = F.cross_entropy(scores, y)
        getattr(self, f"{stage}_metrics").update(scores.detach(), y)
        if stage == "test":
            self._test_rows.append(outcomes.per_image(scores.detach(), y))
        # Not on the progress bar in training: Lightning reads the bar's values on the host after every batch, a wait
        # for the GPU each step. The epoch's mean is in the progress lines (LogLines) all the same.
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=stage != "train",
                 batch_size=len(y))
        return loss

    def on_train_epoch_end(self) -> None:
        self._log_errors("train")

    def on_validation_epoch_end(self) -> None:
        top1_error = self._log_errors("val")
        # The plateau schedule steps here rather than at the epoch's end, where Lightning steps it after the epoch's
        # checkpoints are written (a run resumed from one would lose the step) and not at all in a resumed epoch.
        fitting = self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking
        if self.hparams.lr_schedule == "plateau" and top1_error is not None and fitting:
            self.lr_schedulers().step(top1_error)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if not isinstance(scheduler, ReduceLROnPlateau):  # stepped after each validation instead
            scheduler.step()

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def on_test_epoch_end(self) -> None:
        empty = torch.zeros(0, 4, dtype=torch.long, device=self.device)  # a process that scored no batch
        rows = torch.cat(self._test_rows) if self._test_rows else empty
        loader = self.trainer.test_dataloaders
        loader = loader[0] if isinstance(loader, (list, tuple)) else loader
        self.test_outcomes = outcomes.gather(self.trainer.strategy, rows, len(loader.dataset))
        self._test_rows = []
        self._log_errors("test")

    def _log_errors(self, stage: str) -> torch.Tensor | None:
        """Logs the stage's errors and returns its top-1 error (None if it saw no batch)."""
        metrics = getattr(self, f"{stage}_metrics")
        if not metrics["top1"].update_called:
            return None
        errors = {name: 1 - accuracy for name, accuracy in metrics.compute().items()}
        for name, error in errors.items():
            self.log(f"{stage}/{name}_error", error, prog_bar=name == "top1")
        metrics.reset()
        return errors["top1"]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        # torch's SGD keeps the velocity in gradient units; the paper's v <- 0.9 v - 0.0005 lr w - lr grad keeps
        # it in step units. The two give the same steps while the learning rate is constant.
        optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "plateau":
            min_lr = hp.lr * hp.lr_factor**hp.lr_reductions  # a floor that allows exactly lr_reductions reductions
            scheduler = ReduceLROnPlateau(optimizer, "min", hp.lr_factor, hp.lr_patience, min_lr=min_lr)
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val/top1_error", "interval": "epoch"},
            }
        milestones = hp.get("lr_milestones") or [hp.lr_step_epochs * (i + 1) for i in range(hp.lr_reductions)]
        return {"optimizer": optimizer, "lr_scheduler": MultiStepLR(optimizer, milestones, hp.lr_factor)}
