"""ImageNet (or the built-in stand-in) as a LightningDataModule, with the paper's pipeline: the last step of
``sources.py`` → ``standin.py`` → ``statistics.py`` → ``transforms.py`` → ``shards.py`` → here.

The data root is ``None`` (the built-in stand-in, generated on first use into the cache folder), an ImageFolder
layout, the ILSVRC-2012 archives, or a prepared folder (``sources.layout``). From a prepared folder (the fast path)
small JPEGs are decoded in batches (on the GPU when training on one) and whole batches are augmented on the device
(``transforms.BatchAugmentation``) instead of decoding and transforming files image by image.

Training batches are resumable: the sampler shuffles by (seed, epoch), each sample's augmentation is
seeded by (seed, epoch, index), and the loader's position is saved in checkpoints, so a run resumed
mid-epoch sees the batches an uninterrupted run would have seen.

ImageNet's test labels are not public, so the test split is the validation folder, with ten crops.
"""

import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms.v2 import functional as F

from alexnet_lightning.data import shards, sources, standin
from alexnet_lightning.data.classes import class_ids_and_names
from alexnet_lightning.data.in_memory import InMemorySplit, KeyedAugmentation, held_in_memory, load
from alexnet_lightning.data.sampling import ResumableLoader, ResumableSampler, as_batch
from alexnet_lightning.data.skips import SkippedFiles
from alexnet_lightning.data.statistics import Statistics, load_or_compute
from alexnet_lightning.data.transforms import LIGHTING_FORMULAS, BatchAugmentation, EvalTransforms, TrainTransforms
from alexnet_lightning.progress import progress
from alexnet_lightning.signals import ignore_sigterm_in_worker


