"""ImageNet (or the built-in stand-in) as a LightningDataModule, with the paper's pipeline.

The data root is one of:
- ``None``: the built-in stand-in (``builtin.py``), generated on first use into the cache folder;
- an ImageFolder layout, ``<root>/train/<class>/<image>`` and ``<root>/val/<class>/<image>``;
- the official ILSVRC-2012 archives (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar,
  ILSVRC2012_devkit_t12.tar.gz), which ``torchvision.datasets.ImageNet`` extracts on first use.

ImageNet's test labels are not public, so the test split is the validation folder, with ten crops.
"""

import os
import struct
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from torchvision.datasets import DatasetFolder, ImageFolder, ImageNet
from torchvision.datasets.folder import find_classes
from tqdm import tqdm

from alexnet_lightning import builtin
from alexnet_lightning.statistics import Statistics, load_or_compute
from alexnet_lightning.transforms import EvalPreset, TrainPreset, load_rgb, rescale_and_centre

ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz")
SPLITS = ("train", "val")
# What PIL raises on a file it cannot decode: not an image, zero bytes, truncated, corrupt headers.
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


class SkipUnreadable(Dataset):
    """An image folder whose unreadable files give ``None``, with a warning naming the file."""

    def __init__(self, folder: DatasetFolder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | None:
        try:
            return self.folder[index]
        except UNREADABLE as err:
            warnings.warn(f"Skipping unreadable image {self.folder.samples[index][0]}: {err}", stacklevel=2)
            return None


def collate_skipping_unreadable(
    batch: list[tuple[Tensor, int] | None], image_shape: tuple[int, ...]
) -> tuple[Tensor, Tensor, Tensor]:
    """Stacks the readable samples and appends the number of unreadable files dropped from the batch.

    A batch of only unreadable files gives empty [0, *image_shape] images and [0] labels.
    """
    samples = [sample for sample in batch if sample is not None]
    skipped = torch.tensor(len(batch) - len(samples))
    if not samples:
        return torch.empty(0, *image_shape), torch.empty(0, dtype=torch.int64), skipped
    images, labels = default_collate(samples)
    return images, labels, skipped


def _layout(root: Path) -> Literal["archives", "folders"]:
    """Which kind of data root ``root`` is; raises, naming the path, if it is neither."""
    if not root.is_dir():
        raise FileNotFoundError(f"Data root {root} does not exist or is not a folder.")
    if all((root / archive).is_file() for archive in ARCHIVES):
        return "archives"
    missing = [str(root / split) for split in SPLITS if not (root / split).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"Data root {root} is neither an ImageFolder layout (train/<class>/<image> and "
            f"val/<class>/<image>; missing {', '.join(missing)}) nor a folder with the ILSVRC-2012 "
            f"archives ({', '.join(ARCHIVES)})."
        )
    return "folders"


class _LogSkippedFiles(L.Callback):
    """Logs the datamodule's count of skipped files as ``data/skipped_files/<stage>``, summed per epoch.

    Lightning forbids ``self.log`` inside the batch-transfer hooks, where the count is taken off the
    batch, so it is logged from the next hook that allows it. The stage is part of the name because
    the training and validation epochs end at the same step and would overwrite each other.
    """

    def __init__(self, datamodule: "ImageNetDataModule") -> None:
        self.datamodule = datamodule

    def _log(self, module: L.LightningModule, stage: str) -> None:
        skipped = self.datamodule.skipped_files.float()
        module.log(
            f"data/skipped_files/{stage}", skipped, reduce_fx="sum", on_step=False, on_epoch=True
        )  # this process's count: a sync here would deadlock with the metrics' own sync at epoch end

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, index: int) -> None:
        self._log(module, "train")

    def on_validation_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, index: int, dataloader_idx: int = 0
    ) -> None:
        self._log(module, "val")

    def on_test_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, index: int, dataloader_idx: int = 0
    ) -> None:
        self._log(module, "test")


