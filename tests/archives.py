"""A small stand-in for the official ILSVRC-2012 archives, in their layout, for tests of the archives path.

- ``ILSVRC2012_img_train.tar``: one tar per class (``n01440764.tar``), each holding ``n01440764_1000.JPEG``, ...;
- ``ILSVRC2012_img_val.tar``: flat, ``ILSVRC2012_val_00000001.JPEG``, ...;
- ``ILSVRC2012_devkit_t12.tar.gz``: ``ILSVRC2012_devkit_t12/data/meta.mat`` (the synsets, as a MATLAB struct array
  with the devkit's fields) and ``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`` (one
  ILSVRC2012_ID per validation image, in file order).

As in the real devkit, the ILSVRC2012_IDs do not follow the sorted order of the WordNet ids (torchvision's labels),
and meta.mat holds a synset that is not a class (it has children). Every image is one flat colour, its class's, so
a label can be checked against the pixels.
"""

import hashlib
import io
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.io
from PIL import Image

# The classes, in label order (sorted WordNet ids), with their ILSVRC2012_IDs (not in that order) and colours.
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")
IDS = (3, 1, 4, 2)
COLOURS = ((220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40))
NOT_A_CLASS = (5, "n01439121", "cyprinid", 2)  # ILSVRC2012_ID, WNID, words, num_children: a parent synset
# The class (label) of each validation image, in file order: every class, out of label order.
VAL_LABELS = (2, 0, 3, 1, 1, 3, 0, 2)


class StandIn(NamedTuple):
    """Where the archives are and what they hold."""

    root: Path
    wnids: tuple[str, ...]  # label order
    train_per_class: int
    val_labels: dict[str, int]  # validation file name -> label, per the ground truth


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _meta_mat() -> bytes:
    fields = [("ILSVRC2012_ID", np.uint16), ("WNID", "U9"), ("words", "U32"), ("gloss", "U32"),
              ("num_children", np.uint16)]
    rows = [(i, wnid, f"class {wnid}", "a test class", 0) for i, wnid in sorted(zip(IDS, WNIDS))]
    i, wnid, words, children = NOT_A_CLASS
    synsets = np.array([*rows, (i, wnid, words, "a parent synset", children)], dtype=fields).reshape(-1, 1)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"synsets": synsets})
    return buffer.getvalue()


def write_archives(root: Path, train_per_class: int = 5) -> StandIn:
    """Writes the three archives into ``root`` (created); image sides vary from 60 to 110 pixels."""
    root.mkdir(parents=True, exist_ok=True)
    sizes = [(60 + 7 * k % 50, 110 - 11 * k % 50) for k in range(64)]
    per_class = {
        f"{wnid}.tar": _tar({f"{wnid}_{1000 + k}.JPEG": _jpeg(colour, sizes[k]) for k in range(train_per_class)})
        for wnid, colour in zip(WNIDS, COLOURS)
    }
    (root / "ILSVRC2012_img_train.tar").write_bytes(_tar(per_class))
    val_names = [f"ILSVRC2012_val_{k + 1:08d}.JPEG" for k in range(len(VAL_LABELS))]
    val = {name: _jpeg(COLOURS[label], sizes[-k]) for k, (name, label) in enumerate(zip(val_names, VAL_LABELS))}
    (root / "ILSVRC2012_img_val.tar").write_bytes(_tar(val))
    ground_truth = "".join(f"{IDS[label]}\n" for label in VAL_LABELS).encode()
    devkit = {"ILSVRC2012_devkit_t12/data/meta.mat": _meta_mat(),
              "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": ground_truth}
    (root / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(_tar(devkit, "w:gz"))
    return StandIn(root, WNIDS, train_per_class, dict(zip(val_names, VAL_LABELS)))


def checksums(root: Path) -> dict[str, tuple[str, str]]:
    """torchvision's table of the archives' names and MD5 sums (``imagenet.ARCHIVE_META``), for those in ``root``."""
    from torchvision.datasets import imagenet

    return {key: (name, hashlib.md5((root / name).read_bytes()).hexdigest())
            for key, (name, _) in imagenet.ARCHIVE_META.items()}


def label_of_colour(image: np.ndarray) -> int:
    """The class whose colour is nearest to the mean colour of a uint8 [3, H, W] image."""
    mean = image.reshape(3, -1).mean(1)
    return int(np.argmin([np.abs(mean - np.array(colour)).sum() for colour in COLOURS]))
