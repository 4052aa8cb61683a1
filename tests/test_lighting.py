"""PCA lighting as the authors' code computed it, in both data paths (files image by image, prepared batches):
over many draws the added colour has covariance lighting_std^2 * P diag(lambda) P^T in the units of the network's
input, at any value_scale; the printed reading (alpha_i * lambda_i) and cuda-convnet2's 1 / (1 + 0.1) rescale are
options."""

import pytest
import torch

from alexnet_lightning.data.transforms import BatchAugmentation, TrainTransforms

SIDE, CROP, DRAWS = 8, 6, 6000
EIGVAL = torch.tensor([0.04, 0.01, 0.0025], dtype=torch.float64)  # [0, 1]-scale variances along the eigenvectors
EIGVEC = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
COLOUR = torch.tensor([200, 90, 30], dtype=torch.uint8)  # one flat colour: crops and mirrors change nothing
MEAN = torch.tensor([0.5, 0.4, 0.3])


def file_path_outputs(value_scale: float, **options) -> torch.Tensor:
    """The mean colour of each of DRAWS training crops of one flat image through TrainTransforms: [DRAWS, 3]."""
    preset = TrainTransforms(MEAN, EIGVAL.float(), EIGVEC.float(), SIDE, CROP, 0.1, value_scale, **options)
    image = COLOUR.view(3, 1, 1).expand(3, SIDE, SIDE).clone()  # a uint8 tensor goes through as a PIL image would
    torch.manual_seed(0)
    return torch.stack([preset(image).double().mean((1, 2)) for _ in range(DRAWS)])


def prepared_path_outputs(value_scale: float, **options) -> torch.Tensor:
    augmentation = BatchAugmentation(MEAN, EIGVAL.float(), EIGVEC.float(), CROP, 0.1, value_scale, **options)
    images = COLOUR.view(1, 3, 1, 1).expand(1000, 3, SIDE, SIDE)
    return torch.cat([augmentation.train(images, seed).double().mean((2, 3)) for seed in range(DRAWS // 1000)])


def assert_covariance(colours: torch.Tensor, variances: torch.Tensor) -> None:
    """The colours' covariance is EIGVEC diag(variances) EIGVEC^T: whitened by it, the identity, within about four
    standard errors of a covariance estimated from DRAWS draws (1 / sqrt(DRAWS) = 0.013 off the diagonal)."""
    whiten = EIGVEC / variances.sqrt()
    torch.testing.assert_close(whiten.T @ torch.cov(colours.T) @ whiten, torch.eye(3, dtype=torch.float64),
                               rtol=0, atol=0.07)


@pytest.mark.parametrize("outputs", [file_path_outputs, prepared_path_outputs], ids=["files", "prepared"])
@pytest.mark.parametrize("value_scale", [1.0, 255.0])
def test_the_added_colour_has_the_covariance_of_the_authors_code(outputs, value_scale):
    colours = outputs(value_scale)
    centred = (COLOUR.double() / 255 - MEAN.double()) * value_scale  # the colour without noise
    torch.testing.assert_close(colours.mean(0), centred, rtol=0, atol=0.01 * value_scale)
    # cuda-convnet2: alpha_i ~ N(0, 0.1) times the standard deviation sqrt(lambda_i): 0.01 * P diag(lambda) P^T.
    assert_covariance(colours, 0.01 * EIGVAL * value_scale**2)


@pytest.mark.parametrize("outputs", [file_path_outputs, prepared_path_outputs], ids=["files", "prepared"])
def test_the_printed_reading_is_an_option(outputs):
    colours = outputs(255.0, lighting_formula="printed")
    # The paper's alpha_i * lambda_i, lambda in [0, 1]-scale units, then scaled: 0.01 * P diag(lambda^2) P^T * 255^2.
    assert_covariance(colours, 0.01 * EIGVAL**2 * 255**2)


@pytest.mark.parametrize("outputs", [file_path_outputs, prepared_path_outputs], ids=["files", "prepared"])
def test_the_rescale_by_one_over_one_point_one_is_an_option(outputs):
    colours = outputs(255.0, lighting_rescale=True)
    centred = (COLOUR.double() / 255 - MEAN.double()) * 255 / 1.1  # the image and its noise, both rescaled
    torch.testing.assert_close(colours.mean(0), centred, rtol=0, atol=0.01 * 255)
    assert_covariance(colours, 0.01 * EIGVAL * (255 / 1.1) ** 2)
    # Off by default; validation and test images are never rescaled.
    augmentation = BatchAugmentation(MEAN, EIGVAL.float(), EIGVEC.float(), CROP, 0.1, 255.0, lighting_rescale=True)
    image = COLOUR.view(1, 3, 1, 1).expand(2, 3, SIDE, SIDE)
    torch.testing.assert_close(augmentation.centre(image).double().mean((0, 2, 3)),
                               (COLOUR.double() / 255 - MEAN.double()) * 255, rtol=0, atol=1e-4)
