"""True precision (the weights and the batch in bf16 or float64) trains; the loss and error rates are in float32."""

import lightning as L
import pytest
import torch

from alexnet_lightning.model.module import AlexNetModule
from alexnet_lightning.training import cli

DTYPES = {"bf16-true": torch.bfloat16, "64-true": torch.float64}


class BatchType(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, index):
        self.dtype = batch[0].dtype


@pytest.mark.slow
@pytest.mark.parametrize("precision", list(DTYPES))
@pytest.mark.parametrize("layout", ["folders", "prepared"])
def test_true_precision_fits_a_few_steps(precision, layout, tiny_imagefolder, tiny_overlay, tmp_path, monkeypatch):
    """The folder pipeline's float batch is converted by Lightning before the transfer; the prepared shards' uint8
    batch becomes float only in the augmentation after it, which must convert it too."""
    seen = BatchType()
    real = cli.training_callbacks
    monkeypatch.setattr(cli, "training_callbacks", lambda: [*real(), seen])
    data = ["--data.root", str(tiny_imagefolder)]
    if layout == "prepared":
        data += ["--data.prepared", str(tmp_path / "prepared")]
    fit = cli.main(["fit", "--config", "paper", "--config", "quick", "--config", str(tiny_overlay), *data,
                "--trainer.default_root_dir", str(tmp_path), "--trainer.precision", precision,
                "--trainer.max_steps", "2"])
    assert fit.trainer.global_step == 2
    assert seen.dtype == DTYPES[precision] == fit.model.network.features.conv1.weight.dtype
    assert torch.isfinite(fit.trainer.callback_metrics["train/loss"])


def test_loss_and_error_rates_are_computed_in_float32_from_bf16_logits(paper_optimisation, monkeypatch):
    module = AlexNetModule(**paper_optimisation, num_classes=10, width=0.125, input_size=67).to(torch.bfloat16)
    seen = []
    monkeypatch.setattr(module.val_metrics, "update", lambda scores, y: seen.append(scores.dtype))
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    with torch.no_grad():
        loss = module._step("val", (torch.randn(4, 3, 67, 67, dtype=torch.bfloat16), torch.arange(4)))
        assert module(torch.randn(2, 3, 67, 67, dtype=torch.bfloat16)).dtype == torch.bfloat16  # the case at hand
    assert seen == [torch.float32] and loss.dtype == torch.float32


def test_float64_logits_stay_float64(paper_optimisation, monkeypatch):
    module = AlexNetModule(**paper_optimisation, num_classes=10, width=0.125, input_size=67).double()
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    with torch.no_grad():
        assert module._step("val", (torch.randn(2, 3, 67, 67, dtype=torch.float64), torch.arange(2))).dtype == (
            torch.float64)