class ImageNetDataModule(L.LightningDataModule):
    """ImageNet, an ImageFolder or the built-in stand-in, through the paper's pipeline (``transforms.py``).

    Batches are ``(images [B, 3, S, S] float32, labels [B] int64)`` for training and validation and
    ``(crops [B, 10, 3, S, S], labels [B])`` for testing, S = ``crop_size``. Unreadable files are
    skipped with a warning and counted in the logged metrics ``data/skipped_files/<stage>``; a batch may
    therefore hold fewer than ``batch_size`` samples, or none.

    Args:
        batch_size: Images per batch (the paper: 128).
        root: Data root: an ImageFolder layout (``train/<class>/*``, ``val/<class>/*``), or a folder
            with the ILSVRC-2012 archives (extracted on first use). ``None``: the built-in stand-in,
            generated on first use into ``$ALEXNET_LIGHTNING_CACHE`` (default ``~/.cache/alexnet-lightning``).
        resize_size: Side of the central square the images are rescaled to once (the paper: 256).
        crop_size: Side of the crops the network sees. The paper writes 224, but its layer sizes need
            227, Caffe's choice.
        mean: What is subtracted: ``"image"``, the paper's per-pixel mean image of the training set;
            ``"channel"``, its per-channel mean.
        pca_lighting: Adds the paper's PCA colour noise to training images (``False``: the ablation).
        lighting_std: Standard deviation of the PCA lighting coefficients alpha_i (the paper: 0.1).
        num_workers: Loader processes; ``None``: ``min(8, os.cpu_count())``.
        statistics_images: Training images sampled (fixed seed) to compute the mean image and the RGB
            covariance on first use; the paper uses the whole training set, which a sample estimates
            closely at a fraction of the cost.
    """

    def __init__(
        self,
        batch_size: int,
        root: str | None = None,
        resize_size: int = 256,
        crop_size: int = 227,
        mean: Literal["image", "channel"] = "image",
        pca_lighting: bool = True,
        lighting_std: float = 0.1,
        num_workers: int | None = None,
        statistics_images: int = 10_000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self.layout = None if root is None else _layout(Path(root))
        if self.layout is None:
            self.num_classes = builtin.NUM_CLASSES
        elif self.layout == "archives":
            self.num_classes = 1000
        else:
            self.num_classes = len(find_classes(Path(root) / "train")[0])
        self.skipped_files = torch.tensor(0)

    def data_root(self) -> Path:
        """The data root; for the built-in stand-in, its cache folder (generated on first use)."""
        return builtin.ensure() if self.hparams.root is None else Path(self.hparams.root)

    def _dataset(self, split: str, transform: Callable[[Image.Image], Tensor]) -> SkipUnreadable:
        root = self.data_root()
        if self.layout == "archives":
            return SkipUnreadable(ImageNet(str(root), split, transform=transform, loader=load_rgb))
        folder = root / split
        dataset = ImageFolder(str(folder), transform=transform, loader=load_rgb, allow_empty=True)
        train_classes = find_classes(root / "train")[0]
        if dataset.classes != train_classes:
            raise ValueError(
                f"The class folders of {folder} differ from those of {root / 'train'}: "
                f"only in {split}: {sorted(set(dataset.classes) - set(train_classes))}, "
                f"missing from {split}: {sorted(set(train_classes) - set(dataset.classes))}."
            )
        images_per_class = np.bincount(dataset.targets, minlength=len(dataset.classes))
        empty = [str(folder / name) for name, count in zip(dataset.classes, images_per_class, strict=True) if not count]
        if empty:
            raise FileNotFoundError(f"Class folder(s) without any image file: {', '.join(empty)}")
        return SkipUnreadable(dataset)

    def _loader(self, dataset: Dataset, shuffle: bool, image_shape: tuple[int, ...]) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
            collate_fn=partial(collate_skipping_unreadable, image_shape=image_shape),
        )

    def statistics(self) -> Statistics:
        """The training set's mean image and RGB eigen-decomposition at ``resize_size``: loaded from the
        cache beside the data, else computed from ``statistics_images`` sampled training images and
        cached, else (nothing readable) the published values."""
        size = self.hparams.resize_size

        def batches() -> Iterator[Tensor]:
            train = self._dataset("train", rescale_and_centre(size))
            count = min(len(train), self.hparams.statistics_images)
            sample = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:count]
            loader = self._loader(Subset(train, sample.tolist()), shuffle=False, image_shape=(3, size, size))
            return (images for images, _, _ in tqdm(loader, desc="Training-set statistics"))

        return load_or_compute(self.data_root(), size, batches)

    def prepare_data(self) -> None:
        """Once per node: generates the built-in set or extracts the archives, then computes the statistics."""
        if self.layout == "archives":
            for split in SPLITS:
                ImageNet(self.hparams.root, split)
        self.statistics()

    def setup(self, stage: str) -> None:
        stats = self.statistics()
        mean = stats.mean_image if self.hparams.mean == "image" else stats.mean_image.mean((1, 2))
        resize, crop = self.hparams.resize_size, self.hparams.crop_size
        if stage == "fit":
            lighting_std = self.hparams.lighting_std if self.hparams.pca_lighting else None
            train = TrainPreset(mean, stats.eigval, stats.eigvec, resize, crop, lighting_std)
            self.train_set = self._dataset("train", train)
        if stage in ("fit", "validate"):
            self.val_set = self._dataset("val", EvalPreset(mean, resize, crop))
        if stage == "test":
            self.test_set = self._dataset("val", EvalPreset(mean, resize, crop, ten_crops=True))
        if self.trainer is not None and not any(isinstance(c, _LogSkippedFiles) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(_LogSkippedFiles(self))

    def train_dataloader(self) -> DataLoader:
        crop = self.hparams.crop_size
        return self._loader(self.train_set, shuffle=True, image_shape=(3, crop, crop))

    def val_dataloader(self) -> DataLoader:
        crop = self.hparams.crop_size
        return self._loader(self.val_set, shuffle=False, image_shape=(3, crop, crop))

    def test_dataloader(self) -> DataLoader:
        crop = self.hparams.crop_size
        return self._loader(self.test_set, shuffle=False, image_shape=(10, 3, crop, crop))

    def on_after_batch_transfer(
        self, batch: tuple[Tensor, Tensor, Tensor], dataloader_idx: int
    ) -> tuple[Tensor, Tensor]:
        """Takes the skipped-file count off the batch (``_LogSkippedFiles`` logs it): the model sees ``(x, y)``."""
        images, labels, self.skipped_files = batch
        return images, labels
