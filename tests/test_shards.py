"""The prepared-data fast path: shards hold the reference's resized images (raw: exactly; JPEG: as encoded at the
chosen quality, within a stated PSNR), batch augmentation equals the reference transforms, JPEG bytes decode the
same on the device as in the loader, and training batches resume mid-epoch where they left off."""

import json
import shutil

import numpy as np
import pytest
import torch
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from alexnet_lightning.data import shards
from alexnet_lightning.data.datamodule import ImageNetDataModule, ResumableSampler
from alexnet_lightning.data.shards import Encoded, PreparedSplit
from alexnet_lightning.data.sources import SkipUnreadable, load_rgb, resize_and_centre
from alexnet_lightning.data.transforms import BatchAugmentation, EvalTransforms, TrainTransforms, pca_lighting, ten_crop
from tests.test_datamodule import CROP, RESIZE, make_folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_LIGHTNING_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def source(tmp_path):
    root = make_folder(tmp_path / "data", per_class=5)
    (root / "train" / "b" / "broken.jpg").write_bytes(b"not an image")
    return root


@pytest.mark.parametrize("encoding", ["jpeg", "raw"])
def test_shards_hold_the_reference_images_and_skip_unreadable_files(tmp_path, source, cache, encoding):
    with pytest.warns(UserWarning, match="broken.jpg"):
        dest = shards.prepare(str(source), tmp_path / "prep", RESIZE, shard_size=4, encoding=encoding, quality=80)
    meta = shards.read_meta(dest)
    assert meta["classes"] == ["a", "b", "c"] and meta["size"] == RESIZE and meta["encoding"] == encoding
    assert meta["splits"]["train"] == {"shards": 4, "images": 15, "skipped": [str(source / "train/b/broken.jpg")]}
    for split in ("train", "val"):
        files = sorted(p for p in (source / split).rglob("*.jpg") if p.name != "broken.jpg")
        images, labels, _, seed = PreparedSplit(dest, split).__getitems__(list(range(len(files))))
        assert seed.item() == -1
        assert labels.tolist() == [["a", "b", "c"].index(p.parent.name) for p in files]
        for image, path in zip(images, files):
            reference = resize_and_centre(RESIZE)(load_rgb(path))
            if encoding == "jpeg":  # exactly the reference, encoded at the asked quality and decoded
                reference = decode_jpeg(encode_jpeg(reference, quality=80))
            assert torch.equal(image, reference)
    if encoding == "jpeg":
        assert sorted(p.name for p in (dest / "train").glob("00000.*")) == [
            "00000.jpeg.npy", "00000.json", "00000.labels.npy", "00000.offsets.npy"]


# The PSNR of JPEG shards (quality 90) against raw ones, per image, measured on the built-in set at 256, both
# prepared with `python -m alexnet_lightning.data prepare builtin` (train, 3,000 images: min 28.2 dB, 1st percentile
# 30.8, median 43.7; val, 1,200: 27.0, 30.2, 43.8; impulse noise and hard edges are JPEG's worst case). The benchmark
# prints its own for its photo-like images.
MIN_PSNR_DB, MEDIAN_PSNR_DB = 25.0, 40.0


def test_jpeg_shards_decode_within_the_stated_psnr_of_the_raw_ones(tiny_imagefolder, tmp_path, cache):
    raw = shards.prepare(str(tiny_imagefolder), tmp_path / "raw", encoding="raw")
    jpeg = shards.prepare(str(tiny_imagefolder), tmp_path / "jpeg")
    assert shards.read_meta(jpeg)["quality"] == 90  # the default, as FFCV stores ImageNet
    for split in ("train", "val"):
        exact, decoded = PreparedSplit(raw, split), PreparedSplit(jpeg, split)
        keys = list(range(len(exact)))
        a, b = exact.__getitems__(keys), decoded.__getitems__(keys)
        assert torch.equal(a[1], b[1])
        db = 10 * torch.log10(255**2 / (a[0].double() - b[0].double()).square().mean((1, 2, 3)))
        assert db.min() > MIN_PSNR_DB and db.median() > MEDIAN_PSNR_DB, (db.min(), db.median())
    raw_bytes, jpeg_bytes = (sum(f.stat().st_size for f in d.rglob("*.npy")) for d in (raw, jpeg))
    assert jpeg_bytes < 0.35 * raw_bytes  # the goal; the whole built-in set: 0.053


