"""The official ILSVRC-2012 archives as a data root, end to end, on a small stand-in in their layout
(``tests/archives.py``; the ``imagenet_archives`` fixture has torchvision accept its MD5 sums)."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import imagenet

from alexnet_lightning.data import shards
from alexnet_lightning.data.datamodule import ImageNetDataModule
from alexnet_lightning.data.sources import resize_and_centre
from alexnet_lightning.training.cli import main
from tests.archives import COLOURS, label_of_colour, write_archives
from tests.test_cli import QUICK

RESIZE, CROP = 24, 20


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder in place of ~/.cache/alexnet-lightning."""
    monkeypatch.setenv("ALEXNET_LIGHTNING_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def datamodule(root: Path, **kwargs) -> ImageNetDataModule:
    options = dict(batch_size=4, root=str(root), resize_size=RESIZE, crop_size=CROP, num_workers=0) | kwargs
    return ImageNetDataModule(**options)


def test_the_archives_give_the_devkits_classes_and_the_ground_truth_labels(imagenet_archives) -> None:
    root = imagenet_archives.root
    dm = datamodule(root)
    assert dm.num_classes == 4  # the devkit's leaf synsets, read before extracting; its parent synset is no class
    assert not (root / "train").exists()
    dm.prepare_data()
    assert sorted(p.name for p in root.iterdir()) == sorted([
        "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz",
        "meta.bin", "train", "val", f"alexnet_stats_{RESIZE}.pt"])  # no partial extraction left behind

    train, val = (dm._dataset(split, resize_and_centre(RESIZE)).folder for split in ("train", "val"))
    assert train.wnids == val.wnids == list(imagenet_archives.wnids)
    assert np.bincount(train.targets).tolist() == [imagenet_archives.train_per_class] * 4
    assert {Path(path).name: label for path, label in val.samples} == imagenet_archives.val_labels
    for dataset in (train, val):
        for index, (_, label) in enumerate(dataset.samples):
            assert label_of_colour(dataset[index][0].numpy()) == label, dataset.samples[index]

    # The statistics of the extracted training images: 5 flat images of each class's colour.
    channel_mean = dm.statistics().mean_image.mean((1, 2))
    torch.testing.assert_close(channel_mean, torch.tensor(COLOURS).float().mean(0) / 255, rtol=0, atol=0.01)

    dm.setup("test")
    crops, labels, skipped = next(iter(dm.test_dataloader()))
    assert crops.shape == (4, 10, 3, CROP, CROP) and labels.tolist() == [0, 0, 1, 1] and skipped == 0


def test_the_official_checksums_reject_the_stand_in(tmp_path) -> None:
    """The product keeps torchvision's MD5 check: archives other than the official ones are refused, and nothing
    is extracted from them."""
    root = write_archives(tmp_path / "archives").root
    dm = datamodule(root)
    with pytest.raises(RuntimeError, match="ILSVRC2012_devkit_t12.tar.gz is not present in the root directory or is "
                                           "corrupted"):
        dm.prepare_data()
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"])


def test_an_interrupted_extraction_is_done_again_not_read_as_fewer_classes(imagenet_archives, monkeypatch) -> None:
    root = imagenet_archives.root
    extract, class_archives = imagenet.extract_archive, []

    def interrupted_at_the_second_class(path, *args, **kwargs):
        if re.fullmatch(r"n\d{8}\.tar", os.path.basename(path)):
            class_archives.append(path)
            if len(class_archives) == 2:
                raise KeyboardInterrupt
        return extract(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(imagenet, "extract_archive", interrupted_at_the_second_class)
        with pytest.raises(KeyboardInterrupt):
            datamodule(root).prepare_data()
    assert len(class_archives) == 2
    assert not (root / "train").exists()
    dm = datamodule(root)
    dm.prepare_data()
    train = dm._dataset("train", resize_and_centre(RESIZE)).folder
    assert train.wnids == list(imagenet_archives.wnids) and len(train) == 4 * imagenet_archives.train_per_class
    assert not list(root.glob(".*partial"))


def test_a_class_missing_from_an_extracted_split_is_an_error_not_shifted_labels(imagenet_archives) -> None:
    root = imagenet_archives.root
    dm = datamodule(root)
    dm.prepare_data()
    shutil.rmtree(root / "val" / imagenet_archives.wnids[0])  # as an extraction by other means may leave it
    with pytest.raises(ValueError, match=rf"class folders of {root / 'val'} differ .* missing \['n01440764'\]"):
        dm.setup("fit")


@pytest.mark.parametrize("devkit", ["empty", "no meta.mat"])
def test_an_unreadable_devkit_is_named_when_the_data_module_is_made(devkit, tmp_path) -> None:
    root = write_archives(tmp_path / "archives").root
    path = root / "ILSVRC2012_devkit_t12.tar.gz"
    if devkit == "empty":
        path.write_bytes(b"")
    else:
        shutil.copy(root / "ILSVRC2012_img_val.tar", path)  # a tar, but not the devkit
    with pytest.raises(ValueError, match=f"Cannot read the classes .* from {path}"):
        datamodule(root)


def test_extraction_into_a_read_only_root_fails_naming_it(imagenet_archives) -> None:
    root = imagenet_archives.root
    root.chmod(0o555)
    try:
        try:
            (root / "probe").touch()
        except PermissionError:
            pass
        else:
            pytest.skip("this process ignores folder permissions (root with CAP_DAC_OVERRIDE)")
        with pytest.raises(OSError, match=f"archives in {root} are extracted .* but {root} cannot be written"):
            datamodule(root).prepare_data()
    finally:
        root.chmod(0o755)


@pytest.mark.slow
def test_fit_then_ten_crop_test_from_the_archives(imagenet_archives, tiny_overlay, tmp_path) -> None:
    root = imagenet_archives.root
    common = [*QUICK, "--config", str(tiny_overlay), "--data.root", str(root),
              "--trainer.default_root_dir", str(tmp_path / "run")]
    fit = main(["fit", *common])
    assert fit.model.network.classifier.fc8.out_features == 4  # linked from the devkit's classes
    assert fit.trainer.global_step == 1  # one epoch of 20 images in batches of 15: the partial second one is dropped
    assert (root / "alexnet_stats_72.pt").is_file()  # the statistics, beside the archives
    assert 0 <= float(fit.trainer.callback_metrics["val/top1_error"]) <= 1
    [checkpoint] = (tmp_path / "run").glob("**/checkpoints/last.ckpt")

    test = main(["test", *common, "--ckpt_path", str(checkpoint)])
    metrics = test.trainer.callback_metrics
    assert 0 <= float(metrics["test/top1_error"]) <= 1 and "test/top5_error" not in metrics  # 4 classes: no top-5
    assert len(test.datamodule.test_set) == 8
    crops, labels, _ = next(iter(test.datamodule.test_dataloader()))
    assert crops.shape == (8, 10, 3, 67, 67) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_shards_shards_of_the_archives_keep_the_synsets_and_the_ground_truth(imagenet_archives, tmp_path) -> None:
    dest = shards.prepare(str(imagenet_archives.root), tmp_path / "prepared", size=32, shard_size=8)
    meta = json.loads((dest / "prepared.json").read_text())
    assert meta["classes"] == list(imagenet_archives.wnids)
    assert {split: info["images"] for split, info in meta["splits"].items()} == {"train": 20, "val": 8}
    assert meta["splits"]["train"]["shards"] == 3
    for split in ("train", "val"):
        data = shards.PreparedSplit(dest, split)
        images, labels, _, _ = data.__getitems__(list(range(len(data))))
        assert [label_of_colour(image.numpy()) for image in images] == labels.tolist()
        assert np.bincount(labels).tolist() == ([5] * 4 if split == "train" else [2] * 4)
    assert datamodule(dest, resize_size=32).num_classes == 4
