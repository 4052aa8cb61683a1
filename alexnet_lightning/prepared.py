"""The paper's "resize once" as a fast path: 256x256 uint8 shards, and augmentation of whole batches.

    python -m alexnet_lightning.prepared SOURCE DEST [--size 256] [--shard-size 2048] [--workers N]

SOURCE is a data root as ``ImageNetDataModule`` takes it (an ImageFolder layout, or the ILSVRC-2012
archives) or ``builtin``. For each split, DEST gets shards ``NNNNN.images.npy`` (uint8 [n, 3, size, size]:
the central square exactly as ``transforms.rescale_and_centre`` makes it before its float conversion),
``NNNNN.labels.npy`` (int64 [n]) and ``NNNNN.json`` (the unreadable files skipped), each written
atomically, the json last. ``prepared.json`` is written when every shard is there: a folder without it is
an unfinished prepare, which the same command resumes shard by shard. ImageNet's 1.28 M training
images take about 250 GB.

Training then reads batches of uint8 images from memory-mapped shards (no decoding, no resizing) and
``BatchAugmentation`` does the crop, mirror, mean subtraction and PCA lighting of the whole batch on
the device the batch is on, with the reference transforms' values (``transforms.py``).
"""

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

from alexnet_lightning.progress import progress
from alexnet_lightning.reliability import write_atomic
from alexnet_lightning.transforms import lighting_weights, training_scale

FORMAT = 1


def _as_list(batch: list) -> list:
    return batch


def prepare(source: str | None, dest: Path, size: int = 256, shard_size: int = 2048, workers: int = 0) -> Path:
    """Writes the shards of ``source`` (``None``: the built-in set) into ``dest``; returns ``dest``.

    Shards already written by an earlier, interrupted call are kept.
    """
    from alexnet_lightning.datamodule import SPLITS, ImageNetDataModule
    from alexnet_lightning.transforms import resize_and_centre

    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    source_data = ImageNetDataModule(batch_size=1, root=source, resize_size=size, num_workers=0)
    if source_data.layout == "prepared":
        raise ValueError(f"{source} is already prepared")
    meta = {"format": FORMAT, "size": size, "source": str(source_data.data_root().resolve()), "splits": {}}
    for split in SPLITS:
        dataset = source_data._dataset(split, resize_and_centre(size))
        # The folder names, which the labels index; ImageNet's ``classes`` are names, "crane" for two of them.
        meta["classes"] = getattr(dataset.folder, "wnids", dataset.folder.classes)
        folder = dest / split
        folder.mkdir(parents=True, exist_ok=True)
        shards = math.ceil(len(dataset) / shard_size)
        todo = [k for k in range(shards) if not (folder / f"{k:05d}.json").is_file()]
        batches = [list(range(k * shard_size, min(len(dataset), (k + 1) * shard_size))) for k in todo]
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_as_list)
        for k, indices, samples in progress(zip(todo, batches, loader), f"Preparing {split}", len(todo)):
            kept = [sample for sample in samples if sample is not None]
            images = np.stack([image.numpy() for image, _ in kept]) if kept else np.empty((0, 3, size, size), np.uint8)
            labels = np.array([label for _, label in kept], np.int64)
            skipped = [dataset.folder.samples[i][0] for i, s in zip(indices, samples) if s is None]
            write_atomic(folder / f"{k:05d}.images.npy", lambda f, a=images: np.save(f, a))
            write_atomic(folder / f"{k:05d}.labels.npy", lambda f, a=labels: np.save(f, a))
            record = json.dumps({"images": len(kept), "skipped": skipped}).encode()
            write_atomic(folder / f"{k:05d}.json", lambda f, data=record: f.write(data))
        records = [json.loads((folder / f"{k:05d}.json").read_text()) for k in range(shards)]
        meta["splits"][split] = {
            "shards": shards,
            "images": sum(r["images"] for r in records),
            "skipped": [path for r in records for path in r["skipped"]],
        }
    write_atomic(dest / "prepared.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return dest


def read_meta(root: Path) -> dict:
    """The contents of ``root/prepared.json``, checked; errors name the file."""
    path = root / "prepared.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read {path}: {err}") from err
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}; this version reads format {FORMAT}: prepare again")
    return meta


