"""The files a data module skipped as unreadable: logged per epoch, and bounded (a data set that many files
fail to decode is broken, not a few bad files)."""

from typing import Any

import lightning as L
import torch


class SkippedFiles(L.Callback):
    """Logs the datamodule's count of skipped files as ``data/skipped_files/<stage>``, summed per epoch, and stops a
    training epoch that skipped more than ``max_skipped_fraction`` of its files, or a split that skipped all of them:
    files that many unreadable are a broken data set, not a few bad files.

    The count is taken off each batch in the batch-transfer hooks and summed on the batches' device; it is logged
    once per epoch, at the epoch's end (a ``self.log`` per batch cost about 1 ms a step). The stage is part of the
    name because the training and validation epochs end at the same step and would overwrite each other.
    """

    def __init__(self, datamodule: L.LightningDataModule) -> None:
        self.datamodule = datamodule
        # stage: [files skipped, files read], summed on the batches' device and read at the epoch's end: reading a
        # device tensor every step would make each step wait for the GPU
        self.counts: dict[str, list] = {stage: [0, 0] for stage in ("train", "val", "test")}

    def _count(self, stage: str, batch: Any) -> None:
        self.counts[stage][0] = self.datamodule.skipped_files + self.counts[stage][0]
        self.counts[stage][1] += len(batch[1])

    def _check(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        skipped, read = self.counts[stage]
        self.counts[stage] = [0, 0]
        skipped = torch.as_tensor(skipped, dtype=torch.float32, device=trainer.strategy.root_device)
        counts = torch.stack([skipped, skipped + read])
        skipped, files = trainer.strategy.reduce(counts, reduce_op="sum").tolist()  # every rank stops, or none
        # every process's sum, the same on each (sync_dist: the mean of equal values, without Lightning's warning)
        module.log(f"data/skipped_files/{stage}", skipped, on_step=False, on_epoch=True, sync_dist=True)
        limit = self.datamodule.hparams.max_skipped_fraction if stage == "train" else 1.0
        if files and (skipped == files or skipped > limit * files):
            what = "of the training epoch" if stage == "train" else f"of the {stage} split"
            raise RuntimeError(
                f"{skipped:.0f} of the {files:.0f} files {what} were unreadable (each named in a 'Skipping unreadable "
                f"image' warning, with its reason); "
                + ("every one: " if skipped == files else f"more than --data.max_skipped_fraction {limit}: ")
                + "check the data root, or raise the limit to go on with the files that decode"
            )

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, index: int) -> None:
        self._count("train", batch)

    def on_validation_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, index: int, dataloader_idx: int = 0
    ) -> None:
        self._count("val", batch)

    def on_test_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, index: int, dataloader_idx: int = 0
    ) -> None:
        self._count("test", batch)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._check(trainer, module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._check(trainer, module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._check(trainer, module, "test")
