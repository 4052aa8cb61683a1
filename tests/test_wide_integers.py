"""32-bit integer images (PIL mode I) are scaled to 8 bits from their real white level, not clipped at 16 bits."""

import numpy as np
import pytest
from PIL import Image

from alexnet_lightning.data.sources import load_rgb

RAMP16 = np.array([[0, 257, 32896, 65535]], dtype=np.int32)  # 8-bit 0, 1, 128, 255 in 16 bits
RAMP32 = np.array([[0, 2**23, 2**30, 2**31 - 1]], dtype=np.int32)  # 0, 1, 128, 255 of 32 bits


@pytest.mark.parametrize(("suffix", "pixels", "expected"), [
    (".pgm", RAMP16.astype(np.uint16), [0, 1, 128, 255]),  # 16-bit data that PIL opens as mode I
    (".tif", RAMP16, [0, 1, 128, 255]),
    (".tif", RAMP32, [0, 1, 128, 255]),  # clipped at 65535 before scaling, these were all white
    (".tif", np.array([[-5, 0, 2**31 - 1, 2**30]], dtype=np.int32), [0, 0, 255, 128]),
])
def test_mode_i_images_scale_from_their_white_level(tmp_path, suffix, pixels, expected):
    path = tmp_path / f"wide{suffix}"
    Image.fromarray(pixels).save(path)
    with Image.open(path) as image:
        assert image.mode == "I"
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (1, 4, 3)
    assert (rgb[0, :, 0] == rgb[0, :, 2]).all()  # grey
    assert rgb[0, :, 0].tolist() == expected
