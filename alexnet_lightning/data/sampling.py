"""Resumable training batches: a sampler shuffled by (seed, epoch) whose keys seed each sample's augmentation,
and a loader whose position Lightning saves in checkpoints."""

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """Shuffles by (seed, epoch) as DistributedSampler does and yields ``(seed, epoch, index)`` keys, so that
    a sample's augmentation depends on the key alone; ``resume_at = (epoch, batches)`` starts that epoch
    after the batches already trained (a mid-epoch resume)."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size, self.resume_at = batch_size, (-1, 0)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        indices = list(super().__iter__())
        if self.resume_at[0] == self.epoch:
            indices = indices[self.resume_at[1] * self.batch_size :]
        return iter([(self.seed, self.epoch, index) for index in indices])


class ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning saves in checkpoints and restores (its state_dict interface):
    ``progress()`` gives (epoch, batches trained in it, batches in the epoch) when a checkpoint is written. The
    batches in an epoch are Lightning's (``trainer.num_training_batches``), which ``limit_train_batches`` makes fewer
    than the loader's."""

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, int, float]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        epoch, batches, per_epoch = self.progress()
        if batches >= min(len(self), per_epoch):  # written at the end of an epoch: the resumed run starts the next one
            epoch, batches = epoch + 1, 0
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_at = (state["epoch"], state["batches"])
        self.sampler.set_epoch(state["epoch"])  # Lightning starts the resumed epoch's iterator before its set_epoch


def as_batch(batch: Any) -> Any:
    """The collate function of prepared splits, which read whole batches themselves."""
    return batch
