"""The quick preset's speed the way the study runs it, in one run: fit against the bare step, one job against N.

    python experiments/benchmark_study.py [--threads 1 2] [--epochs 2] [--jobs N] [--cells 4] [--study-epochs 2]

1. Per process, for each --threads: images per second of Lightning's real fit loop (the quick preset through the CLI,
   its data module on the in-memory path, its callbacks, validation excluded: training batches only, timed from the
   second epoch) beside the same network's bare training step (the CLI's model: forward, cross-entropy, backward, SGD
   with the preset's settings, on one fixed batch of the preset's size and input size, in the same process).
2. The study: `alexnet-ablate` on --cells cells of --study-epochs epochs, once with --jobs 1 (every thread in one
   process) and once with --jobs N (default: the runner's default), in fresh study folders on the same cached data:
   training images per second of the study's wall time (so startup, validation and the ten-crop test count).

The header records the load average and the busiest other processes: figures taken beside other work are not the
machine's. Data is generated into (or read from) the usual cache.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from alexnet_lightning.data import standin
from alexnet_lightning.study.jobs import default_jobs
from alexnet_lightning.training import cli as alexnet_cli

REPO = Path(__file__).resolve().parents[1]


def clocks() -> tuple[float, float]:
    """Wall time and this process's CPU time (every thread): on a busy machine the second still counts the work."""
    return time.perf_counter(), time.process_time()


class TrainTimer(L.Callback):
    """Training batches and their wall and CPU time per epoch, validation excluded."""

    def __init__(self) -> None:
        self.epochs: list[tuple[int, float, float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.images, self.start, self.validating = 0, clocks(), (0.0, 0.0)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, index: int) -> None:
        self.images += len(batch[1])

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.validation_start = clocks()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validating = tuple(v + now - s for v, now, s in zip(self.validating, clocks(), self.validation_start))

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        wall, cpu = (now - s - v for now, s, v in zip(clocks(), self.start, self.validating))
        self.epochs.append((self.images, wall, cpu))


def fit_and_bare_step(threads: int, epochs: int, folder: Path) -> tuple[tuple[float, float], tuple[float, float], str]:
    """Fit's and the bare step's (images per second, images per CPU second) in this process at ``threads`` threads,
    and what was measured."""
    torch.set_num_threads(threads)
    cli = alexnet_cli.main(["--config", "quick", "--trainer.max_epochs", str(epochs), "--trainer.default_root_dir",
                            str(folder)], run=False)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    timer = TrainTimer()
    trainer.callbacks.append(timer)
    trainer.fit(model, data)
    images, wall, cpu = map(sum, zip(*timer.epochs[1:]))  # the first epoch warms up
    fit_rates = images / wall, images / cpu
    batch, size = data.hparams.batch_size, model.hparams.input_size
    network = model.network.train()
    optimizer = torch.optim.SGD(network.parameters(), lr=model.hparams.lr, momentum=model.hparams.momentum,
                                weight_decay=model.hparams.weight_decay)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, model.hparams.num_classes, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(network(x), y).backward()
        optimizer.step()

    for _ in range(10):
        step()
    steps, start = 0, clocks()
    while time.perf_counter() - start[0] < 10:
        step()
        steps += 1
    bare_rates = tuple(steps * batch / (now - s) for now, s in zip(clocks(), start))
    what = (f"batch {batch}, {size}x{size}, width {model.hparams.width}, {type(data.train_set).__name__}, "
            f"{images} images in epochs 2..{epochs}")
    return fit_rates, bare_rates, what


def study_rate(jobs: int, cells: int, epochs: int, folder: Path) -> tuple[float, float]:
    """(training images per second of wall time, wall seconds) of a study of ``cells`` cells at ``jobs`` jobs."""
    seeds = (cells + 1) // 2
    argv = ["--no-lrn", "--seeds", str(seeds), "--epochs", str(epochs), "--jobs", str(jobs), "--results", str(folder),
            "--study", f"jobs{jobs}"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "alexnet_lightning.study.runner", *argv], env=env, cwd=folder,
                         capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode:
        raise SystemExit(f"the study with --jobs {jobs} failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    cells_done = len(list(folder.glob(f"jobs{jobs}/runs/*/seed*/result.json")))
    train_images = cells_done * epochs * standin.TRAIN_PER_CLASS * standin.NUM_CLASSES
    return train_images / seconds, seconds


def machine() -> str:
    busy = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    others = ", ".join(" ".join(line.split()[::-1]) + "%" for line in busy.splitlines()[1:5])
    return (f"{len(os.sched_getaffinity(0))} cores, torch {torch.__version__}; load average "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; busiest processes: {others}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, len(os.sched_getaffinity(0))])
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the timed fit (the first is not counted)")
    parser.add_argument("--jobs", type=int, help="jobs of the parallel study (default: the runner's default)")
    parser.add_argument("--cells", type=int, default=4, help="cells of each timed study (baseline and no_lrn)")
    parser.add_argument("--study-epochs", type=int, default=2)
    parser.add_argument("--parts", nargs="+", choices=["fit", "study"], default=["fit", "study"])
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if "fit" in args.parts:
            print("| threads | fit img/s | bare step img/s | fit / bare | fit img/CPU-s | bare img/CPU-s | fit / bare "
                  "(CPU) | measured |\n|---|---|---|---|---|---|---|---|")
            for threads in dict.fromkeys(args.threads):
                fit, bare, what = fit_and_bare_step(threads, args.epochs, Path(tmp) / f"fit{threads}")
                print(f"| {threads} | {fit[0]:.0f} | {bare[0]:.0f} | {fit[0] / bare[0]:.2f} | {fit[1]:.0f} | "
                      f"{bare[1]:.0f} | {fit[1] / bare[1]:.2f} | {what} |", flush=True)
        if "study" in args.parts:
            jobs = args.jobs or default_jobs(args.cells)
            print(f"\nstudy: {args.cells} cells (baseline, no_lrn) of {args.study_epochs} epochs of the built-in set")
            print("| jobs | training img/s of wall time | wall s |\n|---|---|---|")
            rates = {}
            for n in dict.fromkeys([1, jobs]):
                rates[n], seconds = study_rate(n, args.cells, args.study_epochs, Path(tmp))
                print(f"| {n} | {rates[n]:.0f} | {seconds:.0f} |", flush=True)
            print(f"--jobs {jobs} / --jobs 1: {rates[jobs] / rates[1]:.2f}")
        print(f"after: {machine()}")


if __name__ == "__main__":
    main()
