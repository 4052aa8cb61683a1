"""ImageNetDataModule: layouts, batches, statistics, and what it does with bad input."""

import functools
import logging
import os
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import RandomSampler
from torchvision.transforms.v2 import functional as F

from alexnet_lightning.data import standin, statistics
from alexnet_lightning.data.datamodule import ImageNetDataModule, ResumableSampler
from alexnet_lightning.data.sources import collate_skipping_unreadable, load_rgb, rescale_and_centre

RESIZE, CROP = 24, 20


def write_image(path: Path, seed: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    height, width = (int(side) for side in rng.integers(20, 60, size=2))
    pixels = rng.integers(0, 256, size=(height, width, 4), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGBA").convert(mode).save(path)


def make_folder(root: Path, classes: tuple[str, ...] = ("a", "b", "c"), per_class: int = 3) -> Path:
    """A small ImageFolder root: train/<class>/*.jpg and val/<class>/*.jpg."""
    for split_index, split in enumerate(("train", "val")):
        for label, name in enumerate(classes):
            for index in range(per_class):
                write_image(root / split / name / f"{index}.jpg", seed=10_000 * split_index + 100 * label + index)
    return root


def datamodule(root: Path, **kwargs) -> ImageNetDataModule:
    """The data module of ``root``, on the reference path (file by file) unless ``in_memory`` is given."""
    options = dict(batch_size=4, root=str(root), resize_size=RESIZE, crop_size=CROP, num_workers=0, in_memory=False)
    options |= kwargs
    return ImageNetDataModule(**options)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder in place of ~/.cache/alexnet-lightning."""
    monkeypatch.setenv("ALEXNET_LIGHTNING_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# Layouts and batches


def test_batches_have_the_documented_shapes_and_types(tmp_path, cache) -> None:
    dm = datamodule(make_folder(tmp_path / "data"))
    assert dm.num_classes == 3
    dm.setup("fit")
    dm.setup("test")
    for loader, shape in (
        (dm.train_dataloader(), (3, CROP, CROP)),
        (dm.val_dataloader(), (3, CROP, CROP)),
        (dm.test_dataloader(), (10, 3, CROP, CROP)),
    ):
        images, labels, skipped = next(iter(loader))
        assert images.shape == (4, *shape) and images.dtype == torch.float32
        assert labels.shape == (4,) and labels.dtype == torch.int64
        assert skipped.item() == 0
        model_batch = dm.on_after_batch_transfer((images, labels, skipped), 0)
        assert len(model_batch) == 2 and model_batch[0] is images and model_batch[1] is labels


def test_loader_defaults(tmp_path, cache) -> None:
    dm = ImageNetDataModule(batch_size=4, root=str(make_folder(tmp_path / "data")), resize_size=RESIZE, crop_size=CROP,
                            in_memory=False)
    assert dm.num_workers == min(8, os.cpu_count())
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, ResumableSampler) and train.sampler.shuffle
    assert not isinstance(val.sampler, (RandomSampler, ResumableSampler))
    assert train.persistent_workers and train.drop_last and not val.drop_last  # one training shape (compile)
    assert train.pin_memory == torch.cuda.is_available()


def test_root_none_is_the_builtin_dataset_generated_on_first_use(cache, monkeypatch) -> None:
    # The one test that generates the built-in set, at two images per class instead of 300.
    monkeypatch.setattr(standin, "ensure", functools.partial(standin.ensure, train_per_class=2, val_per_class=2))
    dm = ImageNetDataModule(batch_size=8, resize_size=RESIZE, crop_size=CROP, num_workers=0, in_memory=False)
    assert dm.num_classes == standin.NUM_CLASSES
    dm.prepare_data()
    folder = dm.data_root()
    assert folder.parent == cache
    assert (folder / f"alexnet_stats_{RESIZE}.pt").is_file()  # statistics cached beside the data
    dm.setup("fit")
    images, labels, _ = next(iter(dm.val_dataloader()))
    assert images.shape == (8, 3, CROP, CROP)
    assert labels.max() < standin.NUM_CLASSES


# Statistics


def test_eigen_decomposition_recovers_a_known_covariance() -> None:
    generator = torch.Generator().manual_seed(0)
    eigvec = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))[0]
    eigval = torch.tensor([0.04, 0.01, 0.002], dtype=torch.float64)
    mean = torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64)
    root = eigvec * eigval.sqrt()  # pixels = mean + root @ z have covariance eigvec diag(eigval) eigvec^T

    def batches():
        for _ in range(4):
            z = torch.randn(16, 3, 32, 32, generator=generator, dtype=torch.float64)
            yield torch.einsum("ij,bjhw->bihw", root, z) + mean.view(3, 1, 1)

    stats = statistics.compute(batches())
    torch.testing.assert_close(stats.eigval.double(), eigval, rtol=0.03, atol=0)
    cosines = (stats.eigvec.double() * eigvec).sum(0).abs()  # eigenvectors agree up to sign
    assert (cosines > 0.999).all(), cosines
    torch.testing.assert_close(stats.mean_image.mean((1, 2)).double(), mean, rtol=0, atol=0.005)


def test_statistics_are_computed_over_the_training_images_and_cached(tmp_path, cache) -> None:
    root = make_folder(tmp_path / "data")
    dm = datamodule(root)
    dm.setup("fit")
    stored = root / f"alexnet_stats_{RESIZE}.pt"
    assert stored.is_file()
    images = [rescale_and_centre(RESIZE)(load_rgb(path)) for path in sorted((root / "train").rglob("*.jpg"))]
    torch.testing.assert_close(dm.statistics().mean_image, torch.stack(images).mean(0))
    assert (dm.statistics().eigval[:-1] >= dm.statistics().eigval[1:]).all()
    torch.save({**torch.load(stored), "eigval": torch.tensor([9.0, 8.0, 7.0])}, stored)
    assert dm.statistics().eigval.tolist() == [9.0, 8.0, 7.0]  # read from the cache, not recomputed


@pytest.mark.parametrize("mean", ["image", "channel"])
def test_mean_subtraction_uses_the_stored_mean(tmp_path, cache, mean: str) -> None:
    root = make_folder(tmp_path / "data")
    known = torch.rand(3, RESIZE, RESIZE, generator=torch.Generator().manual_seed(0))
    stats = statistics.Statistics(known, statistics.PUBLISHED_EIGVAL, statistics.PUBLISHED_EIGVEC)
    torch.save(stats._asdict(), root / f"alexnet_stats_{RESIZE}.pt")
    dm = datamodule(root, mean=mean)
    dm.setup("validate")
    subtracted = known if mean == "image" else known.mean((1, 2), keepdim=True)
    path, _ = dm.val_set.folder.samples[0]
    expected = F.center_crop(rescale_and_centre(RESIZE)(load_rgb(path)) - subtracted, [CROP, CROP])
    torch.testing.assert_close(dm.val_set[0][0], 255 * expected)  # the paper's centred raw pixel values
    unit = datamodule(root, mean=mean, value_scale=1.0)
    unit.setup("validate")
    torch.testing.assert_close(unit.val_set[0][0], expected)


def test_statistics_without_a_readable_image_fall_back_to_the_published_values(tmp_path, cache, caplog) -> None:
    # A training set without a readable image stops at its class folders (test_reliability); a sample of only
    # unreadable images gives no batch.
    with caplog.at_level(logging.WARNING):
        stats = statistics.load_or_compute(tmp_path, RESIZE, lambda: iter([]))
    assert "using the published values" in caplog.text
    assert torch.equal(stats.eigval, statistics.PUBLISHED_EIGVAL)
    torch.testing.assert_close(stats.mean_image[:, 3, 5], statistics.PUBLISHED_MEAN)


# Bad input: structural problems raise, naming the path


def test_a_missing_root_raises_naming_it(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        datamodule(tmp_path / "nowhere")


def test_a_missing_split_raises_naming_it(tmp_path) -> None:
    root = make_folder(tmp_path)
    shutil.rmtree(root / "val")
    with pytest.raises(FileNotFoundError, match=f"missing {root / 'val'}"):
        datamodule(root)


def test_a_train_folder_without_class_folders_raises_naming_it(tmp_path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        datamodule(tmp_path)


@pytest.mark.parametrize("content", [None, "notes.txt"])
def test_an_empty_class_folder_raises_at_setup_naming_it(tmp_path, cache, content: str | None) -> None:
    root = make_folder(tmp_path / "data")
    empty = root / "train" / "d"
    empty.mkdir()
    (root / "val" / "d").mkdir()
    if content:
        (empty / content).write_text("not an image extension")
    write_image(root / "val" / "d" / "0.jpg", seed=0)
    dm = datamodule(root)
    assert dm.num_classes == 4
    with pytest.raises(FileNotFoundError, match=str(empty)):
        dm.setup("fit")


def test_val_classes_that_differ_from_train_raise(tmp_path, cache) -> None:
    root = make_folder(tmp_path / "data")
    (root / "val" / "c").rename(root / "val" / "z")
    with pytest.raises(ValueError, match=r"only in val: \['z'\], missing from val: \['c'\]"):
        datamodule(root).setup("validate")


# Bad input: unreadable files are skipped with a warning and counted


def make_folder_with_bad_files(root: Path) -> tuple[Path, list[Path]]:
    """Three readable odd files (CMYK, grayscale, PNG with alpha) and four unreadable ones, in val/a."""
    make_folder(root, per_class=1)
    folder = root / "val" / "a"
    write_image(folder / "cmyk.jpg", seed=1, mode="CMYK")
    write_image(folder / "grey.jpg", seed=2, mode="L")
    write_image(folder / "alpha.png", seed=3, mode="RGBA")
    whole = (folder / "grey.jpg").read_bytes()
    bad = {
        "truncated.jpg": whole[: len(whole) // 2],
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
        "empty.jpg": b"",
        "text.png": b"this is not a PNG",
    }
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    return root, [folder / name for name in bad]


def test_a_loader_over_bad_files_yields_finite_tensors_and_counts_the_skips(tmp_path, cache) -> None:
    root, bad = make_folder_with_bad_files(tmp_path / "data")
    dm = datamodule(root, batch_size=3)
    dm.setup("validate")
    with pytest.warns(UserWarning) as warned:
        batches = list(dm.val_dataloader())
    messages = "\n".join(str(w.message) for w in warned)
    for path in bad:
        assert f"Skipping unreadable image {path}" in messages
    assert sum(int(skipped) for _, _, skipped in batches) == len(bad)
    assert sum(len(labels) for _, labels, _ in batches) == 3 + 3  # one per class, plus the three odd ones
    for images, labels, _ in batches:
        assert images.shape == (len(labels), 3, CROP, CROP)
        assert torch.isfinite(images).all()


def test_a_batch_of_only_unreadable_files_is_empty_and_correctly_shaped() -> None:
    images, labels, skipped = collate_skipping_unreadable([None, None], image_shape=(10, 3, CROP, CROP))
    assert images.shape == (0, 10, 3, CROP, CROP) and labels.shape == (0,) and labels.dtype == torch.int64
    assert skipped.item() == 2


class TinyModel(L.LightningModule):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, num_classes)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = batch  # the datamodule has taken the skip count off
        if images.dim() == 5:
            images = images.flatten(0, 1)
            labels = labels.repeat_interleave(10)
        return torch.nn.functional.cross_entropy(self.linear(images.mean((2, 3))), labels)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._loss(batch)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._loss(batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._loss(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_trainer_sees_x_y_and_logs_the_skipped_files(tmp_path, cache) -> None:
    root = make_folder(tmp_path / "data")
    (root / "train" / "a" / "bad.jpg").write_bytes(b"")
    (root / "val" / "b" / "bad.jpg").write_bytes(b"")
    (root / "val" / "c" / "bad.png").write_bytes(b"")
    dm = datamodule(root, max_skipped_fraction=0.5)  # 1 of 10 training files
    trainer = L.Trainer(
        max_epochs=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(TinyModel(dm.num_classes), datamodule=dm)
    assert trainer.callback_metrics["data/skipped_files/train"].item() == 1
    assert trainer.callback_metrics["data/skipped_files/val"].item() == 2
    (result,) = trainer.test(trainer.lightning_module, datamodule=dm, verbose=False)
    assert result["data/skipped_files/test"] == 2
