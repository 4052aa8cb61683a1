"""The paper's pipeline (docs/paper.md, Sections 2 and 4.1) against independent computations."""

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_lightning.data.sources import load_rgb, rescale_and_centre
from alexnet_lightning.data.statistics import PUBLISHED_EIGVAL, PUBLISHED_EIGVEC
from alexnet_lightning.data.transforms import (
    EvalTransforms,
    PCALighting,
    TrainTransforms,
    lighting_weights,
    pca_lighting,
    ten_crop,
)

RESIZE, CROP = 20, 14


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_rescale_and_centre_takes_the_central_square_of_the_shorter_side() -> None:
    # Three 10x10 colour blocks side by side: the central square of the 30x10 image is the green one.
    pixels = np.zeros((10, 30, 3), dtype=np.uint8)
    pixels[:, :10, 0] = pixels[:, 10:20, 1] = pixels[:, 20:, 2] = 255
    out = rescale_and_centre(10)(Image.fromarray(pixels))
    assert out.shape == (3, 10, 10) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 10, 10))


def test_rescale_and_centre_rescales_the_shorter_side() -> None:
    out = rescale_and_centre(RESIZE)(random_image(50, 31))
    assert out.shape == (3, RESIZE, RESIZE)
    assert 0 <= out.min() and out.max() <= 1


def test_random_crops_are_inside_the_image_and_sometimes_mirrored() -> None:
    image = random_image(45, 30)
    mean = torch.rand(3, RESIZE, RESIZE)
    centred = rescale_and_centre(RESIZE)(image) - mean
    preset = TrainTransforms(mean, PUBLISHED_EIGVAL, PUBLISHED_EIGVEC, RESIZE, CROP, lighting_std=None)
    offsets, mirrored = set(), []
    torch.manual_seed(0)
    for _ in range(40):
        crop = preset(image)
        assert crop.shape == (3, CROP, CROP)
        windows = {
            (top, left): centred[:, top : top + CROP, left : left + CROP]
            for top in range(RESIZE - CROP + 1)
            for left in range(RESIZE - CROP + 1)
        }
        matches = [
            (offset, flip)
            for offset, window in windows.items()
            for flip in (False, True)
            if torch.equal(crop, window.flip(-1) if flip else window)
        ]
        assert len(matches) == 1  # exactly one slice of the image, so the crop lies inside it
        offsets.add(matches[0][0])
        mirrored.append(matches[0][1])
    assert len(offsets) > 10
    assert 0 < sum(mirrored) < 40


def test_ten_crops_are_the_corners_the_centre_and_their_mirrors() -> None:
    image = torch.arange(3 * 10 * 12, dtype=torch.float32).view(3, 10, 12)
    crops = ten_crop(image, 6)
    expected = [
        image[:, :6, :6],  # top-left
        image[:, :6, 6:],  # top-right
        image[:, 4:, :6],  # bottom-left
        image[:, 4:, 6:],  # bottom-right
        image[:, 2:8, 3:9],  # centre
    ]
    expected += [crop.flip(-1) for crop in expected]
    assert crops.shape == (10, 3, 6, 6)
    for index, crop in enumerate(expected):
        assert torch.equal(crops[index], crop), index


def test_eval_presets_centre_crop_and_ten_crops() -> None:
    image = random_image(33, 27)
    mean = torch.rand(3, RESIZE, RESIZE)
    centred = rescale_and_centre(RESIZE)(image) - mean
    margin = (RESIZE - CROP) // 2
    centre = EvalTransforms(mean, RESIZE, CROP)(image)
    assert torch.equal(centre, centred[:, margin : margin + CROP, margin : margin + CROP])
    crops = EvalTransforms(mean, RESIZE, CROP, ten_crops=True)(image)
    assert crops.shape == (10, 3, CROP, CROP)
    assert torch.equal(crops[4], centre) and torch.equal(crops[9], centre.flip(-1))


@pytest.mark.parametrize("formula", ["cuda-convnet2", "printed"])
def test_pca_lighting_matches_the_formula(formula: str) -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(-0.5, 0.5, size=(3, 5, 4))
    alpha = np.array([0.13, -0.07, 0.02])
    eigval, eigvec = PUBLISHED_EIGVAL.double().numpy(), PUBLISHED_EIGVEC.double().numpy()
    # cuda-convnet2 adds sum_i alpha_i s_i p_i with s_i the standard deviations; the printed formula (Section 4.1)
    # adds [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T.
    weights = np.sqrt(eigval) if formula == "cuda-convnet2" else eigval
    shift = sum(eigvec[:, i] * alpha[i] * weights[i] for i in range(3))
    expected = image + shift[:, None, None]
    out = pca_lighting(torch.from_numpy(image), torch.from_numpy(alpha),
                       lighting_weights(PUBLISHED_EIGVAL.double(), formula), PUBLISHED_EIGVEC.double())
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="lighting_formula"):
        lighting_weights(PUBLISHED_EIGVAL, "eigval")


def test_pca_lighting_draws_one_alpha_per_image_with_the_given_std() -> None:
    image = torch.rand(3, 8, 8)
    lighting = PCALighting(PUBLISHED_EIGVAL, PUBLISHED_EIGVEC, std=0.1)
    torch.manual_seed(1)
    shift = lighting(image) - image
    torch.manual_seed(1)
    alpha = torch.randn(3) * 0.1
    expected = PUBLISHED_EIGVEC @ (alpha * PUBLISHED_EIGVAL.sqrt())
    torch.testing.assert_close(shift, expected.view(3, 1, 1).expand(3, 8, 8))
    assert not torch.allclose(lighting(image), lighting(image))  # a fresh alpha per use


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_load_rgb_converts_grayscale_and_cmyk_jpegs(tmp_path, mode: str) -> None:
    path = tmp_path / "image.jpg"
    random_image(16, 12).convert(mode).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (16, 12)
    pixels = np.asarray(image, dtype=int)
    if mode == "L":
        assert (pixels == pixels[..., :1]).all()


def test_load_rgb_composites_alpha_onto_white(tmp_path) -> None:
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0, 0)  # fully transparent red: white
    pixels[0, 1] = (0, 0, 0, 255)  # opaque black: black
    pixels[1, :] = (0, 0, 0, 128)  # half-transparent black: mid grey
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels, "RGBA").save(path)
    out = np.asarray(load_rgb(path), dtype=int)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 0, 0]
    assert np.all(np.abs(out[1] - 127) <= 1)


def test_load_rgb_refuses_a_truncated_jpeg(tmp_path) -> None:
    path = tmp_path / "whole.jpg"
    random_image(64, 64).save(path)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(OSError, match="truncated"):
        load_rgb(truncated)
