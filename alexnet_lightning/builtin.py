"""A small built-in stand-in for ImageNet, so that everything runs without downloading anything.

36 classes: six shapes (circle, square, triangle, cross, star, L) on six backgrounds (plain, horizontal stripes,
vertical stripes, checkerboard, dots, grid), in colours chosen independently of the class, at random positions,
scales and rotations, with impulse noise: colour carries no label information, only shape and texture do. Each
class shares its shape or its background with ten others, so a network's second to fifth guesses are informative
and top-5 error says something (with the ten distinct classes of the first version it was 0.2% in every run). The
files are real JPEGs and PNGs (about 15% grayscale, about 30% PNG) of varied sizes and aspect ratios, in the
ImageFolder layout ``train/<class>/*``, ``val/<class>/*``, so they go through exactly the pipeline ImageNet goes
through.

Every image is drawn from its own seed derived from (seed, split, class, index), so a seed always
gives the same files. The set is generated on first use into the cache folder.
"""

import argparse
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from alexnet_lightning.statistics import cache_dir

SHAPES = ("circle", "square", "triangle", "cross", "star", "ell")
BACKGROUNDS = ("plain", "horizontal_stripes", "vertical_stripes", "checkerboard", "dots", "grid")
CLASSES = tuple(f"{shape}_on_{background}" for shape in SHAPES for background in BACKGROUNDS)
NUM_CLASSES = len(CLASSES)
VERSION = 2  # part of the folder name: bump it whenever the drawing changes
SPLITS = ("train", "val")
TRAIN_PER_CLASS, VAL_PER_CLASS = 100, 25


def _colours(rng: np.random.Generator) -> tuple[tuple[int, ...], ...]:
    """Shape, background and background-pattern colours, independent of the class: the shape far from both others
    in luminance, the pattern less far from the background, so that both stay distinct after conversion to
    grayscale and the shape stands out from the pattern."""
    luminance = np.array([0.299, 0.587, 0.114])
    while True:
        shape, background, pattern = rng.integers(0, 256, size=(3, 3))
        lum = luminance @ np.stack([shape, background, pattern], 1)
        if min(abs(lum[0] - lum[1]), abs(lum[0] - lum[2])) > 60 and abs(lum[1] - lum[2]) > 30:
            return tuple(shape.tolist()), tuple(background.tolist()), tuple(pattern.tolist())


def _polygon(name: str, radius: float) -> np.ndarray:
    """Vertices [N, 2] of a shape of the given outer radius, centred on the origin."""
    if name == "square":
        angles = np.pi / 4 + np.arange(4) * np.pi / 2
        return radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    if name == "triangle":
        angles = np.arange(3) * 2 * np.pi / 3
        return radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    if name == "star":
        angles = np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, 0.4 * radius)
        return radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
    a, r = 0.3 * radius, radius
    if name == "cross":
        return np.array(
            [(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r), (-a, -r), (-a, -a), (-r, -a), (-r, a), (-a, a), (-a, r)]
        )
    if name == "ell":  # an L: a vertical bar and a horizontal foot, asymmetric under rotation and mirroring
        s = r / math.sqrt(2)
        return np.array([(-s, -s), (-s + 2 * a, -s), (-s + 2 * a, s - 2 * a), (s, s - 2 * a), (s, s), (-s, s)])
    raise ValueError(name)


