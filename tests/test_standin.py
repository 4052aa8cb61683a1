"""The built-in stand-in dataset: deterministic, varied, atomic, cached."""

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from alexnet_lightning.data import standin


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_same_seed_gives_identical_files_another_seed_different_ones(tmp_path) -> None:
    for name, seed, workers in (("a", 0, 1), ("b", 0, 2), ("c", 1, 1)):  # in one process or in two: the same files
        standin.generate(tmp_path / name, seed=seed, train_per_class=2, val_per_class=1, workers=workers)
    a, b, c = (file_hashes(tmp_path / name) for name in "abc")
    assert len(a) == 3 * standin.NUM_CLASSES
    assert a == b
    assert set(a.values()).isdisjoint(c.values())


def test_images_vary_in_size_mode_and_format(tmp_path) -> None:
    standin.generate(tmp_path, train_per_class=10, val_per_class=0)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == sorted(standin.CLASSES)
    files = sorted((tmp_path / "train").rglob("*.*"))
    assert len(files) == 10 * standin.NUM_CLASSES
    modes_and_sizes = []
    for file in files:
        with Image.open(file) as image:
            modes_and_sizes.append((image.mode, image.size))
    png = sum(f.suffix == ".png" for f in files) / len(files)
    grey = sum(mode == "L" for mode, _ in modes_and_sizes) / len(files)
    assert 0.2 < png < 0.4
    assert 0.08 < grey < 0.22
    sizes = {size for _, size in modes_and_sizes}
    assert all(64 <= side <= 160 for size in sizes for side in size)
    assert len({round(w / h, 1) for w, h in sizes}) > 10  # many aspect ratios


def test_ensure_generates_once_into_the_cache(tmp_path) -> None:
    folder = standin.ensure(train_per_class=1, val_per_class=1, cache=tmp_path)
    assert folder.parent == tmp_path and (folder / "val" / "circle").is_dir()
    before = file_hashes(folder)
    assert standin.ensure(train_per_class=1, val_per_class=1, cache=tmp_path) == folder
    assert file_hashes(folder) == before
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left behind


def test_an_interrupted_generation_is_never_used(tmp_path, monkeypatch) -> None:
    def interrupted(root: Path, *args: int, **kwargs: int) -> None:
        (root / "train" / "circle").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(standin, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        standin.ensure(train_per_class=1, val_per_class=1, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_thirty_classes_and_a_subset_draws_the_same_images(tmp_path) -> None:
    assert standin.NUM_CLASSES == len(set(standin.CLASSES)) == 30  # enough for top-5 error to be informative
    standin.generate(tmp_path / "all", train_per_class=1, val_per_class=1)
    standin.generate(tmp_path / "some", train_per_class=1, val_per_class=1, classes=standin.CLASSES[5:7])
    some = file_hashes(tmp_path / "some")
    assert len(some) == 4 and some == {name: digest for name, digest in file_hashes(tmp_path / "all").items()
                                       if name.split("/")[1] in standin.CLASSES[5:7]}
