"""Where images come from: folders, the ILSVRC-2012 archives, and files decoded to RGB at the paper's 256x256.

A data root is one of:
- an ImageFolder layout, ``<root>/train/<class>/<image>`` and ``<root>/val/<class>/<image>``;
- the official ILSVRC-2012 archives (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar,
  ILSVRC2012_devkit_t12.tar.gz), which ``torchvision.datasets.ImageNet`` checks (MD5) and extracts on first use
  into ``<root>/train``, ``<root>/val`` and ``<root>/meta.bin``; the classes are the devkit's;
- a prepared folder (``prepared.json`` and shards, ``shards.py``).
The built-in stand-in (``standin.py``) is an ImageFolder layout in the cache folder.

The next steps of the pipeline read from here: ``statistics.py``, ``transforms.py``, ``shards.py``,
``datamodule.py``. Unreadable images are skipped with a warning naming the file (``SkipUnreadable``).
"""

import io
import os
import shutil
import struct
import tarfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, default_collate
from torchvision.datasets import DatasetFolder, ImageFolder, ImageNet, imagenet
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension
from torchvision.transforms import v2

ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz")
SPLITS = ("train", "val")
# What PIL raises on a file it cannot decode: not an image, zero bytes, truncated, corrupt headers.
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)
# torchvision's, compared case-insensitively (ImageNet's files end in .JPEG), and GIF (its first frame).
IMAGE_EXTENSIONS = (*IMG_EXTENSIONS, ".gif")
# PIL's modes of 16-bit grayscale, and "I" (32-bit), which is how it opens 16-bit PGM (and some PNG and TIFF) files.
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def cache_dir() -> Path:
    """``$ALEXNET_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/alexnet-lightning``, else ``~/.cache/alexnet-lightning``
    (the XDG base directory convention)."""
    if os.environ.get("ALEXNET_LIGHTNING_CACHE"):
        return Path(os.environ["ALEXNET_LIGHTNING_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alexnet-lightning"


def sample_seed(*keys: int) -> int:
    """A 63-bit seed that depends on the keys only (the run's seed, the epoch, a sample index)."""
    return int(np.random.SeedSequence(keys).generate_state(1, np.uint64)[0] >> np.uint64(1))


def load_rgb(path: str | Path) -> Image.Image:
    """Decodes an image file to 3-channel RGB.

    Grayscale, 1-bit, palette and CMYK convert to RGB; an alpha channel is composited onto white so that the colour
    hidden under transparent pixels (often garbage) never reaches the network. 16-bit grayscale (PNG, TIFF, PGM) is
    scaled to 8 bits, 65535 to 255 (PIL's own conversion clips it at 255: a white image); 32-bit integer pixels
    (mode I) likewise, from 65535 if they hold 16-bit values, else from 2**31 - 1 (negative ones are black);
    floating-point pixels (mode F) have no white level and raise ``ValueError``. Files of several frames (animated
    GIF, TIFF) give their first. The EXIF orientation is ignored, as torchvision's loader and ImageNet's tools ignore
    it: a file gives its pixels as stored. PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off, so a truncated file
    raises ``OSError`` instead of decoding half an image.
    """
    with Image.open(path) as image:
        if image.mode in SIXTEEN_BIT:
            pixels = np.asarray(image).astype(np.int64)
            # Mode I is 32-bit: 16-bit data stored as I (PNG, PGM) has white at 65535, other data at 2**31 - 1.
            white = 2**31 - 1 if image.mode == "I" and pixels.max(initial=0) > 65535 else 65535
            pixels = np.clip(pixels, 0, white)
            return Image.fromarray(((pixels * 255 + white // 2) // white).astype(np.uint8)).convert("RGB")
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


class SkipUnreadable(Dataset):
    """An image folder whose unreadable files give ``None``, with a warning naming the file."""

    def __init__(self, folder: DatasetFolder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int | tuple[int, int, int]) -> tuple[Tensor, int] | None:
        if isinstance(index, tuple):  # (seed, epoch, index) from ResumableSampler: seed this sample's augmentation
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(*index))
                return self[index[2]]
        path, target = self.folder.samples[index]
        try:  # only the decoding: an error of the transform (say, a crop larger than the image) is not a bad file
            image = self.folder.loader(path)
        except UNREADABLE as err:
            warnings.warn(f"Skipping unreadable image {path}: {err}", stacklevel=2)
            return None
        if self.folder.target_transform is not None:
            target = self.folder.target_transform(target)
        return (image if self.folder.transform is None else self.folder.transform(image)), target


def collate_skipping_unreadable(
    batch: list[tuple[Tensor, int] | None], image_shape: tuple[int, ...]
) -> tuple[Tensor, Tensor, Tensor]:
    """Stacks the readable samples and appends the number of unreadable files dropped from the batch.

    A batch of only unreadable files gives empty [0, *image_shape] images and [0] labels.
    """
    samples = [sample for sample in batch if sample is not None]
    skipped = torch.tensor(len(batch) - len(samples))
    if not samples:
        return torch.empty(0, *image_shape), torch.empty(0, dtype=torch.int64), skipped
    images, labels = default_collate(samples)
    return images, labels, skipped


def layout(root: Path) -> Literal["archives", "folders", "prepared"]:
    """Which kind of data root ``root`` is; raises, naming the path, if it is none of them."""
    if not root.is_dir():
        raise FileNotFoundError(f"Data root {root} does not exist or is not a folder.")
    if (root / "prepared.json").is_file():
        return "prepared"
    if all((root / archive).is_file() for archive in ARCHIVES):
        return "archives"
    if any((root / "train").glob("*.labels.npy")):
        raise FileNotFoundError(
            f"{root} holds prepared shards but no {root / 'prepared.json'}: the prepare did not finish; run "
            f"`python -m alexnet_lightning.data prepare SOURCE {root}` again to complete it"
        )
    missing = [str(root / split) for split in SPLITS if not (root / split).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"Data root {root} is neither an ImageFolder layout (train/<class>/<image> and "
            f"val/<class>/<image>; missing {', '.join(missing)}) nor a folder with the ILSVRC-2012 "
            f"archives ({', '.join(ARCHIVES)})."
        )
    return "folders"


def devkit_wnids(root: Path) -> list[str]:
    """The classes of the ILSVRC-2012 archives in ``root``: the WordNet ids of the leaf synsets in the devkit's
    meta.mat (1000 in ILSVRC-2012), sorted, which is torchvision's label order. Read from inside the archive (a
    few MB), so that the class count is known before anything is extracted."""
    import scipy.io  # here, for the archives only: the benchmark and the self-check run without scipy

    devkit = root / ARCHIVES[2]
    try:
        with tarfile.open(devkit) as archive:
            meta = archive.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read()
        synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
        return sorted(synsets["WNID"][synsets["num_children"] == 0].tolist())
    except (OSError, tarfile.TarError, scipy.io.matlab.MatReadError, KeyError, ValueError) as err:
        raise ValueError(f"Cannot read the classes (ILSVRC2012_devkit_t12/data/meta.mat) from {devkit}: {err}") from err


def extract(root: Path, split: str) -> None:
    """Extracts one split of the ILSVRC-2012 archives in ``root`` (and the devkit's ``meta.bin``) as
    ``torchvision.datasets.ImageNet`` does on first use, after its check of the archives' MD5 sums, but into
    ``root/.<split>.partial``, renamed to ``root/<split>`` when complete: an interrupted extraction is done again
    instead of read as a smaller dataset with shifted labels. Raises, naming ``root``, if it cannot be written."""
    if (root / imagenet.META_FILE).is_file() and (root / split).is_dir():
        return
    partial = root / f".{split}.partial"
    try:
        shutil.rmtree(partial, ignore_errors=True)  # what an interrupted extraction left
        partial.mkdir()
    except OSError as err:
        raise OSError(
            err.errno, f"The ILSVRC-2012 archives in {root} are extracted into {root / split} and "
            f"{root / imagenet.META_FILE} on first use, but {root} cannot be written ({err.strerror}): make it "
            f"writable for the first run, or put the archives in a folder that is"
        ) from err
    try:
        if not (root / imagenet.META_FILE).is_file():
            imagenet.parse_devkit_archive(str(root))
        if not (root / split).is_dir():
            parse = imagenet.parse_train_archive if split == "train" else imagenet.parse_val_archive
            parse(str(root), folder=partial.name)
            partial.rename(root / split)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def check_every_class_readable(dataset: ImageFolder, folder: Path) -> None:
    """Raises, naming them, if class folders hold no image file or none that decodes: training and testing with a
    class that has no images would silently change what the error rates measure."""
    readable, reasons = set(), {}
    for path, target in dataset.samples:
        if target not in readable:
            try:
                dataset.loader(path)
                readable.add(target)
            except UNREADABLE as err:
                reasons.setdefault(target, f"every file is unreadable, e.g. {path}: {err}")
    bad = [f"{folder / name} ({reasons.get(target, 'no image file')})"
           for target, name in enumerate(dataset.classes) if target not in readable]
    if bad:
        raise FileNotFoundError(f"Class folder(s) without a readable image: {'; '.join(bad)}")


def open_split(root: Path, kind: Literal["archives", "folders"], split: str,
               transform: Callable[[Image.Image], Tensor]) -> SkipUnreadable:
    """The images of ``split`` ("train" or "val") of the data root ``root`` of layout ``kind``, each through
    ``transform``. The archives are extracted on first use. Raises, naming the folders, if val's classes differ
    from train's (or from the devkit's) or a class has no readable image."""
    if kind == "archives":
        extract(root, split)
        dataset = ImageNet(str(root), split, transform=transform, loader=load_rgb)
        wnids = devkit_wnids(root)
        if dataset.wnids != wnids:  # labels are positions in the sorted folder names: all must be there
            raise ValueError(
                f"The class folders of {root / split} differ from the classes of {root / ARCHIVES[2]}: "
                f"missing {sorted(set(wnids) - set(dataset.wnids))[:5]}, not in the devkit "
                f"{sorted(set(dataset.wnids) - set(wnids))[:5]}. Remove {root / split} to extract it again."
            )
        return SkipUnreadable(dataset)
    folder = root / split
    ignored: list[str] = []

    def is_image(path: str) -> bool:
        allowed = has_file_allowed_extension(path, IMAGE_EXTENSIONS)
        if not allowed:
            ignored.append(path)
        return allowed

    dataset = ImageFolder(str(folder), transform=transform, loader=load_rgb, is_valid_file=is_image, allow_empty=True)
    if ignored:
        warnings.warn(f"Ignoring {len(ignored)} file(s) of {folder} without an image extension "
                      f"({', '.join(IMAGE_EXTENSIONS)}), e.g. {', '.join(ignored[:3])}", stacklevel=2)
    train_classes = find_classes(root / "train")[0]
    if dataset.classes != train_classes:
        raise ValueError(
            f"The class folders of {folder} differ from those of {root / 'train'}: "
            f"only in {split}: {sorted(set(dataset.classes) - set(train_classes))}, "
            f"missing from {split}: {sorted(set(train_classes) - set(dataset.classes))}."
        )
    check_every_class_readable(dataset, folder)
    return SkipUnreadable(dataset)


def num_classes(root: Path, kind: Literal["archives", "folders"]) -> int:
    """The number of classes of the data root ``root`` of layout ``kind``, read without extracting anything."""
    return len(devkit_wnids(root)) if kind == "archives" else len(find_classes(root / "train")[0])
