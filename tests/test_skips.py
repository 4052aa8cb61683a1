"""A configuration error is not a bad file: a crop larger than the images is refused before data is read, the skip
catches what a bad file raises and nothing else, and too many skipped files stop the run."""

import lightning as L
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from alexnet_lightning.data.datamodule import ImageNetDataModule
from alexnet_lightning.data.sources import SkipUnreadable, load_rgb
from tests.test_datamodule import TinyModel, cache, datamodule, make_folder  # noqa: F401 (cache: a fixture)


def test_a_crop_larger_than_the_resized_images_is_refused_before_data_is_read(no_data_reads):
    with pytest.raises(ValueError, match=r"--data.resize_size \(60\).*--data.crop_size \(67\)"):
        ImageNetDataModule(16, resize_size=60, crop_size=67)
    ImageNetDataModule(16, resize_size=67, crop_size=67)  # equal is fine


def bad_files(folder) -> dict[str, bytes]:
    jpeg = folder / "good.jpg"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(jpeg)
    whole = jpeg.read_bytes()
    return {"empty.jpg": b"", "text.jpg": b"not an image", "truncated.jpg": whole[: len(whole) // 2]}


def test_the_skip_catches_bad_files_but_not_an_error_of_the_transform(tmp_path, monkeypatch):
    folder = tmp_path / "c"
    folder.mkdir()
    for name, data in bad_files(folder).items():
        (folder / name).write_bytes(data)
    Image.new("RGB", (64, 64)).save(folder / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: twice the limit, a decompression bomb
    images = ImageFolder(str(tmp_path), loader=load_rgb, transform=lambda image: image.size)
    dataset = SkipUnreadable(images)
    names = [path.rsplit("/", 1)[1] for path, _ in images.samples]
    for index, name in enumerate(names):
        if name == "good.jpg":
            assert dataset[index] == ((32, 32), 0)
        else:
            with pytest.warns(UserWarning, match=f"Skipping unreadable image .*{name}"):
                assert dataset[index] is None, name

    def too_small(image):
        raise ValueError("Required crop size (67, 67) is larger than input image size (60, 60)")

    broken = SkipUnreadable(ImageFolder(str(tmp_path), loader=load_rgb, transform=too_small))
    with pytest.raises(ValueError, match="Required crop size"):
        broken[names.index("good.jpg")]


def fit(dm: ImageNetDataModule, tmp_path) -> L.Trainer:
    trainer = L.Trainer(max_epochs=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(TinyModel(dm.num_classes), datamodule=dm)
    return trainer


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_training_epoch_that_skipped_more_than_the_fraction_stops_naming_the_option(tmp_path, cache):  # noqa: F811
    root = make_folder(tmp_path / "data", per_class=4)  # 12 training files
    (root / "train" / "a" / "bad.jpg").write_bytes(b"")  # 1 of 13; the epoch's last partial batch is dropped
    with pytest.raises(RuntimeError, match=r"1 of the 12 files of the training epoch .*max_skipped_fraction 0.01"):
        fit(datamodule(root), tmp_path)
    trainer = fit(datamodule(root, max_skipped_fraction=0.1), tmp_path)  # under the limit: trains
    assert trainer.callback_metrics["data/skipped_files/train"].item() == 1


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_validation_split_whose_files_are_all_unreadable_stops(tmp_path, cache, monkeypatch):  # noqa: F811
    # Readable when the split is opened (setup checks each class), unreadable when read: say, a lost mount.
    setup = ImageNetDataModule.setup

    def setup_then_lose_the_files(self, stage: str) -> None:
        setup(self, stage)
        self.val_set.folder.loader = lambda path: (_ for _ in ()).throw(OSError(f"cannot identify image file {path}"))

    monkeypatch.setattr(ImageNetDataModule, "setup", setup_then_lose_the_files)
    with pytest.raises(RuntimeError, match="9 of the 9 files of the val split were unreadable .*every one"):
        fit(datamodule(make_folder(tmp_path / "data"), max_skipped_fraction=1.0), tmp_path)
