"""The in-memory path: a small split decoded once and augmented a whole batch at a time gives every sample the values
the reference (file by file) path gives it, draws them from the reference's distribution, resumes mid-epoch exactly,
and is chosen for small data only."""

import os

import pytest
import torch

from alexnet_lightning.data import in_memory, shards
from alexnet_lightning.data.in_memory import InMemorySplit, KeyedAugmentation
from tests.test_datamodule import CROP, RESIZE, datamodule, make_folder
from tests.test_shards import assert_same_batches, epoch_batches, statistics_like


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_LIGHTNING_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def source(tmp_path):
    return make_folder(tmp_path / "data", per_class=5)


@pytest.mark.parametrize("options", [{}, {"value_scale": 255.0, "mean": "channel"}, {"pca_lighting": False},
                                     {"lighting_rescale": True}])
def test_every_sample_gets_the_reference_paths_values(source, cache, options):
    reference, held = datamodule(source, in_memory=False, **options), datamodule(source, in_memory=True, **options)
    for dm in (reference, held):
        dm.prepare_data()
        dm.setup("fit")
    assert isinstance(held.train_set, InMemorySplit) and not isinstance(reference.train_set, InMemorySplit)
    keys = [(3, epoch, index) for epoch in (0, 1) for index in range(15)]
    images, labels, skipped, seeds = held.train_set.__getitems__(keys)
    ours = held.augment(images, "train", seeds)
    for key, image, label in zip(keys, ours, labels):
        theirs, their_label = reference.train_set[key]
        assert label == their_label
        torch.testing.assert_close(image, theirs, rtol=0, atol=1e-6 * held.hparams.value_scale)
    # Validation: the centre crop; test: the ten crops.
    images, labels, _, seeds = held.val_set.__getitems__(list(range(15)))
    assert (seeds == -1).all()
    reference.setup("test")
    for stage, split in (("val", reference.val_set), ("test", reference.test_set)):
        for image, index in zip(held.augment(images, stage), range(15)):
            torch.testing.assert_close(image, split[index][0], rtol=0, atol=1e-6 * held.hparams.value_scale)


def test_the_keyed_draws_have_the_reference_distribution():
    mean, eigval, eigvec = statistics_like()
    augmentation = KeyedAugmentation(mean, eigval, eigvec, CROP, 0.1)
    top, left, flip, alpha = augmentation.sample_keyed(list(range(20_000)), RESIZE)
    for offsets in (top, left):  # every offset 0 .. RESIZE - CROP, none outside, about equally often
        counts = torch.bincount(offsets, minlength=RESIZE - CROP + 1)
        assert len(counts) == RESIZE - CROP + 1 and counts.min() > 0.8 * counts.float().mean()
    assert abs(flip.float().mean() - 0.5) < 0.02
    assert abs(alpha.std() - 0.1) < 0.005 and abs(alpha.mean()) < 0.005
    assert abs(torch.corrcoef(torch.stack([top.float(), left.float(), flip.float(), alpha[:, 0]])).triu(1)).max() < 0.03


def test_an_epoch_from_memory_resumes_mid_epoch_exactly(source, cache):
    dm = datamodule(source, in_memory=True)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 0  # no loader processes: they would only copy the images
    whole = epoch_batches(dm, epoch=1)
    assert len(whole) == 3 and not torch.equal(whole[0][1], epoch_batches(dm, epoch=2)[0][1])  # reshuffled
    # (3 batches: training drops the last partial one)
    resumed = datamodule(source, in_memory=True)
    resumed.setup("fit")
    assert_same_batches(epoch_batches(resumed, epoch=1, resume_after=2), whole[2:])


def test_auto_holds_small_data_and_prepared_shards_in_memory(source, tmp_path, cache, monkeypatch):
    assert datamodule(source, in_memory="auto")._in_memory()
    monkeypatch.setattr(in_memory, "LIMIT_BYTES", 30 * 3 * RESIZE * RESIZE - 1)  # the 30 images need one byte more
    assert not datamodule(source, in_memory="auto")._in_memory()
    assert datamodule(source, in_memory=True)._in_memory()
    monkeypatch.undo()
    monkeypatch.setenv("ALEXNET_LIGHTNING_CACHE", str(tmp_path / "cache"))
    prepared = shards.prepare(str(source), tmp_path / "prep", RESIZE, encoding="raw")
    from_shards, from_files = datamodule(prepared, in_memory="auto"), datamodule(source, in_memory="auto")
    for dm in (from_shards, from_files):
        dm.setup("fit")
    assert isinstance(from_shards.train_set, InMemorySplit)
    for name in ("images", "labels"):
        assert torch.equal(getattr(from_shards.train_set, name), getattr(from_files.train_set, name))
    with pytest.raises(ValueError, match="in_memory must be"):
        datamodule(source, in_memory="yes")


def test_the_decode_is_cached_until_a_file_changes(source, cache, monkeypatch):
    first = in_memory.load(source, "folders", "train", RESIZE)

    def decode(*args):
        raise AssertionError("decoded again")

    with monkeypatch.context() as patch:
        patch.setattr(in_memory, "_decode", decode)
        again = in_memory.load(source, "folders", "train", RESIZE)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    changed = next((source / "train").rglob("*.jpg"))
    os.utime(changed, ns=(0, 0))
    with pytest.raises(AssertionError, match="decoded again"):
        monkeypatch.setattr(in_memory, "_decode", decode)
        in_memory.load(source, "folders", "train", RESIZE)


def test_decoding_leaves_the_global_random_stream_alone(source, cache):
    """Dropout draws from it: a run that decodes (the first) and one that reads the cache (a resumed one) must see
    the same stream."""
    torch.manual_seed(0)
    state = torch.get_rng_state()
    in_memory.load(source, "folders", "train", RESIZE, workers=1)
    assert torch.equal(torch.get_rng_state(), state)