class ImageNetDataModule(L.LightningDataModule):
    """ImageNet, an ImageFolder or the built-in stand-in, through the paper's pipeline (``transforms.py``).

    Batches are ``(images [B, 3, S, S] float32, labels [B] int64)`` for training and validation and
    ``(crops [B, 10, 3, S, S], labels [B])`` for testing, S = ``crop_size``; the images reach the model in the
    trainer's precision (bf16-true, 64-true). Training drops the epoch's last partial batch (``_loader``: one shape
    for the compiled step; 15 of ILSVRC-2012's images per epoch). Unreadable files are skipped with a warning and
    counted in the logged metrics ``data/skipped_files/<stage>``; a batch may therefore hold fewer than
    ``batch_size`` samples, or none.

    Args:
        batch_size: Images per batch (the paper: 128).
        root: Data root: an ImageFolder layout (``train/<class>/*``, ``val/<class>/*``), or a folder
            with the ILSVRC-2012 archives (extracted beside them on first use), or a prepared folder
            (``python -m alexnet_lightning.data prepare``). ``None``: the built-in stand-in, generated on first
            use into ``$ALEXNET_LIGHTNING_CACHE`` (default ``~/.cache/alexnet-lightning``).
        resize_size: Side of the central square the images are rescaled to once (the paper: 256).
        crop_size: Side of the crops the network sees. The paper writes 224, but its layer sizes need
            227, Caffe's choice.
        mean: What is subtracted: ``"image"``, the paper's per-pixel mean image of the training set;
            ``"channel"``, its per-channel mean.
        pca_lighting: Adds the paper's PCA colour noise to training images (``False``: the ablation).
        lighting_std: Standard deviation of the PCA lighting coefficients alpha_i (the paper: 0.1).
        lighting_formula: ``"cuda-convnet2"``: alpha_i times the standard deviation along eigenvector p_i, in the
            units of the pixels, as the authors' code computed; ``"printed"`` (a deviation): the paper's literal
            alpha_i times the eigenvalue, in [0, 1]-scale units (``transforms.lighting_weights``).
        lighting_rescale: Multiplies training images by 1 / (1 + lighting_std) after the noise, as cuda-convnet2
            does (``transforms.training_scale``); not in the paper, off by default.
        num_workers: Loader processes; ``None``: ``min(8, os.cpu_count())``.
        persistent_workers: Keep the loader processes from one epoch to the next (with ``num_workers > 0``).
        statistics_images: Training images sampled (fixed seed) to compute the mean image and the RGB
            covariance on first use; the paper uses the whole training set, which a sample estimates
            closely at a fraction of the cost.
        value_scale: What the centred [0, 1] values are multiplied by. 255: the paper's centred raw pixel
            values, the scale its LRN constants (k = 2, alpha = 1e-4) and N(0, 0.01) weights act on; at 1.0 (a
            deviation, the scale of most later code) alpha / n * sum(a^2) is negligible beside k and LRN is close to a
            constant factor, unless ``model.lrn_alpha`` is scaled with it (the quick preset).
        prepared: A folder for the fast path: ``root`` is converted into 256x256 JPEG shards there on first use
            (``prepare_data``; ``python -m alexnet_lightning.data prepare`` does the same ahead of time, and can store
            raw uint8) and read from it instead of ``root``. Same distribution of inputs.
        max_skipped_fraction: The fraction of a training epoch's files that may be skipped as unreadable; more stops
            the run (a validation or test split stops only if every file is unreadable).
        decode: Where the images of JPEG shards are decoded: ``"workers"``, in the loader's processes on the CPU;
            ``"device"``, batched on the batch's device after its transfer (nvjpeg on a GPU); ``"auto"``: on the
            device when the trainer's is a GPU (``trainer.strategy.root_device``), else in the workers.
        in_memory: Decode each split once and hold it in memory, augmenting whole batches in the main process with
            the reference path's values (``in_memory.py``), no loader processes; ``"auto"``: when the decoded splits
            take at most ``in_memory.LIMIT_BYTES`` (4 GiB: the built-in set, not ImageNet).
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
        lighting_formula: Literal["cuda-convnet2", "printed"] = "cuda-convnet2",
        lighting_rescale: bool = False,
        num_workers: int | None = None,
        persistent_workers: bool = True,
        statistics_images: int = 10_000,
        prepared: str | None = None,
        value_scale: float = 255.0,
        decode: Literal["auto", "workers", "device"] = "auto",
        in_memory: bool | Literal["auto"] = "auto",
        max_skipped_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        for name, value, valid, allowed in (
            ("batch_size", batch_size, batch_size >= 1, "at least 1"),
            ("crop_size", crop_size, crop_size >= 1, "at least 1"),
            ("resize_size", resize_size, resize_size >= 1, "at least 1"),
            ("lighting_std", lighting_std, lighting_std >= 0, "at least 0"),
            ("num_workers", num_workers, num_workers is None or num_workers >= 0, "at least 0"),
            ("statistics_images", statistics_images, statistics_images >= 1, "at least 1"),
            ("value_scale", value_scale, value_scale > 0, "positive"),
            ("max_skipped_fraction", max_skipped_fraction, 0 <= max_skipped_fraction <= 1, "in [0, 1]"),
        ):
            if not valid:
                raise ValueError(f"{name} must be {allowed}, got {value}")
        if resize_size < crop_size:  # else every image fails in its transform, which is not a bad file
            raise ValueError(f"--data.resize_size ({resize_size}) must be at least --data.crop_size ({crop_size}): "
                             f"the crops are taken from the {resize_size}x{resize_size} images")
        self.save_hyperparameters()
        if lighting_formula not in LIGHTING_FORMULAS:
            raise ValueError(f"lighting_formula must be one of {LIGHTING_FORMULAS}, got {lighting_formula!r}")
        if decode not in ("auto", "workers", "device"):
            raise ValueError(f"decode must be 'auto', 'workers' or 'device', got {decode!r}")
        if in_memory not in ("auto", True, False):
            raise ValueError(f"in_memory must be 'auto', true or false, got {in_memory!r}")
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self.layout = None if root is None else sources.layout(Path(root))
        if self.layout is None:
            self.num_classes = standin.NUM_CLASSES
        elif self.layout == "prepared":
            self.num_classes = len(self._prepared_meta(Path(root))["classes"])
        else:
            self.num_classes = sources.num_classes(Path(root), self.layout)
        if prepared is not None and self.layout == "prepared":
            raise ValueError(f"--data.root {root} is already a prepared folder: leave out --data.prepared")
        self.skipped_files = torch.tensor(0)
        self.augmentation: BatchAugmentation | None = None
        self.train_position: dict[str, int] | None = None  # from a checkpoint, for the next training loader
        self.mean: Tensor | None = None  # what setup subtracts, for the checkpoint's inference record
        self._classes: tuple[list[str], list[str]] | None = None
        self.held: bool | None = None  # whether the splits are held in memory, decided on first use

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position, kept in checkpoints."""
        loader = self.trainer.train_dataloader if self.trainer is not None else None
        return {"train_position": loader.state_dict()} if isinstance(loader, ResumableLoader) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Lightning hands the training loader its position only when it resumes mid-epoch. From an epoch's end it
        # creates the loader's iterator before it sets the sampler's epoch, and loader processes draw the first
        # batches' indices as soon as the iterator exists: the resumed epoch would be shuffled as the first was.
        self.train_position = state.get("train_position")

    def inference_record(self) -> dict[str, Any] | None:
        """What classifying an image needs from the data, in types ``torch.load(weights_only=True)`` reads: the mean
        subtracted, value scale, resize and crop sizes, the class ids in label order and their names (the devkit's,
        where its ``meta.bin`` lies in the data root; else the ids). None before ``setup``."""
        if self.mean is None:
            return None
        if self._classes is None:  # read once: checkpoints are written every 1000 steps
            root = self.data_root()
            self._classes = class_ids_and_names(root, self.layout, Path(self.hparams.root or root))
        wnids, names = self._classes
        hp = self.hparams
        return {"root": hp.root, "mean": self.mean.clone(), "value_scale": float(hp.value_scale),
                "resize_size": hp.resize_size, "crop_size": hp.crop_size, "wnids": wnids, "names": names}

    def _prepared_meta(self, root: Path) -> dict:
        meta = shards.read_meta(root)
        if meta["size"] != self.hparams.resize_size:
            raise ValueError(
                f"{root / 'prepared.json'} holds {meta['size']}x{meta['size']} images but --data.resize_size is "
                f"{self.hparams.resize_size}: prepare again with --size {self.hparams.resize_size}"
            )
        return meta

    def data_root(self) -> Path:
        """The root read from: the prepared folder if there is one, else the data root; for the built-in
        stand-in, its cache folder (generated on first use)."""
        if self.hparams.prepared is not None and (Path(self.hparams.prepared) / "prepared.json").is_file():
            return Path(self.hparams.prepared)
        return standin.ensure() if self.hparams.root is None else Path(self.hparams.root)

    def _reads_prepared(self) -> bool:
        return self.layout == "prepared" or self.hparams.prepared is not None

    def _in_memory(self) -> bool:
        if self.held is None:
            self.held = held_in_memory(self.hparams.in_memory, self.data_root(), self.layout, self.hparams.resize_size)
        return self.held

    def _decodes_on_device(self) -> bool:
        if self.hparams.decode != "auto":
            return self.hparams.decode == "device"
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def _dataset(self, split: str, transform: Callable[[Image.Image], Tensor]) -> sources.SkipUnreadable:
        return sources.open_split(self.data_root(), self.layout or "folders", split, transform)

    def _loader(self, dataset: Dataset, shuffle: bool, image_shape: tuple[int, ...]) -> DataLoader:
        trainer = self.trainer
        replicas = getattr(trainer.strategy, "distributed_sampler_kwargs", None) if trainer else None
        # Training drops its last partial batch (a deviation: 1,281,167 = 10,009 x 128 + 15, so 15 of the images,
        # a different 15 each epoch, miss an epoch), so every step has one shape: a compiled network would otherwise
        # recompile for it, and cuDNN time its algorithms again. A set smaller than a batch keeps its one batch.
        whole = shuffle and len(dataset) >= self.hparams.batch_size * (replicas or {}).get("num_replicas", 1)
        workers = 0 if isinstance(dataset, InMemorySplit) else self.num_workers  # processes would only add copies
        options = dict(
            batch_size=self.hparams.batch_size,
            num_workers=workers,
            persistent_workers=self.hparams.persistent_workers and workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=whole,
            # Augmentation is seeded per sample: the loader's own generator keeps it off the global RNG stream,
            # which a resumed run would otherwise draw from at a different point than an uninterrupted one.
            generator=torch.Generator(),
            # A scheduler's SIGTERM reaches the workers too: they ignore it and the trainer stops in order (signals.py).
            worker_init_fn=partial(ignore_sigterm_in_worker, rank=self.trainer.global_rank if self.trainer else 0),
            collate_fn=as_batch
            if isinstance(dataset, (shards.PreparedSplit, InMemorySplit))
            else partial(sources.collate_skipping_unreadable, image_shape=image_shape),
        )
        if not shuffle:
            return DataLoader(dataset, **options)
        sampler = ResumableSampler(dataset, self.hparams.batch_size, int(os.environ.get("PL_GLOBAL_SEED", 0)),
                                   **(replicas or {}))

        def position() -> tuple[int, int, float]:
            batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            return trainer.current_epoch, batches, trainer.num_training_batches

        loader = ResumableLoader(dataset, sampler=sampler, progress=position, **options)
        if self.train_position is not None:
            loader.load_state_dict(self.train_position)
            self.train_position = None
        return loader

    def statistics(self) -> Statistics:
        """The training set's mean image and RGB eigen-decomposition at ``resize_size``: loaded from the
        cache beside the data, else computed from ``statistics_images`` sampled training images and
        cached, else (nothing readable) the published values."""
        size = self.hparams.resize_size
        root = self.data_root()
        from_shards = (root / "prepared.json").is_file()

        def batches() -> Iterator[Tensor]:
            if from_shards:
                train = shards.PreparedSplit(root, "train")
            else:
                train = self._dataset("train", sources.rescale_and_centre(size))
            count = min(len(train), self.hparams.statistics_images)
            sample = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:count].tolist()
            if from_shards:
                chunks = [sample[i : i + 256] for i in range(0, count, 256)]
                return (F.to_dtype(train.__getitems__(chunk)[0], torch.float32, scale=True)
                        for chunk in progress(chunks, "Training-set statistics"))
            loader = self._loader(Subset(train, sample), shuffle=False, image_shape=(3, size, size))
            return (images for images, _, _ in progress(loader, "Training-set statistics", len(loader)))

        return load_or_compute(root, size, batches)

    def prepare_data(self) -> None:
        """Once per node: generates the built-in set or extracts the archives, writes the prepared shards if
        asked to, then computes the statistics."""
        if self.hparams.prepared is not None and not (Path(self.hparams.prepared) / "prepared.json").is_file():
            shards.prepare(self.hparams.root, Path(self.hparams.prepared), self.hparams.resize_size,
                             workers=self.num_workers)
        elif self.layout == "archives":
            for split in sources.SPLITS:
                sources.extract(Path(self.hparams.root), split)
        self.statistics()
        if self._in_memory() and not self._reads_prepared():  # decoded once here, read from the cache by setup
            for split in sources.SPLITS:
                load(self.data_root(), self.layout or "folders", split, self.hparams.resize_size, self.num_workers)

    def setup(self, stage: str) -> None:
        stats = self.statistics()
        mean = stats.mean_image if self.hparams.mean == "image" else stats.mean_image.mean((1, 2))
        self.mean = mean
        resize, crop, scale = self.hparams.resize_size, self.hparams.crop_size, self.hparams.value_scale
        lighting_std = self.hparams.lighting_std if self.hparams.pca_lighting else None
        lighting = dict(lighting_formula=self.hparams.lighting_formula, lighting_rescale=self.hparams.lighting_rescale)
        if self._in_memory():
            self.augmentation = KeyedAugmentation(mean, stats.eigval, stats.eigvec, crop, lighting_std, scale,
                                                  **lighting)
            root, layout = self.data_root(), "prepared" if self._reads_prepared() else self.layout or "folders"
            if layout == "prepared":
                self._prepared_meta(root)
            if stage == "fit":
                self.train_set = load(root, layout, "train", resize, self.num_workers)
            self.val_set = self.test_set = load(root, layout, "val", resize, self.num_workers)
        elif self._reads_prepared():
            root = self.data_root()
            if not (root / "prepared.json").is_file():
                raise FileNotFoundError(f"{root} is not prepared yet: prepare_data() writes it (the Trainer calls it)")
            self._prepared_meta(root)
            self.augmentation = BatchAugmentation(
                mean, stats.eigval, stats.eigvec, crop, lighting_std, scale, **lighting
            )
            in_workers = not self._decodes_on_device()
            self.train_set = shards.PreparedSplit(root, "train", decode=in_workers)
            self.val_set = self.test_set = shards.PreparedSplit(root, "val", decode=in_workers)
        else:
            if stage == "fit":
                train = TrainTransforms(mean, stats.eigval, stats.eigvec, resize, crop, lighting_std, scale, **lighting)
                self.train_set = self._dataset("train", train)
            if stage in ("fit", "validate"):
                self.val_set = self._dataset("val", EvalTransforms(mean, resize, crop, value_scale=scale))
            if stage == "test":
                ten_crops = EvalTransforms(mean, resize, crop, ten_crops=True, value_scale=scale)
                self.test_set = self._dataset("val", ten_crops)
        if self.trainer is not None and not any(isinstance(c, SkippedFiles) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(SkippedFiles(self))

    def train_dataloader(self) -> DataLoader:
        crop = self.hparams.crop_size
        return self._loader(self.train_set, shuffle=True, image_shape=(3, crop, crop))

    def val_dataloader(self) -> DataLoader:
        crop = self.hparams.crop_size
        return self._loader(self.val_set, shuffle=False, image_shape=(3, crop, crop))

    def test_dataloader(self) -> DataLoader:
        crop = self.hparams.crop_size
        return self._loader(self.test_set, shuffle=False, image_shape=(10, 3, crop, crop))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Prepared batches: JPEG bytes (``shards.Encoded``) are decoded on ``device``, and the augmentation seed
        stays on the host, where ``on_after_batch_transfer`` reads it without waiting for the GPU."""
        if self.augmentation is None:
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        images, labels, skipped, seed = batch
        if isinstance(images, shards.Encoded):
            images = images.decode(device)
        return *super().transfer_batch_to_device((images, labels, skipped), device, dataloader_idx), seed

    def on_after_batch_transfer(self, batch: tuple[Tensor, ...], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        """Takes the skipped-file count off the batch (``SkippedFiles`` logs it) and augments prepared
        batches on their device: the model sees ``(x, y)``."""
        if self.augmentation is None:
            images, labels, self.skipped_files = batch
            return images, labels
        images, labels, self.skipped_files, seed = batch
        stage = "train" if self.trainer.training else "test" if self.trainer.testing else "val"
        # Lightning converted the batch to the precision plugin's type before the transfer (convert_input), when it
        # was still uint8: the augmentation's float32 output is converted here (a no-op under 32 and *-mixed).
        return self.trainer.precision_plugin.convert_input(self.augment(images, stage, seed)), labels

    def augment(self, images: Tensor, stage: Literal["train", "val", "test"], seed: int | Tensor = -1) -> Tensor:
        """A prepared or in-memory uint8 batch through the stage's pipeline (after ``setup``); in memory, ``seed``
        holds each image's seed."""
        if stage == "train":
            return self.augmentation.train(images, int(seed) if isinstance(seed, int) or seed.dim() == 0 else seed)
        return self.augmentation.ten_crops(images) if stage == "test" else self.augmentation.centre(images)