class PreparedSplit(Dataset):
    """One split of a prepared folder. ``dataset[keys]`` with a list of keys gives a whole batch:
    ``(images uint8 [B, 3, S, S], labels [B], skipped 0, seed)``. A key is an index, or a
    ``(seed, epoch, index)`` triple from ``datamodule.ResumableSampler``, whose first key seeds the
    batch's augmentation; plain indices give the seed -1 (no augmentation)."""

    def __init__(self, root: Path, split: str) -> None:
        self.folder = root / split
        shards = read_meta(root)["splits"][split]["shards"]
        self.files = [self.folder / f"{k:05d}.images.npy" for k in range(shards)]
        missing = [str(f) for f in self.files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"Prepared shard(s) missing: {', '.join(missing)}")
        labels = [np.load(self.folder / f"{k:05d}.labels.npy") for k in range(shards)]
        self.labels = torch.from_numpy(np.concatenate(labels))
        self.starts = np.cumsum([0] + [len(part) for part in labels])
        self.images: list[np.ndarray] | None = None  # memory maps, opened in the process that reads

    def __len__(self) -> int:
        return len(self.labels)

    def _open(self) -> list[np.ndarray]:
        if self.images is None:
            self.images = [np.load(f, mmap_mode="r") for f in self.files]
            for f, images, start, end in zip(self.files, self.images, self.starts, self.starts[1:]):
                if images.dtype != np.uint8 or images.ndim != 4 or len(images) != end - start:
                    raise ValueError(f"{f} does not match its labels: prepare again")
        return self.images

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.__getitems__([key])

    def __getitems__(self, keys: list) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        images = self._open()
        indices = np.array([key[2] if isinstance(key, tuple) else key for key in keys])
        shards = np.searchsorted(self.starts, indices, side="right") - 1
        batch = np.stack([images[s][i - self.starts[s]] for s, i in zip(shards, indices)])
        seed = sample_seed(*keys[0]) if isinstance(keys[0], tuple) else -1
        return torch.from_numpy(batch), self.labels[indices], torch.tensor(0), torch.tensor(seed)

    def __getstate__(self) -> dict:  # loader processes open their own memory maps
        return {**self.__dict__, "images": None}


def sample_seed(*keys: int) -> int:
    """A 63-bit seed that depends on the keys only (the run's seed, the epoch, a sample index)."""
    return int(np.random.SeedSequence(keys).generate_state(1, np.uint64)[0] >> np.uint64(1))