def test_an_interrupted_prepare_resumes_with_the_shards_it_has(tmp_path, source, cache):
    dest = shards.prepare(str(source), tmp_path / "prep", RESIZE, shard_size=4)
    before = {p.name: p.read_bytes() for p in (dest / "train").iterdir()}
    (dest / "train" / "00002.json").unlink()  # as if killed while writing shard 2
    (dest / "prepared.json").unlink()
    (dest / "train" / "00001.jpeg.npy").write_bytes(b"kept: shard 1 finished")
    with pytest.raises(FileNotFoundError, match="no .*prepared.json: the prepare did not finish"):
        ImageNetDataModule(4, root=str(dest), resize_size=RESIZE, crop_size=CROP)
    mixed = r"00000.json is a shard of another encoding \(jpeg, 90\) than this prepare's \(raw\)"
    with pytest.raises(ValueError, match=mixed):  # a folder never mixes encodings
        shards.prepare(str(source), dest, RESIZE, shard_size=4, encoding="raw")
    shards.prepare(str(source), dest, RESIZE, shard_size=4)
    after = {p.name: p.read_bytes() for p in (dest / "train").iterdir()}
    assert after["00001.jpeg.npy"] == b"kept: shard 1 finished"  # finished shards are not written again
    for name in ("00002.jpeg.npy", "00002.offsets.npy", "00002.labels.npy", "00002.json"):
        assert after[name] == before[name]


def test_wrong_size_and_format_name_the_file_and_the_flag(tmp_path, source, cache):
    dest = shards.prepare(str(source), tmp_path / "prep", RESIZE)
    with pytest.raises(ValueError, match=r"prepared.json holds 24x24 images but --data.resize_size is 32"):
        ImageNetDataModule(4, root=str(dest), resize_size=32, crop_size=CROP)
    meta = json.loads((dest / "prepared.json").read_text())
    (dest / "prepared.json").write_text(json.dumps(meta | {"format": 99}))
    with pytest.raises(ValueError, match="prepared.json has format 99"):
        ImageNetDataModule(4, root=str(dest), resize_size=RESIZE, crop_size=CROP)


def test_a_corrupt_jpeg_shard_names_its_file(tmp_path, source, cache):
    dest = shards.prepare(str(source), tmp_path / "prep", RESIZE, shard_size=4)
    shard = dest / "train" / "00001.jpeg.npy"
    data = np.load(shard)
    data[:] = 0  # same size, no JPEG left
    np.save(shard, data)
    split = PreparedSplit(dest, "train")
    assert split.__getitems__([0, 1])[0].shape == (2, 3, RESIZE, RESIZE)  # shard 0 is whole
    with pytest.raises(ValueError, match=r"Cannot decode an image of .*train/00001.jpeg.npy .*prepare again"):
        split.__getitems__([0, 5])


def test_a_format_1_folder_is_read_as_raw_shards(tmp_path, source, cache):
    """Format 1 wrote raw shards only, in the files of format 2's raw encoding, and no encoding in its json."""
    dest = shards.prepare(str(source), tmp_path / "prep", RESIZE, encoding="raw")
    current = PreparedSplit(dest, "train").__getitems__(list(range(15)))
    meta = json.loads((dest / "prepared.json").read_text())
    del meta["encoding"]
    (dest / "prepared.json").write_text(json.dumps(meta | {"format": 1}))
    old = PreparedSplit(dest, "train").__getitems__(list(range(15)))
    assert torch.equal(old[0], current[0]) and torch.equal(old[1], current[1])


def reference_train_steps(mean, eigval, eigvec, lighting_std=0.1):
    """TrainTransforms after its resize step: mean subtraction, random crop, mirror, lighting."""
    return v2.Compose(TrainTransforms(mean, eigval, eigvec, RESIZE, CROP, lighting_std).transforms.transforms[1:])


def statistics_like():
    g = torch.Generator().manual_seed(0)
    eigvec = torch.linalg.qr(torch.randn(3, 3, generator=g))[0]
    return torch.rand(3, RESIZE, RESIZE, generator=g), torch.rand(3, generator=g) * 4 + 2, eigvec