def _texture(name: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask [H, W] of a periodic background pattern."""
    period = rng.uniform(0.12, 0.25) * min(width, height)
    # Stripes may tilt only a little, or horizontal and vertical would be the same class.
    angle = rng.uniform(-0.35, 0.35) if name.endswith("stripes") else rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u = (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform()
    v = (-x * np.sin(angle) + y * np.cos(angle)) / period + rng.uniform()
    if name == "horizontal_stripes":
        return v % 1 < 0.5
    if name == "vertical_stripes":
        return u % 1 < 0.5
    if name == "checkerboard":
        return (np.floor(u) + np.floor(v)) % 2 == 0
    if name == "dots":
        return (u % 1 - 0.5) ** 2 + (v % 1 - 0.5) ** 2 < 0.3**2
    if name == "grid":
        return (u % 1 < 0.2) | (v % 1 < 0.2)
    raise ValueError(name)


def draw(name: str, rng: np.random.Generator) -> Image.Image:
    """One noisy RGB image of class ``name`` ("<shape>_on_<background>")."""
    shape, background = name.split("_on_")
    width, height = (int(side) for side in rng.integers(64, 161, size=2))
    colour, background_colour, pattern_colour = _colours(rng)
    pixels = np.empty((height, width, 3), np.int64)
    pixels[...] = background_colour
    if background != "plain":
        pixels[_texture(background, width, height, rng)] = pattern_colour
    image = Image.fromarray(pixels.astype(np.uint8))
    radius = rng.uniform(0.25, 0.45) * min(width, height)
    centre = rng.uniform([radius, radius], [width - radius, height - radius])
    canvas = ImageDraw.Draw(image)
    if shape == "circle":
        canvas.ellipse([*(centre - radius), *(centre + radius)], fill=colour)
    else:
        angle = rng.uniform(0, 2 * np.pi)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        vertices = _polygon(shape, radius) @ rotation.T + centre
        canvas.polygon([tuple(vertex) for vertex in vertices.tolist()], fill=colour)
    pixels = np.array(image)
    # Impulse noise: 0.3-1% of the pixels take random colours. Unlike Gaussian noise it costs little
    # space in a PNG, which keeps the whole set at a few MB.
    noisy = rng.uniform(size=(height, width)) < rng.uniform(0.003, 0.01)
    pixels[noisy] = rng.integers(0, 256, size=(int(noisy.sum()), 3))
    return Image.fromarray(pixels)


def generate(
    root: Path, seed: int = 0, train_per_class: int = TRAIN_PER_CLASS, val_per_class: int = VAL_PER_CLASS,
    classes: tuple[str, ...] = CLASSES,
) -> None:
    """Writes the dataset into ``root`` (``train/<class>/NNNNN.{jpg,png}``, same for ``val``); ``classes``: all
    of them, or some (a smaller set for tests), each with the images it has in the whole set."""
    for split_index, (split, count) in enumerate(zip(SPLITS, (train_per_class, val_per_class), strict=True)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                rng = np.random.default_rng([seed, split_index, CLASSES.index(name), index])
                image = draw(name, rng)
                if rng.uniform() < 0.15:
                    image = image.convert("L")
                if rng.uniform() < 0.3:
                    image.save(folder / f"{index:05d}.png")
                else:
                    image.save(folder / f"{index:05d}.jpg", quality=75)


def ensure(
    seed: int = 0, train_per_class: int = TRAIN_PER_CLASS, val_per_class: int = VAL_PER_CLASS, cache: Path | None = None
) -> Path:
    """The dataset's folder in the cache (default: ``statistics.cache_dir()``), generated on first use.

    Generation writes into a temporary folder and renames it into place, so an interrupted run is
    never mistaken for a finished one.
    """
    cache = cache_dir() if cache is None else cache
    final = cache / f"builtin-v{VERSION}-seed{seed}-{train_per_class}x{val_per_class}"
    if final.is_dir():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache))
    try:
        generate(partial, seed, train_per_class, val_per_class)
        partial.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        partial.rename(final)
    except OSError:
        if not final.is_dir():  # another process finishing first is fine
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> None:
    """Generates the built-in dataset and prints its folder."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=TRAIN_PER_CLASS)
    parser.add_argument("--val-per-class", type=int, default=VAL_PER_CLASS)
    args = parser.parse_args(argv)
    print(ensure(args.seed, args.train_per_class, args.val_per_class))


if __name__ == "__main__":
    main()