class BatchAugmentation:
    """The reference pipeline (``transforms.TrainPreset`` / ``EvalPreset``) on whole uint8 batches.

    The mean and the eigenvectors move to the batch's device once. Per-image random choices come from a
    generator seeded by the batch's seed; they have the reference's distribution: crop offsets uniform
    on 0 .. S - crop, mirror with p = 0.5, alpha_i ~ N(0, lighting_std).
    """

    def __init__(
        self, mean: Tensor, eigval: Tensor, eigvec: Tensor, crop_size: int, lighting_std: float | None,
        value_scale: float = 1.0, lighting_formula: str = "cuda-convnet2", lighting_rescale: bool = False,
    ):
        self.mean = mean if mean.dim() == 3 else mean.view(3, 1, 1)
        self.weights, self.eigvec = lighting_weights(eigval, lighting_formula), eigvec
        self.crop, self.lighting_std, self.value_scale = crop_size, lighting_std, value_scale
        self.train_scale = training_scale(value_scale, lighting_std, lighting_rescale)

    @staticmethod
    def _scaled(x: Tensor, scale: float) -> Tensor:
        return x.mul_(scale) if scale != 1 else x

    def _to(self, device: torch.device) -> None:
        if self.mean.device != device:
            self.mean, self.weights, self.eigvec = (t.to(device) for t in (self.mean, self.weights, self.eigvec))

    def _centred(self, images: Tensor) -> Tensor:
        self._to(images.device)
        return F.to_dtype(images, torch.float32, scale=True) - self.mean

    def sample(self, batch: int, side: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Offsets (top, left), mirror flags and lighting coefficients alpha [B, 3] for a batch."""
        generator = torch.Generator().manual_seed(seed)
        top, left = torch.randint(0, side - self.crop + 1, (2, batch), generator=generator)
        flip = torch.rand(batch, generator=generator) < 0.5
        alpha = torch.randn(batch, 3, generator=generator) * (self.lighting_std or 0.0)
        return top, left, flip, alpha

    def train(self, images: Tensor, seed: int) -> Tensor:
        top, left, flip, alpha = self.sample(len(images), images.shape[-1], seed)
        return self.apply(images, top, left, flip, alpha if self.lighting_std is not None else None)

    def apply(self, images: Tensor, top: Tensor, left: Tensor, flip: Tensor, alpha: Tensor | None) -> Tensor:
        """Crops image i at (top[i], left[i]), mirrors it if flip[i] and adds the lighting of alpha[i].

        The reference's operations in its order (to float, scale, subtract the mean, crop, mirror, lighting),
        written in place into one float batch: cropping and mirroring commute with the pixelwise steps.
        """
        self._to(images.device)
        c, per_pixel = self.crop, self.mean.shape[-1] > 1
        windows = [(slice(t, t + c), slice(s, s + c), m) for t, s, m in zip(top.tolist(), left.tolist(), flip.tolist())]
        x = torch.empty(len(images), 3, c, c, device=images.device)
        for i, (rows, cols, mirror) in enumerate(windows):
            crop = images[i, :, rows, cols]
            x[i] = crop.flip(-1) if mirror else crop  # uint8 to float32 in the copy
        x.mul_(1 / 255)  # what to_dtype(..., scale=True) does after its conversion
        if not per_pixel:
            x.sub_(self.mean)
        for i, (rows, cols, mirror) in enumerate(windows if per_pixel else []):
            mean = self.mean[:, rows, cols]
            x[i].sub_(mean.flip(-1) if mirror else mean)
        if alpha is not None:
            x += self._lighting(alpha)[..., None, None]
        return self._scaled(x, self.train_scale)

    def _lighting(self, alpha: Tensor) -> Tensor:
        """eigvec @ (alpha_i * weights) for every image: [B, 3] (``transforms.lighting_weights``)."""
        return (alpha.to(self.weights) * self.weights) @ self.eigvec.T

    def centre(self, images: Tensor) -> Tensor:
        return self._scaled(F.center_crop(self._centred(images), [self.crop, self.crop]), self.value_scale)

    def ten_crops(self, images: Tensor) -> Tensor:
        """[B, 10, 3, crop, crop] in ``transforms.ten_crop``'s order."""
        crops = F.five_crop(self._centred(images), [self.crop, self.crop])
        return self._scaled(torch.stack([*crops, *(crop.flip(-1) for crop in crops)], 1), self.value_scale)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="data root (ImageFolder train/, val/; or the ILSVRC-2012 archives) or builtin")
    parser.add_argument("dest", type=Path, help="folder for the shards")
    parser.add_argument("--size", type=int, default=256, help="side of the stored central square (the paper: 256)")
    parser.add_argument("--shard-size", type=int, default=2048, help="images per shard file")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    args = parser.parse_args(argv)
    source = None if args.source == "builtin" else args.source
    dest = prepare(source, args.dest, args.size, args.shard_size, args.workers)
    meta = read_meta(dest)
    for split, info in meta["splits"].items():
        print(f"{split}: {info['images']} images in {info['shards']} shards, {len(info['skipped'])} unreadable skipped")
    print(f"Train from it with --data.root {dest}")


if __name__ == "__main__":
    main()
