"""The paper's input pipeline, train and eval side by side (docs/paper.md, Sections 2 and 4.1).

Every split first decodes to RGB, rescales the shorter side to ``resize_size``, takes the central
``resize_size`` square and subtracts the training set's mean (Section 2: "the only other
preprocessing"). Training then takes a random ``crop_size`` crop, mirrors it with p = 0.5 and adds
PCA lighting noise (Section 4.1); validation takes the centre crop; testing takes ten crops
(Section 4.1: "averaging the predictions made by the network's softmax layer on the ten patches").
Values are centred RGB: in [0, 1] minus the mean, times ``value_scale`` (255 gives the paper's raw pixel values,
on which its LRN constants and initialisation act); the paper divides by no standard deviation.

``TrainTransforms`` and ``EvalTransforms`` transform files image by image; ``BatchAugmentation`` does the same to whole
uint8 batches of prepared 256x256 squares (``shards.py``), on the device the batch is on.
"""

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from alexnet_lightning.data.sources import rescale_and_centre


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


class TrainTransforms:
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


class EvalTransforms:
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


class BatchAugmentation:
    """The reference pipeline (``TrainTransforms`` / ``EvalTransforms``) on whole uint8 batches, in whole-batch
    tensor operations: a handful of kernels per batch on a GPU, whatever the batch size.

    The mean moves to the batch's device once. Per-image random choices come from a generator seeded by the
    batch's seed, drawn on the host (the same on any device); they have the reference's distribution: crop
    offsets uniform on 0 .. S - crop, mirror with p = 0.5, alpha_i ~ N(0, lighting_std).
    """

    def __init__(
        self, mean: Tensor, eigval: Tensor, eigvec: Tensor, crop_size: int, lighting_std: float | None,
        value_scale: float = 1.0, lighting_formula: str = "cuda-convnet2", lighting_rescale: bool = False,
    ):
        self.mean = mean if mean.dim() == 3 else mean.view(3, 1, 1)
        self.weights, self.eigvec = lighting_weights(eigval, lighting_formula), eigvec
        self.crop, self.lighting_std, self.value_scale = crop_size, lighting_std, value_scale
        self.train_scale = training_scale(value_scale, lighting_std, lighting_rescale)
        self.mean_pixels: Tensor | None = None  # ``_with_reversed`` of the mean image, on the batches' device
        self.scratch: dict[str, Tensor] = {}  # buffers reused by every batch: no fresh memory for intermediates

    @staticmethod
    def _scaled(x: Tensor, scale: float) -> Tensor:
        return x.mul_(scale) if scale != 1 else x

    def _mean_on(self, device: torch.device) -> Tensor:
        if self.mean.device != device:
            self.mean = self.mean.to(device)
            self.mean_pixels = None
        return self.mean

    def _centred(self, images: Tensor) -> Tensor:
        return F.to_dtype(images, torch.float32, scale=True).sub_(self._mean_on(images.device))

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
        """Crops image i at (top[i], left[i]), mirrors it if flip[i] and adds the lighting of alpha[i]; ``top``,
        ``left``, ``flip`` and ``alpha`` are on the host.

        The reference's operations (to float, scale, subtract the mean, crop, mirror, lighting, scale) on the whole
        batch, with the values of the reference's order: the mirrored or plain crops of the uint8 images are one
        gather from their pixels forwards and reversed (``_crops``), those of the mean image too (its reversed pixels
        made once); the rest is elementwise.
        """
        c, device, side = self.crop, images.device, images.shape[-1]
        lighting = None if alpha is None else (alpha.to(self.weights) * self.weights) @ self.eigvec.T  # [B, 3]
        top, left, flip, lighting = _to_device(device, top, left, flip, lighting)
        image, shape = torch.arange(len(images), device=device), (len(images), 3, c, c)
        pixels = _with_reversed(images.reshape(-1), self._scratch("pixels", (2 * images.numel(),), images))
        crops = _crops(pixels, side, image, top, left, flip, c, self._scratch("crops", shape, images))
        x = crops.to(torch.float32)  # in uint8 units until the last step: the reference's 1 / 255 folded into it
        mean = self._mean_on(device)
        if mean.shape[-1] == 1:  # a channel mean
            x.sub_(mean * 255)
        else:
            if self.mean_pixels is None:
                self.mean_pixels = _with_reversed(mean.reshape(-1) * 255)
            x.sub_(_crops(self.mean_pixels, side, torch.zeros_like(image), top, left, flip, c,
                          self._scratch("mean crops", shape, x)))
        if lighting is not None:
            x += lighting[..., None, None] * 255
        return self._scaled(x, self.train_scale / 255)

    def _scratch(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """The buffer ``name``, of ``like``'s dtype and device."""
        buffer = self.scratch.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self.scratch[name] = like.new_empty(shape)
        return buffer

    def centre(self, images: Tensor) -> Tensor:
        return self._scaled(F.center_crop(self._centred(images), [self.crop, self.crop]), self.value_scale)

    def ten_crops(self, images: Tensor) -> Tensor:
        """[B, 10, 3, crop, crop] in ``transforms.ten_crop``'s order."""
        crops = F.five_crop(self._centred(images), [self.crop, self.crop])
        return self._scaled(torch.stack([*crops, *(crop.flip(-1) for crop in crops)], 1), self.value_scale)


def _with_reversed(pixels: Tensor, out: Tensor | None = None) -> Tensor:
    """The pixels, then the same reversed: in the second half every row of every image reads mirrored."""
    return torch.cat([pixels, pixels.flip(0)], out=out)


def _crops(
    pixels: Tensor, side: int, image: Tensor, top: Tensor, left: Tensor, flip: Tensor, crop: int, out: Tensor
) -> Tensor:
    """Into ``out`` [B, 3, crop, crop]: the crop at (top[i], left[i]) of image image[i] of the [N, 3, side, side]
    images whose ``_with_reversed`` pixels are ``pixels``, mirrored where flip[i]. One ``index_select`` of runs of
    crop pixels from an overlapping view of the pixels: whole runs are copied, about as fast as slicing."""
    channel, line = torch.arange(3, device=pixels.device), torch.arange(crop, device=pixels.device)
    start = ((image[:, None, None] * 3 + channel[:, None]) * side + top[:, None, None] + line) * side  # [B, 3, crop]
    start = start + left[:, None, None]
    # Pixels p + crop - 1 down to p, mirrored, are the run at 2 total - p - crop, in the reversed half.
    start = torch.where(flip[:, None, None], len(pixels) - start - crop, start)
    runs = pixels.as_strided((len(pixels) - crop + 1, crop), (1, 1))  # run k: pixels k .. k + crop - 1
    return torch.index_select(runs, 0, start.flatten(), out=out.view(-1, crop)).view(out.shape)


def _to_device(device: torch.device, *tensors: Tensor | None) -> list[Tensor | None]:
    """Small host tensors on ``device``; to a GPU from pinned memory without waiting for it (a copy from pageable
    memory would wait for the GPU's queue to drain every batch)."""
    if device.type != "cuda":
        return [t if t is None else t.to(device) for t in tensors]
    return [t if t is None else t.pin_memory().to(device, non_blocking=True) for t in tensors]
