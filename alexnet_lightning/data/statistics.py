"""Training-set statistics the pipeline needs: the mean image and the PCA of RGB pixel values.

Section 2 subtracts "the mean activity over the training set from each pixel" (a 256x256x3 mean
image); Section 4.1 perturbs colours along the eigenvectors of the 3x3 covariance of RGB pixel
values "throughout the ImageNet training set". Both are computed once, at the configured
``resize_size``, over a fixed random sample of training images, and cached beside the data as
``alexnet_stats_<resize_size>.pt`` (in the cache folder, keyed by the data's path, when the data
folder is read-only). Delete that file to recompute.

From the shell: ``python -m alexnet_lightning.data statistics ROOT [--resize-size 256] [--max-images N]``.
"""

import hashlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from alexnet_lightning.data.sources import cache_dir
from alexnet_lightning.files import write_atomic

log = logging.getLogger(__name__)

# The paper publishes none; these are fb.resnet.torch's, used by most later code, for RGB in [0, 1]
# (docs/paper.md#augmentation).
PUBLISHED_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
PUBLISHED_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
PUBLISHED_MEAN = torch.tensor([0.485, 0.456, 0.406])


class Statistics(NamedTuple):
    """``mean_image`` [3, S, S]; ``eigval`` [3], descending; ``eigvec`` [3, 3], one eigenvector per column."""

    mean_image: Tensor
    eigval: Tensor
    eigvec: Tensor


def published(resize_size: int) -> Statistics:
    """The published values; the mean image is the per-channel mean repeated over every pixel."""
    mean_image = PUBLISHED_MEAN.view(3, 1, 1).expand(3, resize_size, resize_size).clone()
    return Statistics(mean_image, PUBLISHED_EIGVAL.clone(), PUBLISHED_EIGVEC.clone())


def compute(batches: Iterable[Tensor]) -> Statistics:
    """Mean image and RGB eigen-decomposition of float [B, 3, S, S] batches, accumulated in float64.

    The covariance is over all pixels of all images, E[x x^T] - E[x] E[x]^T. Eigenvectors are unique
    only up to sign, which the lighting noise does not see (its alpha_i are symmetric about 0).
    """
    images, image_sum, outer_sum = 0, torch.zeros(()), torch.zeros(3, 3, dtype=torch.float64)
    for batch in batches:
        batch = batch.double()
        images += batch.shape[0]
        image_sum = image_sum + batch.sum(0)
        pixels = batch.permute(1, 0, 2, 3).reshape(3, -1)
        outer_sum += pixels @ pixels.T
    if images == 0:
        raise ValueError("no readable training images")
    mean_image = image_sum / images
    pixel_mean = mean_image.mean((1, 2))
    pixels_per_image = mean_image[0].numel()
    covariance = outer_sum / (images * pixels_per_image) - torch.outer(pixel_mean, pixel_mean)
    eigval, eigvec = torch.linalg.eigh(covariance)  # ascending
    return Statistics(mean_image.float(), eigval.flip(0).float(), eigvec.flip(1).float())


def stats_files(root: Path, resize_size: int) -> list[Path]:
    """Where the statistics may live: beside the data, then in the cache folder keyed by the data's path."""
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    name = f"alexnet_stats_{resize_size}.pt"
    return [root / name, cache_dir() / "stats" / f"{key}_{name}"]


def load_or_compute(root: Path, resize_size: int, batches: Callable[[], Iterable[Tensor]]) -> Statistics:
    """Loads the cached statistics of ``root``, or computes them from ``batches()`` and caches them.

    If they cannot be computed (no readable image, an I/O error), falls back to the published
    values with a warning.
    """
    files = stats_files(root, resize_size)
    for file in files:
        if file.exists():
            return Statistics(**torch.load(file))
    images = batches()  # outside the try: a missing or malformed data folder must raise, not fall back
    try:
        stats = compute(images)
    except (OSError, RuntimeError, ValueError) as err:
        log.warning("Cannot compute the training statistics of %s (%s); using the published values.", root, err)
        return published(resize_size)
    for file in files:
        try:
            write_atomic(file, lambda f: torch.save(stats._asdict(), f))  # a reader never sees half a file
            log.info("Saved the training statistics to %s", file)
            break
        except OSError:
            continue
    else:
        log.warning("Cannot write the training statistics to any of %s; they will be recomputed.", files)
    return stats
