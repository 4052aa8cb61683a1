"""What the two-tower layout costs: bytes between the towers per image, and training throughput against one device.

Trains the paper's network (227x227 crops, 1000 classes, float32) for a few steps on CPU, once on one device and
once under TowerParallelStrategy (two processes over gloo, one per tower, one replica), in one run. The bytes are
counted at torch.distributed's all-gather (forward), all-to-all (backward) and broadcast (the batch) on the tower
pair, and printed against the count by hand below.

    python experiments/benchmark_model_parallel.py [--batch-size 16] [--steps 5] [--warmup 2]
"""

import argparse
import os
import socket
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch.utils.data import DataLoader, TensorDataset

from alexnet_lightning import CONFIGS
from alexnet_lightning.model.module import AlexNetModule
from alexnet_lightning.model.towers import TowerParallelStrategy

SIZE, CLASSES = 227, 1000

# Bytes that cross between the towers per image (4 bytes a float), summed over both directions, by hand:
#
# | input of | what each tower sends the other        | floats | forward (all-gather) | backward (reduce-scatter) |
# |----------|----------------------------------------|--------|----------------------|---------------------------|
# | conv3    | its pooled conv2 maps, 13 x 13 x 128   | 21,632 | 2 x 86,528 = 173,056 | 2 x 86,528 = 173,056      |
# | fc6      | its pooled conv5 maps, 6 x 6 x 128     |  4,608 | 2 x 18,432 =  36,864 | 2 x 18,432 =  36,864      |
# | fc7      | its 2048 fc6 units                     |  2,048 | 2 x  8,192 =  16,384 | 2 x  8,192 =  16,384      |
# | fc8      | its 2048 fc7 units                     |  2,048 | 2 x  8,192 =  16,384 | 0 (fc8 is whole on both)  |
# | total    |                                        |        |              242,688 |                   226,304 |
#
# The batch: tower 0 sends tower 1 each image, 3 x 227 x 227 floats = 618,348 bytes, and its int64 label, 8 bytes.
BY_HAND = {"forward": 242_688, "backward": 226_304, "batch": 618_356}
SENT_BY = {"all_gather": "forward", "all_to_all_single": "backward", "broadcast": "batch"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (per replica)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them (at least 1)")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    return args


class StepTimer(L.Callback):
    """Wall time of the steps after the warm-up ones, from the end of the last warm-up step (so with the loading
    and the transfer of each timed batch) to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.seconds = warmup, 0.0, 0.0

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, idx: int) -> None:
        if idx == self.warmup - 1:
            self.start = time.perf_counter()
        self.seconds = time.perf_counter() - self.start


def train(args: argparse.Namespace, devices: int, timer: StepTimer) -> None:
    torch.manual_seed(0)
    optimisation = yaml.safe_load((CONFIGS / "paper.yaml").read_text())["model"]
    module = AlexNetModule(**optimisation | {"lr_schedule": "step"}, num_classes=CLASSES, input_size=SIZE)
    images = args.batch_size * (args.warmup + args.steps)
    data = TensorDataset(torch.randn(images, 3, SIZE, SIZE), torch.randint(CLASSES, (images,)))
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy=TowerParallelStrategy() if devices > 1 else "auto",
        max_epochs=1, callbacks=[timer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=args.batch_size))


def sends(name: str, args: tuple, kwargs: dict) -> int:
    """Bytes this process sends to the other tower in one call of the collective `name`."""
    if kwargs.get("group") is None:  # not the tower pair: the model's broadcast from rank 0 before it is split
        return 0
    tensor = args[0] if name == "broadcast" else args[1]
    size = tensor.numel() * tensor.element_size()
    if name == "all_gather":  # its piece of the maps
        return size
    if name == "all_to_all_single":  # the other tower's half of the gradient; it keeps its own
        return size // 2
    return size if dist.get_rank() == kwargs["src"] else 0  # broadcast: tower 0 sends, tower 1 receives


def tower_worker(rank: int, world_size: int, port: int, args: argparse.Namespace, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)  # two processes on the cores that the one-device run used
    sent, counting = Counter(), [False]
    for name, kind in SENT_BY.items():  # the strategy calls these through torch.distributed's namespace
        collective = getattr(dist, name)

        def counted(*a: Any, _collective: Any = collective, _name: str = name, _kind: str = kind, **kw: Any) -> Any:
            if counting[0]:
                sent[_kind] += sends(_name, a, kw)
            return _collective(*a, **kw)

        setattr(dist, name, counted)

    class CountingTimer(StepTimer):  # counts over the timed steps only, not at set-up or at the final merge
        def on_train_batch_end(
            self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, idx: int
        ) -> None:
            super().on_train_batch_end(trainer, module, out, batch, idx)
            counting[0] = self.warmup - 1 <= idx < self.warmup + args.steps - 1

    timer = CountingTimer(args.warmup)
    train(args, world_size, timer)
    torch.save({"sent": dict(sent), "seconds": timer.seconds}, Path(folder) / f"rank{rank}.pt")


def main() -> None:
    args = parse_args()
    single = StepTimer(args.warmup)
    train(args, 1, single)
    with tempfile.TemporaryDirectory() as folder, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mp.spawn(tower_worker, args=(2, port, args, folder), nprocs=2)
        ranks = [torch.load(Path(folder) / f"rank{r}.pt") for r in range(2)]

    images = args.batch_size * args.steps
    print(f"\nAlexNet as in the paper ({SIZE}x{SIZE}, {CLASSES} classes, float32), batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup}; CPU: one device on {torch.get_num_threads()} threads, "
          f"the towers on 1 thread each")  # fmt: skip
    print("\nBytes between the two towers per image per step, both directions:")
    print(f"{'exchange':<34}{'by hand':>12}{'measured':>12}")
    labels = {
        "forward": "forward (all-gather)",
        "backward": "backward (reduce-scatter)",
        "batch": "batch (tower 0 -> tower 1)",
    }
    for kind, label in labels.items():
        measured = sum(r["sent"].get(kind, 0) for r in ranks) / images
        print(f"{label:<34}{BY_HAND[kind]:>12,}{measured:>12,.0f}")
    one, towers = images / single.seconds, images / ranks[0]["seconds"]
    print(
        f"\nThroughput (img/s): one device {one:.1f}; two towers, one process each {towers:.1f} ({towers / one:.2f}x)"
    )


if __name__ == "__main__":
    main()