def decoded_jpegs(count: int) -> torch.Tensor:
    """A batch as JPEG shards give it: images encoded at quality 90 and decoded."""
    g = torch.Generator().manual_seed(1)
    smooth = F.resize(torch.randint(0, 256, (count, 3, 6, 6), dtype=torch.uint8, generator=g), [RESIZE, RESIZE])
    files = encode_jpeg(list(smooth), quality=90)
    offsets = torch.tensor([0, *np.cumsum([len(f) for f in files])])
    return Encoded(torch.cat(files), offsets).decode("cpu")


@pytest.mark.parametrize("batch", ["random", "jpeg"])
def test_batch_augmentation_equals_the_reference_operations_image_by_image(batch):
    mean, eigval, eigvec = statistics_like()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, RESIZE, RESIZE), dtype=torch.uint8, generator=g)
    images = images if batch == "random" else decoded_jpegs(6)
    augmentation = BatchAugmentation(mean, eigval, eigvec, CROP, 0.1)
    top, left, flip, alpha = augmentation.sample(6, RESIZE, seed=3)
    assert flip.any() and not flip.all()
    out = augmentation.apply(images, top, left, flip, alpha)
    for i in range(6):
        x = F.crop(F.to_dtype(images[i], torch.float32, scale=True) - mean, top[i], left[i], CROP, CROP)
        x = F.horizontal_flip(x) if flip[i] else x
        torch.testing.assert_close(out[i], pca_lighting(x, alpha[i], eigval.sqrt(), eigvec), rtol=0, atol=1e-6)
    # Validation and test: exactly EvalTransforms's centre crop and ten crops.
    raw = BatchAugmentation(mean, eigval, eigvec, CROP, 0.1, value_scale=255).apply(images, top, left, flip, alpha)
    # The paper's raw pixel scale: the same values times 255 (computed in uint8 units, to float32 rounding)
    torch.testing.assert_close(raw, out * 255, rtol=0, atol=1e-4)
    subtract_mean = EvalTransforms(mean, RESIZE, CROP).prepare.transforms[1]
    centre, crops = augmentation.centre(images), augmentation.ten_crops(images)
    for i in range(6):
        centred = subtract_mean(F.to_dtype(images[i], torch.float32, scale=True))
        assert torch.equal(centre[i], F.center_crop(centred, [CROP, CROP]))
        assert torch.equal(crops[i], ten_crop(centred, CROP))


