"""A small built-in stand-in for ImageNet, so that everything runs without downloading anything.

30 classes of shapes, outlines and textures: 16 filled shapes (circle, ellipse, semicircle, crescent, square,
rhombus, bar, trapezoid, kite, triangle, pentagon, hexagon, star, cross, L, arrow), 4 outlines (ring and the frames
of a square, a triangle and a star) and 10 textures filling the image (horizontal, vertical, rising and falling
stripes, zigzag and wavy lines, checkerboard, dots, grid, concentric rings). They are drawn in foreground/background
colours chosen independently of the class, at random positions, scales and rotations, with impulse noise: colour
carries no label information, only shape and texture do. Several classes have near neighbours (circle, ellipse and
hexagon; square, rhombus and kite; the stripes), so a network's second to fifth guesses are informative and top-5
error says something (with the ten distinct classes of the first version it was 0.2% in every run). The files are
real JPEGs and PNGs (about 15% grayscale, about 30% PNG) of varied sizes and aspect ratios, in the ImageFolder
layout ``train/<class>/*``, ``val/<class>/*``, so they go through exactly the pipeline ImageNet goes through.

Every image is drawn from its own seed derived from (seed, split, class, index), so a seed always
gives the same files. The set is generated on first use into the cache folder.
"""

import math
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from alexnet_lightning.data.sources import cache_dir

SHAPES = ("circle", "ellipse", "semicircle", "crescent", "square", "rhombus", "bar", "trapezoid", "kite", "triangle",
          "pentagon", "hexagon", "star", "cross", "ell", "arrow")
OUTLINES = ("ring", "square_frame", "triangle_frame", "star_frame")
TEXTURES = ("horizontal_stripes", "vertical_stripes", "rising_stripes", "falling_stripes", "zigzag", "waves",
            "checkerboard", "dots", "grid", "concentric_rings")
CLASSES = SHAPES + OUTLINES + TEXTURES
NUM_CLASSES = len(CLASSES)
VERSION = 3  # part of the folder name: bump it whenever the drawing or the split sizes change
SPLITS = ("train", "val")
TRAIN_PER_CLASS, VAL_PER_CLASS = 100, 100  # 3,000 test images: the test-image part of an interval shrinks


