"""Small splits trained from memory: each split decoded once into one uint8 tensor [N, 3, S, S] of the paper's
resized central squares, and whole batches augmented in the main process (``KeyedAugmentation``), with no loader
processes to copy the images between. The step after ``shards.py``: the built-in set at the quick preset's 72 px is
about 100 MB decoded, which every epoch would otherwise decode and augment again image by image.

A split is decoded from its files (``sources.resize_and_centre``, the reference path's first step, unreadable files
skipped with a warning) or read whole from prepared shards, and the files' decode is cached in the cache folder
(``decoded/``), keyed by the files' paths, sizes and modification times, so later runs and the other cells of a study
read it in a fraction of a second.

Each training sample's crop, mirror and lighting are drawn from its own (seed, epoch, index) key with the calls and in
the order of the reference transforms (``TrainTransforms``), so a sample gets the values the file path gives it, and a
run resumed mid-epoch (``sampling.ResumableSampler``) the batches an uninterrupted run gets.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from alexnet_lightning.data import shards, sources
from alexnet_lightning.data.transforms import BatchAugmentation
from alexnet_lightning.files import write_atomic
from alexnet_lightning.progress import progress

LIMIT_BYTES = 4 * 2**30  # "auto" holds the data in memory when its splits' decoded images take at most this
FORMAT = 1  # part of the cache key: bump it when what is cached changes


def held_in_memory(choice: bool | str, root: Path, layout: str | None, size: int) -> bool:
    """Whether the data of ``root`` (a data root of ``layout``, None: the built-in set, or a prepared folder) is held
    in memory: ``choice`` if it is True or False; if "auto", whether its splits decoded at ``size`` take at most
    ``LIMIT_BYTES``. ImageNet's archives, never small, are not extracted to count them."""
    if choice != "auto":
        return bool(choice)
    if (root / "prepared.json").is_file():
        images = sum(split["images"] for split in shards.read_meta(root)["splits"].values())
    elif layout == "archives":
        return False
    else:
        images = sum(len(sources.open_split(root, "folders", split, sources.resize_and_centre(size)))
                     for split in sources.SPLITS)
    return images * 3 * size * size <= LIMIT_BYTES


class InMemorySplit(Dataset):
    """A decoded split. ``dataset[keys]`` with a list of keys gives a whole batch ``(images uint8 [B, 3, S, S],
    labels [B], skipped 0, seeds [B])``: a key is an index (seed -1: no augmentation) or a ``(seed, epoch, index)``
    triple from ``sampling.ResumableSampler``, whose ``sources.sample_seed`` seeds that sample's augmentation.
    ``source`` is the dataset it was decoded from, which names its files (``outcomes.test_set_fingerprint``)."""

    def __init__(self, images: Tensor, labels: Tensor, source: Dataset | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"expected uint8 images [N, 3, S, S] and N labels, got {tuple(images.shape)} "
                             f"{images.dtype} and {len(labels)} labels")
        self.images, self.labels, self.source = images, labels, source

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.__getitems__([key])

    def __getitems__(self, keys: list) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        indices = torch.tensor([key[2] if isinstance(key, tuple) else key for key in keys], dtype=torch.int64)
        seeds = torch.tensor([sources.sample_seed(*key) if isinstance(key, tuple) else -1 for key in keys])
        return self.images[indices], self.labels[indices], torch.tensor(0), seeds


class KeyedAugmentation(BatchAugmentation):
    """``BatchAugmentation`` whose random choices are drawn sample by sample from each sample's seed, with the calls
    of the reference transforms in their order (``v2.RandomCrop``: top, then left; ``v2.RandomHorizontalFlip``:
    mirrored when ``rand(1) < 0.5``; ``PCALighting``: ``randn(3)``): the crop, mirror and lighting ``TrainTransforms``
    gives the same sample under the same seed."""

    def sample_keyed(self, seeds: list[int], side: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Offsets (top, left), mirror flags and lighting coefficients alpha [B, 3], one sample per seed."""
        top, left, flip, alpha = [], [], [], []
        for seed in seeds:  # .item() and one product for the batch: a third of the time of a tensor per value
            generator = torch.Generator().manual_seed(seed)
            for offsets in (top, left):
                offsets.append(torch.randint(0, side - self.crop + 1, (), generator=generator).item()
                               if side > self.crop else 0)
            flip.append(torch.rand(1, generator=generator).item() < 0.5)
            alpha.append(torch.randn(3, generator=generator))
        alpha = torch.stack(alpha) * (self.lighting_std or 0.0) if alpha else torch.empty(0, 3)
        return torch.tensor(top), torch.tensor(left), torch.tensor(flip, dtype=torch.bool), alpha

    def train(self, images: Tensor, seed: int | Tensor) -> Tensor:
        """The batch augmented, each image by its own seed (a tensor of B seeds; an int: ``BatchAugmentation``'s
        one seed for the whole batch)."""
        if isinstance(seed, int) or seed.dim() == 0:
            return super().train(images, int(seed))
        top, left, flip, alpha = self.sample_keyed(seed.tolist(), images.shape[-1])
        return self.apply(images, top, left, flip, alpha if self.lighting_std is not None else None)


def _cache_file(dataset: sources.SkipUnreadable, size: int, split: str) -> Path:
    """Where the decode of ``dataset``'s files is cached: keyed by every file's path, size and modification time."""
    digest = hashlib.sha1(json.dumps([FORMAT, size]).encode())
    for path, _ in dataset.folder.samples:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return sources.cache_dir() / "decoded" / f"{split}-{size}px-{digest.hexdigest()[:16]}.npz"


def _decode(dataset: sources.SkipUnreadable, split: str, workers: int) -> tuple[Tensor, Tensor]:
    # Its own generator: a loader draws its workers' base seed from the global stream otherwise, and a run that decodes
    # (the first) would then drop out other units than one that reads the cache (a resumed one).
    loader = DataLoader(dataset, batch_size=256, num_workers=workers, collate_fn=shards._as_list,
                        generator=torch.Generator())
    kept = [s for batch in progress(loader, f"Decoding {split} into memory", len(loader)) for s in batch if s]
    if not kept:
        raise ValueError(f"{dataset.folder.root}: no readable image to hold in memory")
    return torch.stack([image for image, _ in kept]), torch.tensor([label for _, label in kept])


def load(root: Path, layout: str, split: str, size: int, workers: int = 0) -> InMemorySplit:
    """The split of ``root`` (a data root of ``layout``, or a prepared folder) decoded at ``size``: from the cache if
    it is there, else decoded (with ``workers`` loader processes) and cached."""
    if layout == "prepared":
        prepared = shards.PreparedSplit(root, split)
        chunks = [list(range(i, min(i + 1024, len(prepared)))) for i in range(0, len(prepared), 1024)]
        images = [prepared.__getitems__(chunk)[0] for chunk in progress(chunks, f"Reading {split} into memory")]
        return InMemorySplit(torch.cat(images), prepared.labels, prepared)
    dataset = sources.open_split(root, layout, split, sources.resize_and_centre(size))
    file = _cache_file(dataset, size, split)
    if file.is_file():
        try:
            with np.load(file) as cached:
                return InMemorySplit(torch.from_numpy(cached["images"]), torch.from_numpy(cached["labels"]), dataset)
        except (OSError, ValueError, KeyError):
            pass  # unreadable: decoded again and rewritten
    images, labels = _decode(dataset, split, workers)
    try:
        write_atomic(file, lambda f: np.savez(f, images=images.numpy(), labels=labels.numpy()))
    except OSError:
        pass  # a read-only cache: decoded again next time
    return InMemorySplit(images, labels, dataset)
