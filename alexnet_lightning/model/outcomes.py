"""Per-image outcomes of the ten-crop test, kept beside a cell's result.json so that two cells tested on the same
images can be compared image by image (``significance.py``).

A cell's ``outcomes.npz`` holds, in the test set's order: ``pred`` (int32, the argmax of the averaged softmax),
``label`` (int32), ``top1_correct`` and ``top5_correct`` (bool; no top-5 with fewer than 5 classes), ``test_set``
(a hash of the ordered test files and labels, so that sets of the same size but other images or another order are
caught), ``test_files`` (the test set's size; unreadable files are skipped, the same ones in every cell) and
``replicas`` (the data-parallel replicas that shared the test set).
"""

import hashlib
import io
import math
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from alexnet_lightning.data.shards import read_meta
from alexnet_lightning.files import write_atomic

FILE = "outcomes.npz"


def per_image(scores: Tensor, labels: Tensor) -> Tensor:
    """[B, 4] int64 rows (predicted class, label, top-1 correct, top-5 correct or -1 with fewer than 5 classes)."""
    pred = scores.argmax(-1)
    if scores.shape[-1] >= 5:
        top5 = (scores.topk(5, -1).indices == labels[:, None]).any(-1).long()
    else:
        top5 = torch.full_like(labels, -1)
    return torch.stack([pred, labels, (pred == labels).long(), top5], 1)


def gather(strategy: Any, local: Tensor, n: int) -> Tensor | None:
    """All processes' outcomes in the test set's order, or None (with a warning) when that order cannot be known.

    Under data parallelism Lightning gives replica r of R the images r, r + R, r + 2R, ... of the test set padded
    to a multiple of R by its first images (``DistributedSampler`` without shuffling); the towers of one replica
    see the same images. So the order is rebuilt by interleaving one process's rows per replica, and cut to n. A
    replica that holds another count of images (unreadable files skipped, or its own sampler) has lost that
    correspondence."""
    if strategy.world_size == 1:
        return local
    sampling = getattr(strategy, "distributed_sampler_kwargs", None) or {}
    replicas = sampling.get("num_replicas", strategy.world_size)
    info = strategy.all_gather(torch.tensor([sampling.get("rank", strategy.global_rank), len(local)],
                                            device=local.device)).cpu()
    longest = int(info[:, 1].max())
    rows = strategy.all_gather(torch.cat([local, local.new_zeros(longest - len(local), local.shape[1])])).cpu()
    shards: dict[int, Tensor] = {}
    for (replica, count), replica_rows in zip(info.tolist(), rows):
        if count != math.ceil(n / replicas):
            warnings.warn(f"Per-image test outcomes not kept: a replica scored {count} images, not "
                          f"ceil({n} / {replicas}) (unreadable test files, or a sampler of its own)", stacklevel=2)
            return None
        shards.setdefault(replica, replica_rows[:count])
    return torch.stack([shards[r] for r in range(replicas)], 1).flatten(0, 1)[:n]


def test_set_fingerprint(dataset: Dataset) -> str | None:
    """A hash of the ordered test set: relative paths and labels of an image folder; labels, source and skipped
    files of a prepared split; of the split a split held in memory was decoded from. None for another kind of
    dataset."""
    dataset = getattr(dataset, "source", None) or dataset  # in_memory.InMemorySplit
    digest = hashlib.sha256()
    folder = getattr(dataset, "folder", None)
    if hasattr(folder, "samples"):  # sources.SkipUnreadable over an ImageFolder or torchvision's ImageNet
        root = Path(folder.root)
        for path, label in folder.samples:
            digest.update(f"{Path(path).relative_to(root).as_posix()}\t{label}\n".encode())
    elif hasattr(dataset, "labels") and isinstance(folder, Path):  # shards.PreparedSplit
        meta = read_meta(folder.parent)
        digest.update(f"{meta['source']}\n{meta['splits'][folder.name]['skipped']}\n".encode())
        digest.update(dataset.labels.numpy().tobytes())
    else:
        return None
    return digest.hexdigest()[:16]


def write(path: Path, outcomes: Tensor, test_set: str | None, test_files: int, replicas: int) -> None:
    """Writes ``outcomes`` (``per_image`` rows in test-set order) to ``path`` atomically."""
    rows = outcomes.cpu().numpy()
    arrays = {"pred": rows[:, 0].astype(np.int32), "label": rows[:, 1].astype(np.int32),
              "top1_correct": rows[:, 2].astype(bool), "test_set": np.array(test_set or ""),
              "test_files": np.array(test_files), "replicas": np.array(replicas)}
    if len(rows) and rows[0, 3] >= 0:
        arrays["top5_correct"] = rows[:, 3].astype(bool)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomic(path, lambda f: f.write(buffer.getbuffer()), "outcome file")


def read(path: Path) -> dict[str, Any]:
    """The arrays of an outcome file, and the scalars as Python values; a ValueError names a file that is not one."""
    try:
        with np.load(path) as data:
            found = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # a truncated file is a bad zip
        raise ValueError(f"Cannot read the outcome file {path}: {err}") from err
    missing = {"pred", "label", "top1_correct", "test_set", "test_files", "replicas"} - found.keys()
    if missing:
        raise ValueError(f"{path} is not an outcome file: it lacks {sorted(missing)}")
    for key in ("test_set", "test_files", "replicas"):
        found[key] = found[key].item()
    return found