def test_batch_augmentation_samples_the_reference_distribution():
    mean, eigval, eigvec = statistics_like()
    augmentation = BatchAugmentation(mean, eigval, eigvec, CROP, 0.1)
    top, left, flip, alpha = augmentation.sample(20_000, RESIZE, seed=0)
    # Every offset 0 .. RESIZE - CROP (as RandomCrop's), none outside, about equally often.
    for offsets in (top, left):
        counts = torch.bincount(offsets, minlength=RESIZE - CROP + 1)
        assert len(counts) == RESIZE - CROP + 1 and counts.min() > 0.8 * counts.float().mean()
    assert abs(flip.float().mean() - 0.5) < 0.02
    assert abs(alpha.std() - 0.1) < 0.005 and abs(alpha.mean()) < 0.005
    # And the whole output: per-pixel mean and spread over many draws match the reference pipeline's.
    ramp = torch.linspace(0, 255, RESIZE).round().to(torch.uint8).expand(RESIZE, RESIZE)
    image = torch.stack([ramp, ramp.T, 255 - ramp])  # horizontal and vertical structure: crops and mirrors show
    draws = 4000
    ours = torch.cat([augmentation.train(image.expand(200, -1, -1, -1), seed=s) for s in range(draws // 200)])
    torch.manual_seed(0)
    reference = reference_train_steps(mean, eigval, eigvec)
    theirs = torch.stack([reference(F.to_dtype(image, torch.float32, scale=True)) for _ in range(draws)])
    torch.testing.assert_close(ours.mean(0), theirs.mean(0), rtol=0, atol=0.06)
    torch.testing.assert_close(ours.std(0), theirs.std(0), rtol=0, atol=0.06)


def test_no_lighting_and_channel_mean():
    mean, eigval, eigvec = statistics_like()
    images = torch.randint(0, 256, (4, 3, RESIZE, RESIZE), dtype=torch.uint8)
    plain = BatchAugmentation(mean.mean((1, 2)), eigval, eigvec, CROP, None)
    out = plain.train(images, seed=1)
    top, left, flip, _ = plain.sample(4, RESIZE, seed=1)
    for i in range(4):
        x = F.crop(F.to_dtype(images[i], torch.float32, scale=True) - mean.mean((1, 2)).view(3, 1, 1),
                   top[i], left[i], CROP, CROP)
        torch.testing.assert_close(out[i], F.horizontal_flip(x) if flip[i] else x, rtol=0, atol=1e-6)


def test_resumable_sampler_continues_the_same_permutation():
    data = list(range(50))
    full = ResumableSampler(data, batch_size=4, seed=7)
    full.set_epoch(3)
    keys = list(full)
    assert sorted(k[2] for k in keys) == data and {k[:2] for k in keys} == {(7, 3)}
    resumed = ResumableSampler(data, batch_size=4, seed=7)
    resumed.resume_at = (3, 5)
    resumed.set_epoch(3)
    assert list(resumed) == keys[20:]
    resumed.set_epoch(4)  # the next epoch is whole again, and shuffled differently
    assert len(list(resumed)) == 50 and [k[2] for k in resumed] != [k[2] for k in keys]
    # Data parallel: the replicas split the epoch between them.
    halves = [{k[2] for k in ResumableSampler(data, 4, 7, num_replicas=2, rank=r)} for r in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == 25 and halves[0] | halves[1] == set(data)


def test_a_sample_is_augmented_by_its_key_alone(tmp_path, source, cache):
    dm = ImageNetDataModule(4, root=str(source), resize_size=RESIZE, crop_size=CROP, num_workers=0, in_memory=False)
    dm.setup("fit")
    dataset: SkipUnreadable = dm.train_set
    torch.manual_seed(1)
    a = dataset[(0, 2, 5)][0]
    state = torch.get_rng_state()
    torch.manual_seed(2)
    assert torch.equal(dataset[(0, 2, 5)][0], a)
    assert not torch.equal(dataset[(0, 3, 5)][0], a)  # another epoch, other crops
    torch.manual_seed(1)
    dataset[(0, 2, 5)]
    assert torch.equal(torch.get_rng_state(), state)  # the global stream (dropout) is untouched


def test_shards_option_writes_the_shards_on_first_use_and_trains_from_them(tmp_path, source, cache):
    dm = ImageNetDataModule(4, root=str(source), resize_size=RESIZE, crop_size=CROP, num_workers=0,
                            prepared=str(tmp_path / "prep"), in_memory=False)
    with pytest.warns(UserWarning, match="broken.jpg"):
        dm.prepare_data()
    assert dm.data_root() == tmp_path / "prep"
    dm.setup("fit")
    dm.setup("test")
    images, labels, skipped, seed = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, RESIZE, RESIZE) and seed.item() >= 0
    assert dm.augment(images, "train", int(seed)).shape == (4, 3, CROP, CROP)
    assert dm.augment(images, "val").shape == (4, 3, CROP, CROP)
    assert dm.augment(images, "test").shape == (4, 10, 3, CROP, CROP)
    # The statistics come from the shards: the mean image of the 15 readable training images.
    shards = PreparedSplit(tmp_path / "prep", "train")
    expected = shards.__getitems__(list(range(15)))[0].double().div(255).mean(0).float()
    torch.testing.assert_close(dm.statistics().mean_image, expected, rtol=0, atol=1e-6)
    shutil.rmtree(source)  # from now on nothing reads the source
    again = ImageNetDataModule(4, root=str(tmp_path / "prep"), resize_size=RESIZE, crop_size=CROP, num_workers=2,
                               in_memory=False)
    again.setup("fit")
    assert len(again.train_set) == 15 and again.num_classes == 3
    batches = list(again.train_dataloader())  # through loader processes, which open their own memory maps
    assert [len(b[1]) for b in batches] == [4, 4, 4]  # training drops the last partial batch (3 of 15 images)
    seen = torch.cat([b[1] for b in batches]).tolist()
    assert all(seen.count(c) <= shards.labels.tolist().count(c) for c in set(seen))


def epoch_batches(dm: ImageNetDataModule, epoch: int, resume_after: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """The training batches of an epoch as the model gets them (moved, so decoded, to the device, then augmented),
    resumed as from a checkpoint written after ``resume_after`` of its batches."""
    loader = dm.train_dataloader()
    loader.load_state_dict({"epoch": epoch, "batches": resume_after})
    batches = []
    for batch in loader:
        images, labels, _, seed = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
        batches.append((images, labels, seed, dm.augment(images, "train", seed)))
    return batches


def assert_same_batches(a: list[tuple[torch.Tensor, ...]], b: list[tuple[torch.Tensor, ...]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert all(torch.equal(u, v) for u, v in zip(x, y))


def test_jpeg_batches_decode_on_the_device_as_in_the_loader_and_resume_mid_epoch(tmp_path, source, cache):
    dest = shards.prepare(str(source), tmp_path / "prep", RESIZE)
    options = dict(root=str(dest), resize_size=RESIZE, crop_size=CROP, in_memory=False)
    in_workers = ImageNetDataModule(4, num_workers=2, decode="workers", **options)
    in_workers.setup("fit")
    whole = epoch_batches(in_workers, epoch=1)
    assert len(whole) == 3 and not torch.equal(whole[0][0], epoch_batches(in_workers, epoch=2)[0][0])  # reshuffled
    # decode="device": the loader hands over the JPEG bytes, the transfer to the device decodes them (here the
    # CPU: the same code as for a GPU, whose decode_jpeg is nvjpeg's).
    on_device = ImageNetDataModule(4, num_workers=0, decode="device", **options)
    on_device.setup("fit")
    encoded = next(iter(on_device.train_dataloader()))[0]
    assert isinstance(encoded, Encoded) and len(encoded.offsets) == 5
    assert_same_batches(epoch_batches(on_device, epoch=1), whole)
    # Resumed after 2 of the epoch's 4 batches, in new loader processes: the same last 2 batches.
    resumed = ImageNetDataModule(4, num_workers=2, **options)
    resumed.setup("fit")
    assert_same_batches(epoch_batches(resumed, epoch=1, resume_after=2), whole[2:])


def test_the_seed_stays_on_the_host_and_the_rest_moves(tmp_path, source, cache):
    """Reading the augmentation seed back from a GPU would make every step wait for the GPU."""
    dest = shards.prepare(str(source), tmp_path / "prep", RESIZE, encoding="raw")
    dm = ImageNetDataModule(4, root=str(dest), resize_size=RESIZE, crop_size=CROP, num_workers=0)
    dm.setup("fit")
    images, labels, skipped, seed = dm.transfer_batch_to_device(next(iter(dm.train_dataloader())),
                                                                torch.device("meta"), 0)
    assert images.is_meta and labels.is_meta and skipped.is_meta and seed.device.type == "cpu"


@pytest.mark.slow
def test_cli_fit_and_test_from_prepared_shards(tiny_imagefolder, tiny_overlay, tmp_path, cache, monkeypatch):
    from alexnet_lightning.training.cli import main
    from tests.test_cli import QUICK

    calls = []
    for name in ("train", "centre", "ten_crops"):
        method = getattr(BatchAugmentation, name)
        monkeypatch.setattr(BatchAugmentation, name,
                            lambda self, *a, _m=method, _n=name: calls.append(_n) or _m(self, *a))
    common = [*QUICK, "--config", str(tiny_overlay), "--data.root", str(tiny_imagefolder),
              "--data.prepared", str(tmp_path / "prep"), "--data.in_memory", "false",
              "--trainer.default_root_dir", str(tmp_path)]
    fit = main(["fit", *common, "--trainer.num_sanity_val_steps", "0"])
    assert fit.trainer.global_step == 4 and (tmp_path / "prep" / "prepared.json").is_file()
    assert calls == ["train"] * 4 + ["centre"] * 2  # 60 training and 30 validation images, batches of 16
    calls.clear()
    test = main(["test", *common, "--ckpt_path", str(next(tmp_path.glob("**/last.ckpt")))])
    assert calls == ["ten_crops"] * 2 and 0 <= float(test.trainer.callback_metrics["test/top1_error"]) <= 1


def test_a_failed_shard_write_names_the_file_and_leaves_nothing_half_written(tmp_path, source, cache, monkeypatch):
    import errno

    def full_disk(file, array):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(OSError, match=r"Could not write the file .*00000.jpeg.npy \(No space left on device\)"):
        shards.prepare(str(source), tmp_path / "prep", RESIZE)
    assert list((tmp_path / "prep" / "train").iterdir()) == []
