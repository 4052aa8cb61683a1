"""The paper's input pipeline, train and eval side by side (PAPER.md, Data; Augmentation and testing).

Every split first decodes to RGB, rescales the shorter side to ``resize_size``, takes the central
``resize_size`` square and subtracts the training set's mean (Section 2: "the only other
preprocessing"). Training then takes a random ``crop_size`` crop, mirrors it with p = 0.5 and adds
PCA lighting noise (Section 4.1); validation takes the centre crop; testing takes ten crops
(Section 4.1: "averaging the predictions made by the network's softmax layer on the ten patches").
Values are centred RGB: in [0, 1] minus the mean, times ``value_scale`` (255 gives the paper's raw pixel values,
on which its LRN constants and initialisation act); the paper divides by no standard deviation.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# PIL's modes of 16-bit grayscale: "I" is how it opens 16-bit PGM (and some PNG and TIFF) files.
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def load_rgb(path: str | Path) -> Image.Image:
    """Decodes an image file to 3-channel RGB.

    Grayscale, 1-bit, palette and CMYK convert to RGB; an alpha channel is composited onto white so that the colour
    hidden under transparent pixels (often garbage) never reaches the network. 16-bit grayscale (PNG, TIFF, PGM) is
    scaled to 8 bits, 65535 to 255 (PIL's own conversion clips it at 255: a white image); floating-point pixels
    (mode F) have no white level and raise ``ValueError``. Files of several frames (animated GIF, TIFF) give their
    first. The EXIF orientation is ignored, as torchvision's loader and ImageNet's tools ignore it: a file gives its
    pixels as stored. PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off, so a truncated file raises ``OSError``
    instead of decoding half an image.
    """
    with Image.open(path) as image:
        if image.mode in SIXTEEN_BIT:
            pixels = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
            return Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
        if image.mode == "F":
            raise ValueError("floating-point pixels (mode F) have no white level")
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")


def resize_and_centre(resize_size: int) -> v2.Compose:
    """The paper's once-only step: shorter side to ``resize_size``, central square, uint8 RGB [3, S, S]."""
    return v2.Compose([v2.PILToTensor(), v2.Resize(resize_size, antialias=True), v2.CenterCrop(resize_size)])


def rescale_and_centre(resize_size: int) -> v2.Compose:
    """``resize_and_centre``, then float RGB in [0, 1]."""
    return v2.Compose([resize_and_centre(resize_size), v2.ToDtype(torch.float32, scale=True)])


class SubtractMean(nn.Module):
    """Subtracts the training set's mean: a [3, S, S] mean image (the paper's) or a [3] channel mean."""

    def __init__(self, mean: Tensor) -> None:
        super().__init__()
        self.mean = mean if mean.dim() == 3 else mean.view(3, 1, 1)

    def forward(self, image: Tensor) -> Tensor:
        return image - self.mean


LIGHTING_FORMULAS = ("cuda-convnet2", "printed")


def lighting_weights(eigval: Tensor, formula: str = "cuda-convnet2") -> Tensor:
    """What multiplies alpha_i along eigenvector p_i.

    "cuda-convnet2" (the default): the standard deviation along p_i, sqrt(lambda_i), as the authors' code computed
    (convdata.py, ``ColorNoiseMakerThread`` and ``add_color_noise``: noise = sum_i alpha_i s_i p_i with s_i the
    ``pca_stdevs``); in the units of the pixels it is added to, so the same at any pixel scale. "printed" (a
    deviation): the paper's literal alpha_i * lambda_i, with lambda_i in [0, 1]-scale variance units, as
    fb.resnet.torch and most later code compute it; several times weaker than the code's.
    """
    if formula not in LIGHTING_FORMULAS:
        raise ValueError(f"lighting_formula must be one of {LIGHTING_FORMULAS}, got {formula!r}")
    return eigval.clamp_min(0).sqrt() if formula == "cuda-convnet2" else eigval


def pca_lighting(image: Tensor, alpha: Tensor, weights: Tensor, eigvec: Tensor) -> Tensor:
    """Adds ``eigvec @ (alpha * weights)`` to every pixel of a [3, H, W] image (Section 4.1; ``lighting_weights``)."""
    return image + (eigvec @ (alpha * weights)).view(3, 1, 1)


class PCALighting(nn.Module):
    """PCA colour augmentation: alpha_i ~ N(0, std) drawn once per image per use (Section 4.1), times
    ``lighting_weights(eigval, formula)`` along the eigenvectors."""

    def __init__(self, eigval: Tensor, eigvec: Tensor, std: float = 0.1, formula: str = "cuda-convnet2") -> None:
        super().__init__()
        self.weights, self.eigvec, self.std = lighting_weights(eigval, formula), eigvec, std

    def forward(self, image: Tensor) -> Tensor:
        alpha = torch.randn(3, dtype=image.dtype) * self.std
        return pca_lighting(image, alpha, self.weights.to(image.dtype), self.eigvec.to(image.dtype))


def training_scale(value_scale: float, lighting_std: float | None, lighting_rescale: bool) -> float:
    """What training images are multiplied by at the end: ``value_scale``, and with ``lighting_rescale`` also
    1 / (1 + lighting_std), cuda-convnet2's rescale after adding the colour noise "so that the overall scale of the
    training data doesn't become too different from the test data" (convdata.py, ``add_color_noise``). Not in the
    paper: an option, off by default."""
    if lighting_rescale and lighting_std is not None:
        return value_scale / (1 + lighting_std)
    return value_scale


def ten_crop(image: Tensor, size: int) -> Tensor:
    """Returns [10, 3, size, size]: top-left, top-right, bottom-left, bottom-right, centre (0-4), then
    the horizontal mirror of each, in the same order (5-9)."""
    crops = F.five_crop(image, [size, size])
    return torch.stack([*crops, *(F.horizontal_flip(crop) for crop in crops)])


class Scale(nn.Module):
    """Multiplies by a constant: 255 turns centred [0, 1] values into centred raw pixel values."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, image: Tensor) -> Tensor:
        return image * self.factor


class TrainPreset:
    """Random crop, horizontal mirror and PCA lighting of the mean-subtracted image (Section 4.1)."""

    def __init__(
        self,
        mean: Tensor,
        eigval: Tensor,
        eigvec: Tensor,
        resize_size: int = 256,
        crop_size: int = 227,
        lighting_std: float | None = 0.1,
        value_scale: float = 1.0,
        lighting_formula: str = "cuda-convnet2",
        lighting_rescale: bool = False,
    ) -> None:
        steps = [
            rescale_and_centre(resize_size),
            SubtractMean(mean),
            v2.RandomCrop(crop_size),
            v2.RandomHorizontalFlip(p=0.5),
        ]
        if lighting_std is not None:
            steps.append(PCALighting(eigval, eigvec, lighting_std, lighting_formula))
        scale = training_scale(value_scale, lighting_std, lighting_rescale)
        if scale != 1:
            steps.append(Scale(scale))
        self.transforms = v2.Compose(steps)

    def __call__(self, image: Image.Image) -> Tensor:
        return self.transforms(image)


class EvalPreset:
    """The centre crop (validation) or the ten crops (testing) of the mean-subtracted image."""

    def __init__(
        self, mean: Tensor, resize_size: int = 256, crop_size: int = 227, ten_crops: bool = False,
        value_scale: float = 1.0,
    ) -> None:
        self.prepare = v2.Compose([rescale_and_centre(resize_size), SubtractMean(mean)])
        self.crop_size, self.ten_crops, self.value_scale = crop_size, ten_crops, value_scale

    def __call__(self, image: Image.Image) -> Tensor:
        image = self.prepare(image)
        if self.ten_crops:
            crops = ten_crop(image, self.crop_size)
        else:
            crops = F.center_crop(image, [self.crop_size, self.crop_size])
        return crops * self.value_scale if self.value_scale != 1 else crops