def _colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Foreground and background colours, independent of the class, far enough apart in luminance to
    stay distinct after conversion to grayscale."""
    luminance = np.array([0.299, 0.587, 0.114])
    while True:
        foreground, background = rng.integers(0, 256, size=(2, 3))
        if abs(luminance @ (foreground - background)) > 60:
            return tuple(foreground.tolist()), tuple(background.tolist())


def _regular(sides: int, radius: float, start: float = 0.0) -> np.ndarray:
    angles = start + np.arange(sides) * 2 * np.pi / sides
    return radius * np.stack([np.cos(angles), np.sin(angles)], 1)


def _polygon(name: str, r: float) -> np.ndarray:
    """Vertices [N, 2] of a shape of outer radius r, centred on the origin."""
    a = 0.3 * r
    arc = np.linspace(0, np.pi, 24)
    vertices = {
        "ellipse": np.stack([r * np.cos(2 * arc), 0.5 * r * np.sin(2 * arc)], 1),
        "semicircle": np.stack([r * np.cos(arc), r * np.sin(arc) - 0.4 * r], 1),
        "square": _regular(4, r, np.pi / 4),
        "rhombus": np.array([(r, 0), (0, 0.5 * r), (-r, 0), (0, -0.5 * r)]),
        "bar": np.array([(r, 0.3 * r), (-r, 0.3 * r), (-r, -0.3 * r), (r, -0.3 * r)]),
        "trapezoid": np.array([(-r, -0.5 * r), (r, -0.5 * r), (0.45 * r, 0.5 * r), (-0.45 * r, 0.5 * r)]),
        "kite": np.array([(0, r), (0.55 * r, 0.35 * r), (0, -r), (-0.55 * r, 0.35 * r)]),
        "triangle": _regular(3, r),
        "pentagon": _regular(5, r),
        "hexagon": _regular(6, r),
        "star": np.where(np.arange(10)[:, None] % 2 == 0, 1.0, 0.4) * _regular(10, r),
        "cross": np.array([(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r), (-a, -r), (-a, -a), (-r, -a), (-r, a),
                           (-a, a), (-a, r)]),
        # An L: a vertical bar and a horizontal foot, asymmetric under rotation and mirroring.
        "ell": np.array([(-0.7, -0.7), (-0.1, -0.7), (-0.1, 0.1), (0.7, 0.1), (0.7, 0.7), (-0.7, 0.7)]) * r,
        "arrow": np.array([(r, 0), (0.1 * r, 0.7 * r), (0.1 * r, 0.25 * r), (-r, 0.25 * r), (-r, -0.25 * r),
                           (0.1 * r, -0.25 * r), (0.1 * r, -0.7 * r)]),
    }
    return vertices[name.removesuffix("_frame")]


def _texture(name: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean foreground mask [H, W] of a texture that fills the image."""
    period = rng.uniform(0.12, 0.25) * min(width, height)
    # Stripes may tilt only a little, or the four directions would be the same class.
    tilt = {"vertical_stripes": 0.0, "rising_stripes": -np.pi / 4, "falling_stripes": np.pi / 4}
    angle = tilt.get(name, 0.0) + rng.uniform(-0.3, 0.3) if name.endswith(("stripes", "zigzag", "waves")) \
        else rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u = (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform()
    v = (-x * np.sin(angle) + y * np.cos(angle)) / period + rng.uniform()
    if name == "vertical_stripes" or name.endswith("ing_stripes"):
        return u % 1 < 0.5
    if name == "horizontal_stripes":
        return v % 1 < 0.5
    if name == "zigzag":
        return (v + 0.6 * np.abs(u % 1 - 0.5)) % 1 < 0.4
    if name == "waves":
        return (v + 0.15 * np.sin(2 * np.pi * u)) % 1 < 0.4
    if name == "checkerboard":
        return (np.floor(u) + np.floor(v)) % 2 == 0
    if name == "dots":
        return (u % 1 - 0.5) ** 2 + (v % 1 - 0.5) ** 2 < 0.3**2
    if name == "grid":
        return (u % 1 < 0.2) | (v % 1 < 0.2)
    if name == "concentric_rings":
        centre = rng.uniform([0, 0], [width, height])
        return np.hypot(x - centre[0], y - centre[1]) / period % 1 < 0.5
    raise ValueError(name)


def draw(name: str, rng: np.random.Generator) -> Image.Image:
    """One noisy RGB image of class ``name``."""
    width, height = (int(side) for side in rng.integers(64, 161, size=2))
    foreground, background = _colours(rng)
    if name in TEXTURES:
        pixels = np.where(_texture(name, width, height, rng)[..., None], np.array(foreground), np.array(background))
    else:
        image = Image.new("RGB", (width, height), background)
        radius = rng.uniform(0.25, 0.45) * min(width, height)
        centre = rng.uniform([radius, radius], [width - radius, height - radius])
        canvas = ImageDraw.Draw(image)
        box = [*(centre - radius), *(centre + radius)]
        paint = {"outline": foreground, "width": max(2, round(0.2 * radius))} if name in OUTLINES \
            else {"fill": foreground}
        if name in ("circle", "ring", "crescent"):
            canvas.ellipse(box, **paint)
            if name == "crescent":  # a bite out of the disc, towards a random side
                angle = rng.uniform(0, 2 * np.pi)
                bite = centre + 0.5 * radius * np.array([math.cos(angle), math.sin(angle)])
                canvas.ellipse([*(bite - 0.85 * radius), *(bite + 0.85 * radius)], fill=background)
        else:
            angle = rng.uniform(0, 2 * np.pi)
            rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            vertices = _polygon(name, radius) @ rotation.T + centre
            canvas.polygon([tuple(vertex) for vertex in vertices.tolist()], **paint)
        pixels = np.array(image)
    # Impulse noise: 0.3-1% of the pixels take random colours. Unlike Gaussian noise it costs little
    # space in a PNG, which keeps the whole set at a few MB.
    noisy = rng.uniform(size=(height, width)) < rng.uniform(0.003, 0.01)
    pixels[noisy] = rng.integers(0, 256, size=(int(noisy.sum()), 3))
    return Image.fromarray(pixels.astype(np.uint8))


def _generate_class(root: Path, seed: int, split_index: int, name: str, count: int) -> None:
    folder = root / SPLITS[split_index] / name
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


def generate(
    root: Path, seed: int = 0, train_per_class: int = TRAIN_PER_CLASS, val_per_class: int = VAL_PER_CLASS,
    classes: tuple[str, ...] = CLASSES, workers: int = 1,
) -> None:
    """Writes the dataset into ``root`` (``train/<class>/NNNNN.{jpg,png}``, same for ``val``); ``classes``: all
    of them, or some (a smaller set for tests), each with the images it has in the whole set; a class folder at a time
    in each of ``workers`` processes (every image has its own seed: the same files whatever the number)."""
    counts = (train_per_class, val_per_class)
    tasks = [(root, seed, i, name, count) for i, count in enumerate(counts) for name in classes]
    if workers <= 1:
        for task in tasks:
            _generate_class(*task)
        return
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_generate_class, *zip(*tasks)))  # list(): raises the first worker's error


def ensure(
    seed: int = 0, train_per_class: int = TRAIN_PER_CLASS, val_per_class: int = VAL_PER_CLASS, cache: Path | None = None
) -> Path:
    """The dataset's folder in the cache (default: ``sources.cache_dir()``), generated on first use.

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
        generate(partial, seed, train_per_class, val_per_class, workers=len(os.sched_getaffinity(0)))
        partial.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        partial.rename(final)
    except OSError:
        if not final.is_dir():  # another process finishing first is fine
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final
