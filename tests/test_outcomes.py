"""Per-image test outcomes: what each image scored, in the test set's order on any number of processes, and the
hash that tells two test sets apart."""

import os

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchvision.datasets import ImageFolder

from alexnet_lightning.data.in_memory import InMemorySplit
from alexnet_lightning.data.sources import SkipUnreadable
from alexnet_lightning.model import outcomes
from alexnet_lightning.model.module import AlexNetModule
from tests.test_towers import free_port, join


def test_per_image_rows_give_prediction_label_and_top1_top5_correctness():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.05, 0.05, 0.1],    # predicts 1, label 1: right
                           [0.3, 0.1, 0.2, 0.15, 0.15, 0.1],    # predicts 0, label 3: in the top five
                           [0.3, 0.01, 0.2, 0.15, 0.15, 0.19]])  # predicts 0, label 1: ranked last
    rows = outcomes.per_image(scores, torch.tensor([1, 3, 1]))
    assert rows.tolist() == [[1, 1, 1, 1], [0, 3, 0, 1], [0, 1, 0, 0]]
    assert outcomes.per_image(scores[:, :4], torch.tensor([1, 3, 1]))[:, 3].tolist() == [-1, -1, -1]  # no top-5


class Processes:
    """The all_gather of a data-parallel run, for the process `rank` of processes holding `shards`."""

    def __init__(self, shards: list[torch.Tensor], replicas: int, rank: int):
        self.shards, self.world_size, self.global_rank = shards, len(shards), rank
        towers = len(shards) // replicas
        self.replica_of = [r // towers for r in range(len(shards))]
        self.distributed_sampler_kwargs = {"num_replicas": replicas, "rank": self.replica_of[rank]}

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() == 1:  # the (replica, count) of each process
            return torch.tensor([[replica, len(rows)] for replica, rows in zip(self.replica_of, self.shards)])
        longest = max(len(rows) for rows in self.shards)
        return torch.stack([torch.cat([rows, rows.new_zeros(longest - len(rows), 4)]) for rows in self.shards])


def rows_of(n: int) -> torch.Tensor:
    image = torch.arange(n)
    return torch.stack([image % 5, image % 3, image % 2, (image + 1) % 2], 1)


@pytest.mark.parametrize("replicas, towers", [(2, 1), (3, 1), (2, 2)])
def test_outcomes_of_data_parallel_processes_come_back_in_the_test_sets_order(replicas, towers):
    n = 11  # not a multiple of the replicas: DistributedSampler pads with the first images
    everything = rows_of(n)
    dataset = TensorDataset(torch.arange(n))
    shards = [everything[list(DistributedSampler(dataset, replicas, r // towers, shuffle=False))]
              for r in range(replicas * towers)]
    for rank in range(replicas * towers):
        assert torch.equal(outcomes.gather(Processes(shards, replicas, rank), shards[rank], n), everything)


def test_a_replica_that_lost_images_gives_no_outcomes_and_a_warning():
    everything = rows_of(10)
    shards = [everything[0::2], everything[1::2][:-1]]  # a file of the second replica was unreadable
    with pytest.warns(UserWarning, match="a replica scored 4 images, not ceil"):
        assert outcomes.gather(Processes(shards, 2, 0), shards[0], 10) is None


def _ddp_test_worker(rank: int, world_size: int, port: int, folder: str) -> None:
    join(rank, world_size, port)
    module, data = tiny_test_run()
    trainer = L.Trainer(accelerator="cpu", devices=world_size, strategy="ddp", logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, data)
    torch.save(module.test_outcomes, os.path.join(folder, f"rank{rank}.pt"))
    # Lightning leaves a gloo group to the interpreter's shutdown, where it may abort the process (model/towers.py).
    torch.distributed.destroy_process_group()


def tiny_test_run() -> tuple[AlexNetModule, DataLoader]:
    """A small network and 7 ten-crop test images of 10 classes, the same in every process."""
    torch.manual_seed(0)
    module = AlexNetModule(0.01, 0.9, 5e-4, 0.1, 3, num_classes=10, width=0.25, input_size=67, init="kaiming")
    crops = torch.randn(7, 10, 3, 67, 67, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(10, (7,), generator=torch.Generator().manual_seed(2))
    return module, DataLoader(TensorDataset(crops, labels), batch_size=2)


@pytest.mark.slow
def test_a_ddp_test_keeps_the_outcomes_of_a_single_process_test(tmp_path):
    module, data = tiny_test_run()
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
              enable_model_summary=False).test(module, data)
    single = module.test_outcomes
    assert single.shape == (7, 4) and torch.equal(single[:, 1], data.dataset.tensors[1])
    torch.multiprocessing.spawn(_ddp_test_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), single)


def image_folder(root, names: dict[str, list[str]]) -> SkipUnreadable:
    for label, files in names.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for name in files:
            Image.new("RGB", (4, 4)).save(root / label / name)
    return SkipUnreadable(ImageFolder(str(root)))


def test_the_test_set_hash_changes_with_the_images_and_not_with_the_folder(tmp_path):
    files = {"a": ["1.png", "2.png"], "b": ["3.png"]}
    first = outcomes.test_set_fingerprint(image_folder(tmp_path / "one", files))
    assert outcomes.test_set_fingerprint(image_folder(tmp_path / "two", files)) == first  # a copy elsewhere
    assert outcomes.test_set_fingerprint(image_folder(tmp_path / "three", {"a": ["1.png", "4.png"], "b": ["3.png"]})) \
        != first  # as many images, one of them another
    assert outcomes.test_set_fingerprint(image_folder(tmp_path / "four", {"a": ["1.png"], "b": ["2.png", "3.png"]})) \
        != first  # the same files, one under another label
    assert outcomes.test_set_fingerprint(TensorDataset(torch.zeros(3))) is None
    # a split held in memory is the split it was decoded from
    held = InMemorySplit(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 0, 1]),
                         image_folder(tmp_path / "five", files))
    assert outcomes.test_set_fingerprint(held) == first


def test_an_outcome_file_reads_back_what_was_written(tmp_path):
    rows = rows_of(9)
    outcomes.write(tmp_path / outcomes.FILE, rows, "abc", test_files=10, replicas=1)
    read = outcomes.read(tmp_path / outcomes.FILE)
    assert read["pred"].tolist() == rows[:, 0].tolist() and read["label"].tolist() == rows[:, 1].tolist()
    assert read["top1_correct"].dtype == bool and read["top1_correct"].tolist() == rows[:, 2].bool().tolist()
    assert read["top5_correct"].tolist() == rows[:, 3].bool().tolist()
    assert (read["test_set"], read["test_files"], read["replicas"]) == ("abc", 10, 1)
    rows[:, 3] = -1  # fewer than five classes: no top-5
    outcomes.write(tmp_path / "few.npz", rows, None, test_files=9, replicas=1)
    assert "top5_correct" not in outcomes.read(tmp_path / "few.npz")


def test_a_file_that_is_not_an_outcome_file_is_named(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="Cannot read the outcome file .*bad.npz"):
        outcomes.read(tmp_path / "bad.npz")
    outcomes.write(tmp_path / "cut.npz", rows_of(50), "abc", 50, 1)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:100])  # a copy cut short
    with pytest.raises(ValueError, match="Cannot read the outcome file .*cut.npz"):
        outcomes.read(tmp_path / "cut.npz")
    np.savez(tmp_path / "other.npz", pred=np.zeros(3))
    with pytest.raises(ValueError, match=r"other.npz is not an outcome file: it lacks \['label'"):
        outcomes.read(tmp_path / "other.npz")
